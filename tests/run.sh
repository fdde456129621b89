#!/usr/bin/env bash
# The test command of mxspool: ./tests/run.sh [extra pytest arguments]
#
# On a fresh Debian 12 machine with only the Rust toolchain and python3:
#   1. installs the apt packages the integration tests need (postfix, swaks,
#      util-linux for script(1), nsd, openssl for the tests' self-signed
#      certificates, postgrey, nodejs and lua5.1 for the LuCI app and the
#      metrics collector) when missing, unpacks Exim and OpenSMTPD under
#      /var/tmp (tests/integration/real_peers.sh), and pytest when missing;
#   2. cargo fmt --check, cargo clippy --all-targets -D warnings, the module
#      layering check (tests/layers.py: no import cycles);
#   3. cargo build (debug), cargo test (unit tests);
#   4. python3 -m pytest -q tests/integration against the built binary (skip
#      reasons printed, -rsfE; the skip count goes to the closing summary);
#   5. the OpenWrt package checks (init script under stub procd, shellcheck;
#      the LuCI app and the metrics collector: lint, node --test, lua5.1)
#      and the mips32 source lint;
#   6. for each MXSPOOL_CROSS target: cross/setup.sh (pinned zig, nightly,
#      qemu-user), the unit tests (debug) under qemu, then this whole
#      integration suite again against the router build (release-z) of that
#      target run through qemu.
# Every step runs even when an earlier lint/unit step failed (so one run shows
# everything); the exit status is non-zero if any step failed.
#
# Environment:
#   MXSPOOL_BIN         binary under test (default target/debug/mxspool)
#   MXSPOOL_RUNNER      command prefix for it, e.g. "qemu-mips -L /sysroot"
#   MXSPOOL_SKIP_CARGO  1: skip steps 2-3 and 5-6 (e.g. testing a cross-built binary)
#   MXSPOOL_FUZZ_SECONDS seconds per fuzz target after the tests (default 20; 0: skip)
#   MXSPOOL_CROSS       targets to build and test under qemu after the native
#                       run (default "mips-unknown-linux-musl
#                       mipsel-unknown-linux-musl": the two router CPUs, 32-bit,
#                       no 64-bit atomics, both byte orders; "none" to skip)
#   MXSPOOL_CROSS_UNIT  of those, the targets whose whole unit-test suite runs
#                       under qemu (default mips); the others run the reactor
#                       timer tests only
#   MXSPOOL_TEST_TIMEOUT, MXSPOOL_KEEP_TMP, MXSPOOL_TEST_TMP: see
#                       tests/README-testing.md
#   MXSPOOL_TEST_LABEL  the name of this run's integration tests in the skip
#                       summary (default "native"; the cross runs set TARGET)
#   MXSPOOL_SKIP_REPORT file where the integration runs note their skips;
#                       the outermost run creates it and prints the total
#
# The output ends with one line per integration run's skips, then
#   integration tests skipped: K (native), K2 (mips-unknown-linux-musl), ...
#   steps: N passed, M failed
# (the last line's format is parsed by CI: keep it).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
root=$(pwd)

failed=()
passed=0
step() {
	local name=$1
	shift
	echo "==> $name"
	if "$@"; then
		passed=$((passed + 1))
		return 0
	fi
	echo "==> FAILED: $name" >&2
	failed+=("$name")
	return 1
}

as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		echo "need root to run: $*" >&2
		return 1
	fi
}

install_packages() {
	# dnsmasq-base: the DNS server of the DNSBL tests (binary only, no
	# service); nsd: the authoritative DNS server of the DNS tests;
	# spamd/spamassassin and clamav-daemon: the real scanners; openssl:
	# the TLS tests' self-signed certificates; faketime: the clock tests
	# move the daemon's wall clock (libfaketime); postgrey: the greylisting
	# policy daemon of a test primary (test_primaries.py); strace: the
	# durability test reads the order of fsync and the 250 reply from a
	# syscall trace; nodejs: the LuCI views run under node --test with
	# stand-ins for LuCI; lua5.1: the Prometheus collector runs under it.
	local pkgs=(postfix swaks util-linux shellcheck dnsmasq-base spamassassin spamd clamav-daemon nsd openssl faketime postgrey strace nodejs lua5.1) missing=() p
	for p in "${pkgs[@]}"; do
		dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	echo "installing: ${missing[*]}"
	# Postfix: no system configuration; the tests run private instances.
	echo "postfix postfix/main_mailer_type select No configuration" | as_root debconf-set-selections
	as_root apt-get update -qq || return 1
	# No package may start a system service (spamd, clamd, postfix): the
	# tests run private instances on their own ports.
	local policy=/usr/sbin/policy-rc.d created=0
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null && as_root chmod 755 "$policy" && created=1
	fi
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
	local rc=$?
	[ "$created" = 1 ] && as_root rm -f "$policy"
	[ "$rc" = 0 ] || return 1
	# The package must not leave a system instance running (port 25); the
	# tests never use it.
	if [ -f /etc/postfix/main.cf ] && as_root postfix status >/dev/null 2>&1; then
		as_root postfix stop || true
	fi
}

