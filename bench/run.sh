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
# shellcheck disable=SC2086
exec python3 bench/bench.py --binary "$MXSPOOL_BENCH_BINARY" compare $QUICK "$@"
