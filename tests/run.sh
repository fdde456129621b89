#!/usr/bin/env bash
# The test command of mxspool: ./tests/run.sh [extra pytest arguments]
#
# On a fresh Debian 12 machine with only the Rust toolchain and python3:
#   1. installs the apt packages the integration tests need (postfix, swaks,
#      util-linux for script(1), openssl for the tests' self-signed
#      certificates) when missing, and pytest when missing;
#   2. cargo fmt --check, cargo clippy --all-targets -D warnings;
#   3. cargo build (debug), cargo test (unit tests);
#   4. python3 -m pytest -q tests/integration against the built binary.
# Every step runs even when an earlier lint/unit step failed (so one run shows
# everything); the exit status is non-zero if any step failed.
#
# Environment:
#   MXSPOOL_BIN         binary under test (default target/debug/mxspool)
#   MXSPOOL_RUNNER      command prefix for it, e.g. "qemu-mips -L /sysroot"
#   MXSPOOL_SKIP_CARGO  1: skip steps 2-3 (e.g. testing a cross-built binary)
#   MXSPOOL_TEST_TIMEOUT, MXSPOOL_KEEP_TMP, MXSPOOL_TEST_TMP: see
#                       tests/README-testing.md
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)

failed=()
step() {
	local name=$1
	shift
	echo "==> $name"
	if "$@"; then
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
	local pkgs=(postfix swaks util-linux openssl) missing=() p
	for p in "${pkgs[@]}"; do
		dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	echo "installing: ${missing[*]}"
	# Postfix: no system configuration; the tests run private instances.
	echo "postfix postfix/main_mailer_type select No configuration" | as_root debconf-set-selections
	as_root apt-get update -qq || return 1
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" || return 1
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

step "apt packages" install_packages || { echo "cannot continue without the packages" >&2; exit 1; }
step "pytest" install_pytest || { echo "cannot continue without pytest" >&2; exit 1; }

if [ "${MXSPOOL_SKIP_CARGO:-0}" != 1 ]; then
	step "rustfmt/clippy components" cargo_components
	step "cargo fmt --check" cargo fmt --all -- --check
	step "cargo clippy" cargo clippy --all-targets -- -D warnings
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
step "integration tests" python3 -m pytest -q tests/integration "$@"

if [ ${#failed[@]} -ne 0 ]; then
	printf '==> %d step(s) failed:\n' "${#failed[@]}" >&2
	printf '    %s\n' "${failed[@]}" >&2
	exit 1
fi
echo "==> all steps passed"
