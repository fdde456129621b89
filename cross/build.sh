#!/usr/bin/env bash
# cross/build.sh TARGET [build|test] [PROFILE] [-- CARGO_ARGS...]
#
#   build  (default) build the mxspool binary for TARGET with PROFILE (default
#          release) and print its stripped size:  size TARGET BYTES
#   test   build the project's Rust tests for TARGET and run them under qemu-user
#          (runner from .cargo/config.toml); PROFILE defaults to the test profile.
#
# Targets: x86_64-unknown-linux-musl, aarch64-unknown-linux-musl       (stable)
#          armv7-unknown-linux-musleabihf, mipsel-unknown-linux-musl,
#          mips-unknown-linux-musl                   (pinned nightly + -Zbuild-std)
# Tools come from cross/setup.sh. Env: NIGHTLY (default nightly-2026-05-20),
# CARGO_TARGET_DIR (default ./target), LOCKED=1 adds --locked.
# Never set RUSTFLAGS: it would replace the per-target flags in .cargo/config.toml.
set -euo pipefail

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] || usage
T=$1; shift
MODE=build; PROFILE=
if [ $# -gt 0 ] && [ "$1" != -- ]; then MODE=$1; shift; fi
if [ $# -gt 0 ] && [ "$1" != -- ]; then PROFILE=$1; shift; fi
if [ $# -gt 0 ] && [ "$1" = -- ]; then shift; fi
EXTRA=("$@")

NIGHTLY=${NIGHTLY:-nightly-2026-05-20}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

if [ -n "${RUSTFLAGS:-}" ]; then
	echo "cross/build.sh: RUSTFLAGS is set; it would override .cargo/config.toml — unset it" >&2
	exit 2
fi

case "$T" in
	x86_64-unknown-linux-musl|aarch64-unknown-linux-musl)
		TC=stable; BUILD_STD=0 ;;
	armv7-unknown-linux-musleabihf|mipsel-unknown-linux-musl|mips-unknown-linux-musl)
		TC=$NIGHTLY; BUILD_STD=1 ;;
	*) echo "cross/build.sh: unknown target '$T'" >&2; usage ;;
esac

LOCK=()
[ "${LOCKED:-0}" = 1 ] && LOCK=(--locked)

start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }

case "$MODE" in
test)
	STD=()
	# tests unwind (#[should_panic]): let cargo choose the std crates
	[ "$BUILD_STD" = 1 ] && STD=(-Zbuild-std)
	PROF=()
	[ -n "$PROFILE" ] && PROF=(--profile "$PROFILE")
	echo "+ RUSTUP_TOOLCHAIN=$TC cargo-zigbuild test ${STD[*]} --target $T ${PROF[*]} ${LOCK[*]} ${EXTRA[*]}"
	RUSTUP_TOOLCHAIN=$TC cargo-zigbuild test "${STD[@]}" --target "$T" "${PROF[@]}" "${LOCK[@]}" "${EXTRA[@]}"
	echo "time test $T $(elapsed)s"
	;;
build)
	PROFILE=${PROFILE:-release}
	STD=()
	if [ "$BUILD_STD" = 1 ]; then
		case "$PROFILE" in
			dev|test|bench) STD=(-Zbuild-std) ;;          # panic=unwind profiles
			*) STD=("-Zbuild-std=std,panic_abort") ;;     # release profiles: panic=abort
		esac
	fi
	if [ "$PROFILE" = release-z ] && [ "$BUILD_STD" = 1 ]; then
		# The router build: std itself optimised for size, and panics abort
		# without formatting a message (procd respawns; the spool is crash
		# safe). Measured on mips: 3,319,268 bytes (release) -> 2,577,596.
		STD+=(-Zbuild-std-features=optimize_for_size)
		var=CARGO_TARGET_$(echo "$T" | tr 'a-z-' 'A-Z_')_RUSTFLAGS
		base=$(sed -n "/^\[target.$T\]/,/^\[/p" .cargo/config.toml | sed -n 's/^rustflags = \[\(.*\)\]/\1/p' | tr -d '",')
		export "$var=$base -Zunstable-options -Cpanic=immediate-abort"
		echo "+ $var=${!var}"
	fi
	echo "+ cargo +$TC zigbuild ${STD[*]} --target $T --profile $PROFILE --bin mxspool ${LOCK[*]} ${EXTRA[*]}"
	cargo +"$TC" zigbuild "${STD[@]}" --target "$T" --profile "$PROFILE" --bin mxspool "${LOCK[@]}" "${EXTRA[@]}"
	echo "time build $T $PROFILE $(elapsed)s"

	case "$PROFILE" in dev|test) DIR=debug ;; bench) DIR=release ;; *) DIR=$PROFILE ;; esac
	BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$T/$DIR/mxspool
	[ -f "$BIN" ] || { echo "cross/build.sh: built, but $BIN is missing" >&2; exit 1; }
	echo "binary $BIN"
	# Strip in place as OpenWrt's package build does (its default for musl
	# builds, sstrip, drops all that no segment loads). The linker's strip (strip=true)
	# keeps sections nothing loads: on MIPS .pdr, one procedure descriptor
	# per function (199 KB of the mipsel build), and .comment. llvm-strip
	# --strip-all drops them; done in place, so the binary the tests run
	# under qemu is the one measured and shipped.
	case "$PROFILE" in
		dev|test) ;;
		*)
			if command -v llvm-strip >/dev/null 2>&1; then
				llvm-strip --strip-all "$BIN"
			else
				echo "note: llvm-strip not found (apt llvm): non-loaded sections kept" >&2
			fi
			;;
	esac
	# Size as shipped: stripped. The release profile strips already (strip=true);
	# otherwise strip a copy: zig objcopy (native-endian ELF only), else llvm-strip.
	SIZE=$(stat -c %s "$BIN")
	if command -v readelf >/dev/null 2>&1 && ! readelf -S -W "$BIN" | grep -Eq '\.symtab|\.debug_'; then
		: # already stripped
	else
		TMP=$(mktemp)
		trap 'rm -f "$TMP"' EXIT
		if python3 -m ziglang objcopy --strip-all "$BIN" "$TMP" 2>/dev/null ||
			{ command -v llvm-strip >/dev/null 2>&1 && llvm-strip -o "$TMP" "$BIN"; }; then
			SIZE=$(stat -c %s "$TMP")
		else
			echo "note: could not strip a copy (big-endian, no llvm-strip); size is the file as built" >&2
		fi
	fi
	echo "size $T $SIZE"
	;;
*) echo "cross/build.sh: unknown mode '$MODE' (build|test)" >&2; usage ;;
esac
