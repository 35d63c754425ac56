//! The test binary re-run as a peer process: a suite's test starts a copy of its own binary
//! with one entry selected (an ignored `child` test dispatching on an environment variable,
//! or a test that does nothing unless that variable is set), waits for it with a deadline,
//! and kills it when done or when the test fails.

use std::io::Read;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::{Pid, PidfdFlags};

/// A command that re-runs this test binary with only the test named `entry` selected, on one
/// thread, its output not captured by libtest (so the child's `println!`s reach its stdout).
/// `ignored`: the entry is an `#[ignore]`d test (`--ignored` selects it).
///
/// # Panics
///
/// If the path of this binary cannot be found.
pub fn rerun(entry: &str, ignored: bool) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    if ignored {
        cmd.arg("--ignored");
    }
    cmd.args([entry, "--exact", "--nocapture", "--test-threads=1"]);
    cmd
}

/// Wait at most `limit` for `child` to exit and collect its output. If it is still running
/// then, kill it and fail with what it wrote.
///
/// # Panics
///
/// If the child overstays `limit`, or cannot be waited for.
#[track_caller]
pub fn finish(mut child: Child, limit: Duration, what: &str) -> Output {
    if wait_exit(&mut child, limit).is_none() {
        let _ = child.kill();
        let out = child.wait_with_output().expect("wait for the killed child");
        panic!(
            "{what}: still running after {limit:?}: killed.\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // It has exited: its pipes reach EOF as soon as they are drained.
    child.wait_with_output().expect("wait for the child")
}

/// Fail with `what`, the status and both outputs unless the child exited successfully.
///
/// # Panics
///
/// As said.
#[track_caller]
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kills (SIGKILL) and reaps the child when dropped, so that a failing test leaves no process
/// behind. Take the child out (`.0.take()`) to wait for it yourself.
#[derive(Debug)]
pub struct Reaper(pub Option<Child>);

impl Reaper {
    /// Guard `child`.
    pub fn new(child: Child) -> Reaper {
        Reaper(Some(child))
    }

    /// The child, for its pipes and its pid.
    ///
    /// # Panics
    ///
    /// If it was taken out.
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("the child was taken out")
    }

    /// Take the child out, to [`finish`] it.
    ///
    /// # Panics
    ///
    /// If it was taken out already.
    pub fn take(&mut self) -> Child {
        self.0.take().expect("the child was taken out")
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The next line of the child's stdout that carries the mark `@@ `, without the mark and what
/// precedes it (libtest prints `test child ... ` on the same line first, and lines of its
/// own); empty at EOF. The caller's deadline catches a child that never prints.
///
/// # Panics
///
/// If the child's stdout is not piped, or cannot be read.
pub fn marked_line(child: &mut Child) -> String {
    let out = child.stdout.as_mut().expect("piped stdout");
    loop {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match out.read(&mut byte).expect("read the child's stdout") {
                0 => return String::new(),
                _ if byte[0] == b'\n' => break,
                _ => line.push(byte[0]),
            }
        }
        let line = String::from_utf8_lossy(&line);
        if let Some(i) = line.find("@@ ") {
            return line[i + 3..].to_owned();
        }
    }
}

/// Wait until `child` has exited (without reaping it), at most `limit`: `Some(())` once it
/// has. Sleeps on a pidfd (readable when the process exits); polls `waitid(WNOWAIT)` where
/// pidfds are missing.
///
/// # Panics
///
/// If `poll` fails otherwise than with `EINTR`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<()> {
    let pid = Pid::from_child(child);
    let deadline = Instant::now() + limit;
    if let Ok(pidfd) = rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ts = Timespec::try_from(left).expect("timespec");
            let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
            match poll(&mut fds, Some(&ts)) {
                Ok(0) => return None,
                Ok(_) => return Some(()),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => panic!("poll(pidfd): {e}"),
            }
        }
    }
    loop {
        if exited(pid) {
            return Some(());
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Has `pid` (our child) exited? Without reaping it.
fn exited(pid: Pid) -> bool {
    use rustix::process::{WaitId, WaitIdOptions, waitid};
    let opts = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    matches!(waitid(WaitId::Pid(pid), opts), Ok(Some(_)))
}
