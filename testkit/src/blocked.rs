//! What a thread is blocked in, read from `/proc/<pid>/task/<tid>/`: its scheduler state
//! (`stat`), the system call it is in (`syscall`) and the kernel function it waits in
//! (`wchan`).
//!
//! A test that needs a peer to be asleep on a ring (a sender blocked on a full ring, a
//! `close` waiting for the consumer, a client retrying until a listener exists) waits until it
//! sees it so, instead of sleeping for a while and assuming it: on a loaded machine the sleep
//! is sometimes too short, and on an idle one it is always too long.

use std::time::{Duration, Instant};

/// What a blocked thread waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// `epoll_wait` / `epoll_pwait` / `epoll_pwait2`: where a ring's sleeper sleeps (on its
    /// private epoll set) and where a selector waits.
    Epoll,
    /// `nanosleep` / `clock_nanosleep`: `std::thread::sleep`, as in a retry loop.
    Sleep,
}

impl Wait {
    /// The system call numbers of this wait on this architecture.
    fn syscalls(self) -> &'static [i64] {
        match self {
            Wait::Epoll => &[
                #[cfg(target_arch = "x86_64")]
                libc::SYS_epoll_wait,
                libc::SYS_epoll_pwait,
                libc::SYS_epoll_pwait2,
            ],
            Wait::Sleep => &[
                #[cfg(target_arch = "x86_64")]
                libc::SYS_nanosleep,
                libc::SYS_clock_nanosleep,
            ],
        }
    }

    /// Kernel functions (`wchan`) a thread in this wait sleeps in, for kernels that show
    /// `wchan` but not `syscall`.
    fn wchans(self) -> &'static [&'static str] {
        match self {
            Wait::Epoll => &["ep_poll", "do_epoll_wait"],
            Wait::Sleep => &["hrtimer_nanosleep", "do_nanosleep"],
        }
    }
}

/// One look at a thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadState {
    /// The state letter of `stat`: `R` running, `S` asleep (interruptible), `D`, `Z`, ...
    pub state: char,
    /// The system call it is blocked in; `None` when running, or when `syscall` cannot be
    /// read (it needs ptrace access to the thread: ours, or our children's as the same user).
    pub syscall: Option<i64>,
    /// The kernel function it waits in (`0` or empty when the kernel does not tell).
    pub wchan: String,
}

impl ThreadState {
    /// Is the thread asleep in `wait`?
    pub fn asleep_in(&self, wait: Wait) -> bool {
        self.state == 'S'
            && (self.syscall.is_some_and(|n| wait.syscalls().contains(&n))
                || wait.wchans().contains(&self.wchan.as_str()))
    }
}

/// Thread `tid` of process `pid` as it is now; `None` if it is gone (or has exited and been
/// reaped).
pub fn thread_state(pid: u32, tid: u32) -> Option<ThreadState> {
    let dir = format!("/proc/{pid}/task/{tid}");
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    // "tid (comm) S ...": the command may contain spaces and parentheses; the state follows
    // the last ')'.
    let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
    let syscall = std::fs::read_to_string(format!("{dir}/syscall"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok());
    let wchan = std::fs::read_to_string(format!("{dir}/wchan")).unwrap_or_default();
    Some(ThreadState {
        state,
        syscall,
        wchan: wchan.trim().to_owned(),
    })
}

/// The kernel's id of the calling thread (what `/proc/<pid>/task/` lists it as): send it from
/// a thread to the test that will watch it.
pub fn gettid() -> u32 {
    rustix::thread::gettid().as_raw_nonzero().get() as u32
}

/// The id of this process.
pub fn getpid() -> u32 {
    std::process::id()
}

/// Wait until thread `tid` of process `pid` is asleep in `wait` (the main thread of a
/// single-threaded child: `tid == pid`). Fails with `what` as soon as `running()` says the
/// thread's work is over (it returned or exited instead of blocking), or if it is not seen so
/// within `limit`, a hang guard: give seconds.
///
/// # Panics
///
/// As said: the thread finished first, vanished, or did not block within `limit`.
#[track_caller]
pub fn wait_until_asleep(
    pid: u32,
    tid: u32,
    wait: Wait,
    limit: Duration,
    what: &str,
    mut running: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + limit;
    let mut last = None;
    loop {
        if !running() {
            panic!("{what}: finished instead of blocking in {wait:?} (last seen: {last:?})");
        }
        let Some(now) = thread_state(pid, tid) else {
            panic!("{what}: thread {tid} of {pid} is gone (last seen: {last:?})");
        };
        if now.asleep_in(wait) {
            return;
        }
        if Instant::now() >= deadline {
            panic!("{what}: not asleep in {wait:?} after {limit:?}; last seen: {now:?}");
        }
        last = Some(now);
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_in_thread_sleep_is_seen_asleep_and_a_running_one_is_not() {
        let _g = crate::serial();
        let (tx, rx) = std::sync::mpsc::channel();
        let sleeper = std::thread::spawn(move || {
            tx.send(gettid()).unwrap();
            std::thread::sleep(Duration::from_secs(2));
        });
        let tid = rx.recv().unwrap();
        wait_until_asleep(
            getpid(),
            tid,
            Wait::Sleep,
            Duration::from_secs(10),
            "sleeper",
            || !sleeper.is_finished(),
        );
        let me = thread_state(getpid(), gettid()).unwrap();
        assert!(!me.asleep_in(Wait::Sleep), "{me:?}");
        assert!(!me.asleep_in(Wait::Epoll), "{me:?}");
        sleeper.join().unwrap();
    }

    #[test]
    fn a_thread_in_epoll_wait_is_seen_asleep_in_epoll() {
        use rustix::event::epoll;
        // Opens an fd (fds.rs counts them).
        let _g = crate::serial();
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            tx.send(gettid()).unwrap();
            let mut events = [epoll::Event {
                flags: epoll::EventFlags::empty(),
                data: epoll::EventData::new_u64(0),
            }; 1];
            let ts = rustix::event::Timespec {
                tv_sec: 2,
                tv_nsec: 0,
            };
            epoll::wait(&ep, &mut events, Some(&ts)).unwrap()
        });
        let tid = rx.recv().unwrap();
        wait_until_asleep(
            getpid(),
            tid,
            Wait::Epoll,
            Duration::from_secs(10),
            "epoll waiter",
            || !waiter.is_finished(),
        );
        assert_eq!(waiter.join().unwrap(), 0);
    }
}
