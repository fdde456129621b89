//! Refuses a build whose timers would never fire.
//!
//! On 32-bit musl targets where rustix uses its libc backend (MIPS,
//! PowerPC), rustix 1.x passes its own `Timespec` (64-bit seconds) to libc
//! functions that the libc crate declares with musl's old 32-bit `time_t`.
//! polling's timerfd is then never armed, the reactor sleeps in epoll with no
//! timeout, and no retry, timeout or down-mark window ever ends on its own.
//! rustix converts correctly when built with `--cfg fix_y2038`, which
//! `.cargo/config.toml` sets for these targets. A build that lost the flag
//! (RUSTFLAGS replaces the config's) must fail here, not on a router.
//! Reproduction: cross/repro/rustix-timerfd.
use std::env;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let var = |k: &str| env::var(k).unwrap_or_default();
    let arch = var("CARGO_CFG_TARGET_ARCH");
    let libc_backend_32 = var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "musl"
        && var("CARGO_CFG_TARGET_POINTER_WIDTH") == "32"
        && matches!(arch.as_str(), "mips" | "mips32r6" | "powerpc");
    if libc_backend_32 && env::var_os("CARGO_CFG_FIX_Y2038").is_none() {
        panic!(
            "building for 32-bit {arch} musl needs `--cfg=fix_y2038` in the target's rustflags \
             (see .cargo/config.toml): without it rustix leaves polling's timerfd unarmed and \
             mxspool's timers never fire. Do not set RUSTFLAGS; it replaces the config's flags. \
             Reproduction: cross/repro/rustix-timerfd"
        );
    }
}
