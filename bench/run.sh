#!/bin/sh
# Side-by-side benchmark: mxspool vs a private Postfix vs OpenSMTPD on loopback.
#   bench/run.sh                 full run (3 rounds, 2000 messages): writes bench/results.md
#   bench/run.sh --quick         smoke test (1 round, 200 messages, no 9 MiB test)
#   bench/run.sh --rounds 5 ...  any option of `bench.py compare` (see --help)
# Needs root (Postfix and OpenSMTPD drop privileges themselves).
set -eu
cd "$(dirname "$0")/.."
. bench/setup.sh

QUICK=""
if [ "${1:-}" = "--quick" ]; then
    shift
    QUICK="--rounds 1 --messages 200 --big-messages 5 --no-huge --output bench/results-quick.md"
fi
# The size target is on the router build (stripped mipsel, release-z): built
# here when the cross tools are installed (cross/setup.sh), else not measured.
ROUTER_BIN=target/mipsel-unknown-linux-musl/release-z/mxspool
ROUTER=""
if [ "${MXSPOOL_BENCH_SKIP_BUILD:-0}" != 1 ] && command -v cargo-zigbuild >/dev/null 2>&1; then
    cross/build.sh mipsel-unknown-linux-musl build release-z >/dev/null 2>&1 || rm -f "$ROUTER_BIN"
fi
[ -f "$ROUTER_BIN" ] && ROUTER="--router-binary $ROUTER_BIN"
# shellcheck disable=SC2086
exec python3 bench/bench.py --binary "$MXSPOOL_BENCH_BINARY" compare $QUICK $ROUTER "$@"
