#!/usr/bin/env bash
# cross/repro/rustix-timerfd/run.sh — the upstream bug behind issue 20, alone.
# Builds the reproduction for mips and mipsel musl (tools: cross/setup.sh),
# once as rustix builds itself by default and once with --cfg=fix_y2038 (what
# mxspool's .cargo/config.toml sets), and runs each under qemu-user.
# Expected while the bug is upstream: "FAIL" without the flag, "OK" with it.
# When the first line turns OK too, rustix is fixed and the flag can go.
set -uo pipefail
# Built outside the repository: cargo would merge mxspool's .cargo/config.toml
# (found by walking up from here) into the flags, fix_y2038 included.
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$here/Cargo.toml" "$here/src" "$work/"
cd "$work" || exit 1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}
NIGHTLY=${NIGHTLY:-nightly-2026-05-20}
for t in mips-unknown-linux-musl mipsel-unknown-linux-musl; do
	var=CARGO_TARGET_$(echo "$t" | tr 'a-z-' 'A-Z_')_RUSTFLAGS
	for extra in "" "--cfg=fix_y2038"; do
		echo "== $t ${extra:-(rustix as it builds itself)}"
		env "$var=-Ctarget-feature=+crt-static -Clink-self-contained=no $extra" \
			cargo +"$NIGHTLY" zigbuild -q -Zbuild-std=std,panic_abort --target "$t" --release 2>/dev/null ||
			{ echo "build failed"; continue; }
		"qemu-${t%%-*}" "$CARGO_TARGET_DIR/$t/release/rustix-timerfd-repro"
	done
done
