#!/bin/sh
# mxspool memory bound: 8 sessions each sending a 9 MiB message (primary down,
# so everything is spooled); peak RSS sampled every 20 ms. Targets: peak RSS
# < 16 MiB, idle RSS < 3 MiB. Exit status 1 if a target is missed.
#   bench/memtest.sh [--rounds N] [--sessions N] [--size-mib N]
set -eu
cd "$(dirname "$0")/.."
MXSPOOL_BENCH_OPENSMTPD=0
. bench/setup.sh
exec python3 bench/bench.py ${MXSPOOL_BENCH_BINARY:+--binary "$MXSPOOL_BENCH_BINARY"} mem "$@"
