#!/usr/bin/env bash
# cross/test-integration.sh TARGET [ARGS...]
# Build the mxspool binary for TARGET with MXSPOOL_CROSS_PROFILE (default release-z: the
# build that ships on routers) and run the Python integration suite against it
# under qemu-user: ./tests/run.sh with
#   MXSPOOL_BIN=<the cross binary>  MXSPOOL_RUNNER=qemu-<arch> (empty for x86_64)
# MXSPOOL_CROSS_PROFILE=dev tests the debug build instead. ARGS are passed to tests/run.sh.
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: cross/test-integration.sh TARGET [ARGS...]" >&2; exit 2; }
T=$1; shift
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

case "$T" in
	x86_64-unknown-linux-musl) RUNNER= ;;
	aarch64-unknown-linux-musl) RUNNER=qemu-aarch64 ;;
	armv7-unknown-linux-musleabihf) RUNNER=qemu-arm ;;
	mipsel-unknown-linux-musl) RUNNER=qemu-mipsel ;;
	mips-unknown-linux-musl) RUNNER=qemu-mips ;;
	*) echo "cross/test-integration.sh: unknown target '$T'" >&2; exit 2 ;;
esac

if [ ! -x tests/run.sh ]; then
	echo "cross/test-integration.sh: tests/run.sh not found (or not executable) in $ROOT;" >&2
	echo "  the integration suite is not in this tree yet — nothing to run." >&2
	exit 2
fi
if [ -n "$RUNNER" ] && ! command -v "$RUNNER" >/dev/null 2>&1; then
	echo "cross/test-integration.sh: $RUNNER not found (run cross/setup.sh)" >&2
	exit 2
fi

PROFILE=${MXSPOOL_CROSS_PROFILE:-release-z}
"$ROOT/cross/build.sh" "$T" build "$PROFILE"
case "$PROFILE" in dev|test) DIR=debug ;; bench) DIR=release ;; *) DIR=$PROFILE ;; esac
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$T/$DIR/mxspool

echo "+ MXSPOOL_BIN=$BIN MXSPOOL_RUNNER=$RUNNER ./tests/run.sh $*"
start=$(date +%s)
rc=0
MXSPOOL_BIN=$BIN MXSPOOL_RUNNER=$RUNNER ./tests/run.sh "$@" || rc=$?
echo "time integration $T $PROFILE $(( $(date +%s) - start ))s (exit $rc)"
exit "$rc"
