#!/bin/sh
# Instructions per accepted message: mxspool runs under callgrind twice, once
# receiving LOW and once HIGH messages of 4 KiB (one at a time, each on its own
# connection, each delivered to an smtp-sink primary); the difference of the
# two totals divided by HIGH-LOW cancels start-up and shutdown. Instruction
# counts do not depend on machine load, so this figure is the regression guard.
#   bench/callgrind.sh [--low 20] [--high 120]
set -eu
cd "$(dirname "$0")/.."
MXSPOOL_BENCH_OPENSMTPD=0
. bench/setup.sh
exec python3 bench/bench.py ${MXSPOOL_BENCH_BINARY:+--binary "$MXSPOOL_BENCH_BINARY"} callgrind "$@"
