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
TARGETS=${FUZZ_TARGETS:-"smtp_server smtp_client config dns dsn_received downgrade"}
cargo +"$TOOLCHAIN" fuzz build || exit 2
failed=""
for t in $TARGETS; do
    echo "== $t: ${SECONDS_EACH}s"
    log="fuzz/artifacts/$t.log"
    mkdir -p fuzz/artifacts
    # The corpus is fuzz/corpus/$t (cargo-fuzz's default).
    cargo +"$TOOLCHAIN" fuzz run "$t" -- \
        -max_total_time="$SECONDS_EACH" -max_len=70000 -rss_limit_mb=1024 \
        -timeout=10 -print_final_stats=1 >"$log" 2>&1
    rc=$?
    grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|==[0-9]+==|SUMMARY|thread .* panicked)' "$log" | tail -n 8
    if [ "$rc" -ne 0 ]; then
        tail -n 40 "$log"
        failed="$failed $t"
    fi
done
if [ -n "$failed" ]; then
    echo "fuzz: crashes in:$failed (see fuzz/artifacts/)"
    exit 1
fi
echo "fuzz: no crash in $SECONDS_EACH s per target"
