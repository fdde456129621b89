#!/usr/bin/env bash
# cross/setup.sh — install the cross-build tools for mxspool, from registries only.
#
#   apt:     qemu-user (qemu-mips, qemu-mipsel, qemu-arm, qemu-aarch64), shellcheck,
#            llvm (llvm-strip for the router builds)
#   PyPI:    ziglang==0.17.1       (zig: linker, musl libc, libunwind, C compiler for the target)
#   crates:  cargo-zigbuild 0.24.1 (cargo install --locked)
#   rustup:  stable + x86_64/aarch64 musl targets; pinned nightly with rust-src (-Zbuild-std)
#
# Idempotent: every step checks first and skips what is already there.
# Never adds foreign dpkg architectures (zig provides every target's libc).
# See docs in /work/shared/notes/cross-compiling.md ("Recipe").
set -euo pipefail

NIGHTLY=${NIGHTLY:-nightly-2026-05-20}
ZIG_VERSION=${ZIG_VERSION:-0.17.1}
ZIGBUILD_VERSION=${ZIGBUILD_VERSION:-0.24.1}
STABLE_TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)
PYTHON=${PYTHON:-python3}

say() { printf 'setup: %s\n' "$*"; }

as_root() {
	if [ "$(id -u)" = 0 ]; then "$@"
	elif command -v sudo >/dev/null 2>&1; then sudo "$@"
	else echo "setup: need root for: $*" >&2; return 1
	fi
}

# --- apt: qemu-user, shellcheck ----------------------------------------------
apt_missing=()
for b in qemu-mips qemu-mipsel qemu-arm qemu-aarch64; do
	command -v "$b" >/dev/null 2>&1 || { apt_missing+=(qemu-user); break; }
done
command -v shellcheck >/dev/null 2>&1 || apt_missing+=(shellcheck)
command -v llvm-strip >/dev/null 2>&1 || apt_missing+=(llvm)
if [ ${#apt_missing[@]} -gt 0 ]; then
	say "apt-get install ${apt_missing[*]}"
	as_root apt-get update
	as_root env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y --no-install-recommends "${apt_missing[@]}"
else
	say "qemu-user and shellcheck already installed"
fi

# --- PyPI: ziglang (cargo-zigbuild runs it as `python3 -m ziglang`) -----------
have_zig=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("ziglang"))' 2>/dev/null || true)
if [ "$have_zig" != "$ZIG_VERSION" ]; then
	say "pip install ziglang==$ZIG_VERSION (found: ${have_zig:-none})"
	if ! "$PYTHON" -m pip install --disable-pip-version-check "ziglang==$ZIG_VERSION"; then
		# Debian's system python refuses (PEP 668 "externally-managed-environment"):
		# install into the user site instead, which touches no dpkg-owned file.
		say "retrying: pip install --user (externally managed python)"
		"$PYTHON" -m pip install --disable-pip-version-check --user --break-system-packages "ziglang==$ZIG_VERSION"
	fi
else
	say "ziglang $ZIG_VERSION already installed"
fi

# --- rustup: stable targets ----------------------------------------------------
command -v rustup >/dev/null 2>&1 || { echo "setup: rustup not found (install Rust via rustup first)" >&2; exit 1; }
installed=$(rustup target list --installed --toolchain stable 2>/dev/null || true)
need=()
for t in "${STABLE_TARGETS[@]}"; do
	grep -qx "$t" <<<"$installed" || need+=("$t")
done
if [ ${#need[@]} -gt 0 ]; then
	say "rustup target add --toolchain stable ${need[*]}"
	rustup target add --toolchain stable "${need[@]}"
else
	say "stable targets already installed"
fi

# --- rustup: pinned nightly with rust-src (armv7 / mipsel / mips use -Zbuild-std)
if ! rustup toolchain list | grep -q "^$NIGHTLY"; then
	say "rustup toolchain install $NIGHTLY"
	rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src
elif ! rustup component list --installed --toolchain "$NIGHTLY" | grep -q '^rust-src'; then
	say "rustup component add rust-src ($NIGHTLY)"
	rustup component add rust-src --toolchain "$NIGHTLY"
else
	say "$NIGHTLY with rust-src already installed"
fi

# --- crates.io: cargo-zigbuild -------------------------------------------------
have_zb=$(cargo-zigbuild --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have_zb" != "$ZIGBUILD_VERSION" ]; then
	say "cargo install cargo-zigbuild $ZIGBUILD_VERSION (found: ${have_zb:-none})"
	cargo +stable install cargo-zigbuild --locked --version "$ZIGBUILD_VERSION"
else
	say "cargo-zigbuild $ZIGBUILD_VERSION already installed"
fi

say "done: $(cargo-zigbuild --version), zig $("$PYTHON" -m ziglang version), $(qemu-mips --version | head -n1)"
