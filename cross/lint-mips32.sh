#!/usr/bin/env bash
# cross/lint-mips32.sh — fast (no build) check for what breaks only on 32-bit MIPS
# (mips/mipsel have no 64-bit atomics: cfg(target_has_atomic = "64") is false):
#   * std AtomicU64 / AtomicI64 in the project's own code (use portable_atomic);
#   * redb's `cache_metrics` feature (uses AtomicU64);
#   * heapless::pool / box_pool! / arc_pool! without heapless's `portable-atomic`.
# Exits 1 with file:line for each finding. Run it before the (slow) cross build.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
bad=0
report() { echo "mips32: $*" >&2; bad=1; }

# own code: std/core 64-bit atomics
dirs=()
for d in src tests examples bench benches; do [ -d "$d" ] && dirs+=("$d"); done
if [ ${#dirs[@]} -gt 0 ]; then
	# a path through std/core's atomic module naming a 64-bit atomic
	hits=$(grep -rnE '(std|core)::sync::atomic::(\{[^}]*)?\bAtomic[UI]64\b' --include='*.rs' "${dirs[@]}" || true)
	while IFS= read -r h; do
		[ -n "$h" ] && report "$h: std 64-bit atomic (not on mips32; use portable_atomic)"
	done <<<"$hits"
	# a bare AtomicU64 in a file that does not take it from portable_atomic
	hits=$(grep -rnE '\bAtomic[UI]64\b' --include='*.rs' "${dirs[@]}" || true)
	while IFS= read -r h; do
		[ -n "$h" ] || continue
		f=${h%%:*}
		grep -q 'portable_atomic' "$f" || report "$h: AtomicU64/AtomicI64 not from portable_atomic"
	done <<<"$hits"
fi

# Cargo.toml: redb cache_metrics
if grep -nE 'redb.*cache_metrics|cache_metrics' Cargo.toml >/dev/null; then
	report "Cargo.toml: redb feature cache_metrics needs AtomicU64 (not on mips32)"
fi

# heapless pools need heapless/portable-atomic on 32-bit targets
if grep -rnE 'heapless::pool|box_pool!|arc_pool!|object_pool!' --include='*.rs' src >/dev/null 2>&1 &&
	! grep -nE '^heapless.*portable-atomic' Cargo.toml >/dev/null; then
	report "heapless pool used but heapless's portable-atomic feature is off in Cargo.toml"
fi

if [ "$bad" = 0 ]; then echo "mips32 lint: ok"; fi
exit "$bad"
