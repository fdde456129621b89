//! Minimal reproduction: rustix 1.1.6's libc backend on 32-bit MIPS musl
//! hands its `Itimerspec` (64-bit `tv_sec`) to libc's `timerfd_settime`,
//! whose `struct itimerspec` the libc crate declares with musl's old 32-bit
//! `time_t`. The kernel then reads `it_value` from the wrong bytes, so the
//! timer is left disarmed instead of armed. polling 3 arms exactly such a
//! timerfd for every reactor wait, so async-io timers never fire.
//!
//! Arms a 1.5 s one-shot timer and waits up to 4 s for it: exits 1 unless
//! it fires after about 1.5 s.
use rustix::event::{poll, PollFd, PollFlags};
use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};
use std::time::{Duration, Instant};

fn main() {
    let fd = timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::CLOEXEC).expect("timerfd_create");
    let new = Itimerspec {
        it_interval: Timespec { tv_sec: 0, tv_nsec: 0 },
        it_value: Timespec { tv_sec: 1, tv_nsec: 500_000_000 },
    };
    let start = Instant::now();
    timerfd_settime(&fd, TimerfdTimerFlags::empty(), &new).expect("timerfd_settime");
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let limit = Timespec { tv_sec: 4, tv_nsec: 0 };
    let n = poll(&mut fds, Some(&limit)).expect("poll");
    let waited = start.elapsed();
    println!("timer armed for 1.5 s; poll returned {n} after {waited:?}");
    if n != 1 || waited < Duration::from_millis(1400) || waited > Duration::from_millis(3000) {
        println!("FAIL: the timer did not fire as armed");
        std::process::exit(1);
    }
    println!("OK");
}