install_pytest() {
	python3 -c 'import pytest' 2>/dev/null && return 0
	python3 -m pip install --quiet pytest 2>/dev/null ||
		python3 -m pip install --quiet --break-system-packages pytest
}

cargo_components() {
	if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
		rustup component add rustfmt clippy
	fi
}

# --- skipped integration tests: counted per run, reasons listed at the end -----
skip_owner=0
if [ -z "${MXSPOOL_SKIP_REPORT:-}" ]; then
	MXSPOOL_SKIP_REPORT=$(mktemp "${TMPDIR:-/tmp}/mxspool-skips.XXXXXX") || exit 1
	skip_owner=1
fi
export MXSPOOL_SKIP_REPORT
own_skips=()
cleanup_skips() { if [ "$skip_owner" = 1 ]; then rm -f "$MXSPOOL_SKIP_REPORT" "$MXSPOOL_SKIP_REPORT".xml; fi; }
trap cleanup_skips EXIT

# integration_tests LABEL PYTEST-ARGS...: the pytest run, then its skips
# (from its JUnit XML) as "LABEL<TAB>count" and "LABEL<TAB>- reason (n)"
# lines in the report. The exit status is pytest's.
integration_tests() {
	local label=$1 xml="$MXSPOOL_SKIP_REPORT.xml" rc lines
	shift
	rm -f "$xml"
	# -rsfE: skip reasons (and failures/errors) in pytest's short summary;
	# a lone -rs would replace pytest.ini's -ra, losing the failure lines.
	python3 -m pytest -q -rsfE --junitxml="$xml" tests/integration "$@"
	rc=$?
	lines=$(python3 - "$xml" "$label" <<'PY'
import collections, sys, xml.etree.ElementTree as ET
path, label = sys.argv[1], sys.argv[2]
try:
    root = ET.parse(path).getroot()
except (OSError, ET.ParseError):
    print(f"{label}\t?")
    print(f"{label}\t- no JUnit report: pytest did not finish")
    sys.exit()
reasons = collections.Counter()
for case in root.iter("testcase"):
    for sk in case.findall("skipped"):
        reasons[(sk.get("message") or "no reason given").strip()] += 1
print(f"{label}\t{sum(reasons.values())}")
for reason, n in sorted(reasons.items()):
    print(f"{label}\t- {reason} ({n})")
PY
)
	rm -f "$xml"
	[ -z "$lines" ] || printf '%s\n' "$lines" >>"$MXSPOOL_SKIP_REPORT"
	own_skips+=("$label")
	return "$rc"
}

# skip_summary [LABEL...]: the reasons, then the one-line count, of the
# labels given (default: every run noted in the report).
skip_summary() {
	[ -s "$MXSPOOL_SKIP_REPORT" ] || return 0
	local summary="" label count
	while IFS=$'\t' read -r label count; do
		[ $# -eq 0 ] || [[ " $* " == *" $label "* ]] || continue
		case $count in
			-*) echo "    $label: ${count#- }" ;;
			*) summary+="${summary:+, }$count ($label)" ;;
		esac
	done <"$MXSPOOL_SKIP_REPORT"
	[ -z "$summary" ] || echo "integration tests skipped: $summary"
}

step "apt packages" install_packages || { echo "cannot continue without the packages" >&2; exit 1; }
# Exim and OpenSMTPD as real primaries (test_primaries.py): they conflict
# with postfix as packages, so they are downloaded and unpacked under
# /var/tmp, never installed (the harness would do it at first use too; when
# it cannot, those tests skip and say why).
step "real-peer servers (exim, opensmtpd unpacked)" as_root bash tests/integration/real_peers.sh exim opensmtpd
step "pytest" install_pytest || { echo "cannot continue without pytest" >&2; exit 1; }

