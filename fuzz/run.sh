#!/bin/sh
# Runs every fuzz target for SECONDS (default 60) on its checked-in seed
# corpus (fuzz/corpus/TARGET/seed-*) plus whatever earlier runs added.
# Exit status 1 if any target found a crash (the input is in
# fuzz/artifacts/TARGET/). CI: fuzz/run.sh 45
# Needs the pinned nightly and cargo-fuzz:
#   rustup toolchain install nightly-2026-05-20 --profile minimal
#   cargo install cargo-fuzz --locked
set -u
SECONDS_EACH=${1:-60}
TOOLCHAIN=${FUZZ_TOOLCHAIN:-nightly-2026-05-20}
cd "$(dirname "$0")/.." || exit 2
TARGETS=${FUZZ_TARGETS:-"smtp_server smtp_client config dns dsn_received"}
cargo +"$TOOLCHAIN" fuzz build || exit 2
failed=""
for t in $TARGETS; do
    echo "== $t: ${SECONDS_EACH}s"
    if ! cargo +"$TOOLCHAIN" fuzz run "$t" "fuzz/corpus/$t" -- \
        -max_total_time="$SECONDS_EACH" -max_len=70000 -rss_limit_mb=1024 \
        -timeout=10 -print_final_stats=1 2>&1 | tail -n 20; then
        failed="$failed $t"
    fi
done
if [ -n "$failed" ]; then
    echo "fuzz: crashes in:$failed (see fuzz/artifacts/)"
    exit 1
fi
echo "fuzz: no crash in $SECONDS_EACH s per target"
