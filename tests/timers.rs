//! The reactor's timers fire on every target (on 32-bit MIPS musl they
//! once never did: cross/repro/rustix-timerfd).
//!
//! polling (under async-io, under smol) arms a timerfd for each wait and
//! then sleeps in epoll with no timeout of its own. On 32-bit MIPS musl,
//! rustix's libc backend once passed its 64-bit `Timespec` where libc
//! expected musl's 32-bit `time_t` layout: the timerfd was left unarmed
//! (optimised builds slept forever; debug builds woke on stack garbage),
//! so retries, timeouts and down-mark windows never ended on their own.
//! These tests run under qemu for the MIPS targets (`cross/build.sh T test`)
//! and fail there without `--cfg=fix_y2038`.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};

/// Runs `f` on a thread and fails the test if it has not finished within
/// `limit`: a timer that never fires must fail, not hang the suite.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(_) => panic!("nothing happened within {limit:?}: the timer never fired"),
    }
}

#[test]
fn timerfd_armed_through_rustix_fires_when_asked() {
    let waited = within(Duration::from_secs(20), || {
        let fd = timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::CLOEXEC).unwrap();
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let armed = Itimerspec {
            it_interval: zero,
            it_value: Timespec {
                tv_sec: 0,
                tv_nsec: 400_000_000,
            },
        };
        let start = Instant::now();
        timerfd_settime(&fd, TimerfdTimerFlags::empty(), &armed).unwrap();
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        // No timeout: only the timerfd can end this wait, as in polling.
        let n = poll(&mut fds, None).unwrap();
        assert_eq!(n, 1);
        start.elapsed()
    });
    assert!(
        waited >= Duration::from_millis(350),
        "the timerfd fired after {waited:?}, armed for 400 ms: its value was misread"
    );
}

#[test]
fn smol_timer_fires_with_nothing_else_to_wake_the_reactor() {
    let waited = within(Duration::from_secs(20), || {
        let start = Instant::now();
        smol::block_on(smol::Timer::after(Duration::from_millis(300)));
        start.elapsed()
    });
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
}