if [ "${MXSPOOL_SKIP_CARGO:-0}" != 1 ]; then
	step "rustfmt/clippy components" cargo_components
	step "cargo fmt --check" cargo fmt --all -- --check
	step "cargo clippy" cargo clippy --all-targets -- -D warnings
	# Modules readable bottom-up: no module uses one that uses it back.
	step "module layers (no import cycles)" python3 tests/layers.py
	step "cargo build" cargo build
	step "cargo test" cargo test
fi

bin=${MXSPOOL_BIN:-target/debug/mxspool}
case $bin in /*) ;; *) bin=$root/$bin ;; esac
export MXSPOOL_BIN=$bin
export MXSPOOL_RUNNER=${MXSPOOL_RUNNER:-}
echo "    MXSPOOL_BIN=$MXSPOOL_BIN MXSPOOL_RUNNER=$MXSPOOL_RUNNER"
if [ ! -x "$MXSPOOL_BIN" ]; then
	echo "warning: $MXSPOOL_BIN does not exist; only the harness self-tests can pass" >&2
fi
step "integration tests" integration_tests "${MXSPOOL_TEST_LABEL:-native}" "$@"

if [ "${MXSPOOL_SKIP_CARGO:-0}" != 1 ]; then
	step "OpenWrt init script and shell checks" sh board/openwrt/tests/test-init.sh
	# JSON/JS/Lua lint, the LuCI app's ACL/menu/settings checks and the
	# collector on sample stats; the views and the collector fed by the real
	# daemon run in the integration suite (test_openwrt_ui.py).
	step "OpenWrt LuCI app and metrics collector" sh board/openwrt/tests/test-luci.sh
	step "mips32 source lint" cross/lint-mips32.sh
	unit_targets=" ${MXSPOOL_CROSS_UNIT:-mips-unknown-linux-musl} "
	for t in ${MXSPOOL_CROSS:-mips-unknown-linux-musl mipsel-unknown-linux-musl}; do
		[ "$t" = none ] && continue
		step "cross tools" cross/setup.sh || break
		if [[ $unit_targets == *" $t "* ]]; then
			# The power-cut test's many rounds cost minutes under emulation;
			# a few rounds still prove the spool's byte order and sync path there.
			step "unit tests on $t under qemu (debug)" env POWERCUT_ROUNDS="${MXSPOOL_CROSS_POWERCUT_ROUNDS:-6}" cross/build.sh "$t" test
		else
			step "reactor timer tests on $t under qemu (debug)" cross/build.sh "$t" test -- --test timers
		fi
		# The integration suite runs against the build that ships
		# (release-z): the MIPS timer bug of issue 20 showed only there.
		step "integration tests on $t under qemu (release-z)" env MXSPOOL_SKIP_CARGO=1 MXSPOOL_CROSS=none \
			MXSPOOL_CROSS_PROFILE=release-z MXSPOOL_TEST_LABEL="$t" cross/test-integration.sh "$t" "$@"
	done
fi

if [ "${MXSPOOL_SKIP_CARGO:-0}" != 1 ] && [ "${MXSPOOL_FUZZ_SECONDS:-20}" != 0 ]; then
	# A short run of every fuzz target on its seed corpus (nightly + cargo-fuzz
	# come with cross/setup.sh); longer runs: fuzz/run.sh SECONDS.
	fuzz_tools() {
		rustup toolchain list | grep -q '^nightly-2026-05-20' ||
			rustup toolchain install nightly-2026-05-20 --profile minimal || return 1
		command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --version 0.13.2
	}
	step "cargo-fuzz" fuzz_tools && step "fuzz (${MXSPOOL_FUZZ_SECONDS:-20}s per target)" fuzz/run.sh "${MXSPOOL_FUZZ_SECONDS:-20}"
fi

if [ "$skip_owner" = 1 ]; then
	skip_summary
elif [ ${#own_skips[@]} -ne 0 ]; then
	skip_summary "${own_skips[@]}"
fi
if [ ${#failed[@]} -ne 0 ]; then
	printf '==> %d step(s) failed:\n' "${#failed[@]}" >&2
	printf '    %s\n' "${failed[@]}" >&2
	echo "steps: $passed passed, ${#failed[@]} failed"
	exit 1
fi
echo "==> all steps passed"
echo "steps: $passed passed, 0 failed"
