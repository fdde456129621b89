#!/bin/sh
# mxspool during a long outage: for each queue length (default 1k, 10k, 50k
# messages of 4 KiB, 8 sessions) receive with the primary down, then the
# peak RSS receiving, the RSS with the mail queued, the peak RSS of one
# `queue list --json`, and the drain once the primary is up.
#   bench/outage.sh [--queued 1000,10000] [--sessions N] [--size BYTES] [--output FILE]
set -eu
cd "$(dirname "$0")/.."
MXSPOOL_BENCH_OPENSMTPD=0
. bench/setup.sh
exec python3 bench/bench.py ${MXSPOOL_BENCH_BINARY:+--binary "$MXSPOOL_BENCH_BINARY"} outage "$@"
