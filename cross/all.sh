#!/usr/bin/env bash
# cross/all.sh [--no-test] [TARGET...]
# Release binaries for every router target (+ x86_64 musl) and their test suites
# under qemu-user, then a table of stripped sizes and timings. Keeps going after a
# failure; exits 1 if any step failed. Heavy: ~10 min build-only and ~18 min
# with tests from a cold zig cache on 2 cores. Not for every CI run (that one runs
# `cross/build.sh mips-unknown-linux-musl test`).
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TEST=1
if [ "${1:-}" = --no-test ]; then TEST=0; shift; fi
if [ $# -gt 0 ]; then TARGETS=("$@"); else
	TARGETS=(mipsel-unknown-linux-musl mips-unknown-linux-musl aarch64-unknown-linux-musl
		armv7-unknown-linux-musleabihf x86_64-unknown-linux-musl)
fi

LOGDIR=${LOGDIR:-$(mktemp -d /tmp/mxspool-cross.XXXXXX)}
mkdir -p "$LOGDIR"
declare -A SIZE BTIME TRES TTIME
failed=0

for t in "${TARGETS[@]}"; do
	echo "=== $t: release build (log $LOGDIR/$t.build.log)"
	s=$(date +%s)
	if "$HERE/build.sh" "$t" build release >"$LOGDIR/$t.build.log" 2>&1; then
		SIZE[$t]=$(awk -v t="$t" '$1 == "size" && $2 == t { print $3 }' "$LOGDIR/$t.build.log")
	else
		SIZE[$t]=FAILED; failed=1; tail -n 20 "$LOGDIR/$t.build.log"
	fi
	BTIME[$t]=$(( $(date +%s) - s ))
	if [ "$TEST" = 1 ]; then
		echo "=== $t: tests under qemu (log $LOGDIR/$t.test.log)"
		s=$(date +%s)
		if "$HERE/build.sh" "$t" test >"$LOGDIR/$t.test.log" 2>&1; then
			TRES[$t]=$(grep -E '^test result:' "$LOGDIR/$t.test.log" |
				awk '{p += $4; f += $6} END {printf "ok %d passed %d failed", p, f}')
		else
			TRES[$t]=FAILED; failed=1; tail -n 30 "$LOGDIR/$t.test.log"
		fi
		TTIME[$t]=$(( $(date +%s) - s ))
	fi
done

echo
printf '%-32s %12s %9s  %-28s %9s\n' target "size (bytes)" "build s" tests "test s"
for t in "${TARGETS[@]}"; do
	printf '%-32s %12s %9s  %-28s %9s\n' "$t" "${SIZE[$t]}" "${BTIME[$t]}" "${TRES[$t]:--}" "${TTIME[$t]:--}"
done
for t in "${TARGETS[@]}"; do
	[ "${SIZE[$t]}" = FAILED ] || echo "size $t ${SIZE[$t]}"
done
echo "logs: $LOGDIR"
exit "$failed"
