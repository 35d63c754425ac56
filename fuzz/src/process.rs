//! Real peer processes for the fault tests that need one (`tests/kill.rs`, `tests/soak.rs`):
//! the test binary re-executed as a child ([`Peer`]), what a test reads about a process from
//! `/proc` ([`fd_count`], [`status_kib`], [`children`]), a seeded generator ([`Rng`]) and the
//! sequence-numbered, self-checking message streams both tests send ([`Stream`]).
//!
//! A test file that uses [`Peer`] has one ignored entry named `child` that calls
//! [`child_role`] and dispatches on the role; every other test of the file may spawn it.

use std::io::Read;
use std::process::{Child, ExitStatus, Output, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal};
use shmpipe_testkit::child::wait_exit;

use crate::fill;

/// The role a re-executed child plays (its presence makes a process a child).
pub const ROLE_VAR: &str = "SHMPIPE_CHILD_ROLE";
/// The pid of the test process, so a child can tell that it has been orphaned.
const PARENT_VAR: &str = "SHMPIPE_CHILD_PARENT";

/// How [`Peer::spawn`] connects a child's standard streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipes {
    /// stdin and stdout to `/dev/null`, stderr piped (read on failure).
    StderrOnly,
    /// stdin from `/dev/null`, stdout and stderr piped: the parent reads the child's report
    /// from stdout once it has exited ([`Peer::finish`]).
    Report,
}

/// A child process running this test binary's ignored `child` entry. Dropping it kills
/// (SIGKILL) and reaps the child if it is still there, so a failing test leaves no process
/// and no zombie behind.
///
/// The child arms `PR_SET_PDEATHSIG` (see [`child_role`]): it is also killed if the thread
/// that spawned it dies, so spawn from a thread that outlives the child (a test's own thread
/// or its [`deadline`](crate::deadline) worker, which stays alive even when it hangs).
#[derive(Debug)]
pub struct Peer {
    child: Option<Child>,
    what: String,
}

impl Peer {
    /// Start `role`, with `env` added to the environment.
    ///
    /// # Panics
    ///
    /// If the binary cannot be spawned.
    pub fn spawn(role: &str, env: &[(&str, String)], pipes: Pipes) -> Peer {
        let mut cmd = shmpipe_testkit::child::rerun("child", true);
        cmd.env(ROLE_VAR, role)
            .env(PARENT_VAR, std::process::id().to_string())
            .stderr(Stdio::piped());
        match pipes {
            Pipes::StderrOnly => cmd.stdin(Stdio::null()).stdout(Stdio::null()),
            Pipes::Report => cmd.stdin(Stdio::null()).stdout(Stdio::piped()),
        };
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn the child process");
        Peer {
            what: format!("child {role} (pid {})", child.id()),
            child: Some(child),
        }
    }

    /// The child, for its pipes.
    ///
    /// # Panics
    ///
    /// If it has been reaped already.
    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("the child was reaped")
    }

    /// Its process id. Valid for signals until it is reaped (a zombie keeps its pid).
    ///
    /// # Panics
    ///
    /// If it has been reaped already.
    pub fn pid(&self) -> Pid {
        Pid::from_child(self.child.as_ref().expect("the child was reaped"))
    }

    /// Send SIGKILL (the child is not reaped; see [`Peer::reap`]).
    ///
    /// # Panics
    ///
    /// If `kill(2)` fails: an unreaped child always exists.
    pub fn kill(&self) {
        rustix::process::kill_process(self.pid(), Signal::KILL).expect("kill(SIGKILL)");
    }

    /// Wait at most `limit` for the child to exit and reap it: its exit status and what it
    /// wrote to stderr, or `None` if it is still running (it is then left as it is).
    ///
    /// # Panics
    ///
    /// If `waitpid` fails, or the child was reaped already.
    pub fn reap(&mut self, limit: Duration) -> Option<(ExitStatus, String)> {
        let child = self.child.as_mut().expect("the child was reaped");
        wait_exit(child, limit)?;
        let mut child = self.child.take().expect("present");
        let status = child.wait().expect("waitpid");
        // It has exited: its stderr is at EOF once drained (nothing else holds the pipe).
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        Some((status, err))
    }

    /// After a failure on our side: give the child `grace` to exit by itself (it may be
    /// reporting a failure of its own), then kill it; its exit status and stderr, for the
    /// failure message.
    pub fn stop(mut self, grace: Duration) -> String {
        let child = self.child.as_mut().expect("the child was reaped");
        if wait_exit(child, grace).is_none() {
            let _ = child.kill();
            if wait_exit(child, Duration::from_secs(5)).is_none() {
                // `Drop` tries once more and leaves it.
                return format!("{}: still there 5 s after SIGKILL", self.what);
            }
        }
        let out = self.collect();
        format!(
            "{}: {}; stderr:\n{}",
            self.what,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Wait at most `limit` for the child to exit by itself, then collect its output. If it
    /// is still running then, kill it and panic with what it wrote.
    ///
    /// # Panics
    ///
    /// If the child overstays `limit`.
    pub fn finish(mut self, limit: Duration) -> Output {
        let child = self.child.as_mut().expect("the child was reaped");
        if wait_exit(child, limit).is_none() {
            let what = format!("{}: still running after {limit:?}", self.what);
            panic!("{what}: killed.\n{}", self.stop(Duration::ZERO));
        }
        self.collect()
    }

    /// Reap the child, which has exited, and read what is left in its pipes.
    fn collect(&mut self) -> Output {
        let child = self.child.take().expect("the child was reaped");
        // Exited: the pipes reach EOF as soon as they are drained.
        child.wait_with_output().expect("wait")
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            if wait_exit(&mut child, Duration::from_secs(5)).is_some() {
                let _ = child.wait();
            } else {
                eprintln!("{}: not dead 5 s after SIGKILL; left unreaped", self.what);
            }
        }
    }
}

/// In a re-executed child: its role, after arming `PR_SET_PDEATHSIG` (SIGKILL when the
/// spawning thread dies) and checking that the test process is still its parent (if it died
/// before the signal was armed, the child exits at once). `None` in the test process itself.
pub fn child_role() -> Option<String> {
    let role = std::env::var(ROLE_VAR).ok()?;
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL)).expect("prctl");
    let parent = std::env::var(PARENT_VAR)
        .ok()
        .and_then(|p| p.parse::<i32>().ok());
    let ppid = rustix::process::getppid().map(Pid::as_raw_nonzero);
    if parent != ppid.map(|p| p.get()) {
        eprintln!("child {role}: orphaned before it started; exiting");
        std::process::exit(3);
    }
    Some(role)
}

/// Read an environment variable as a number; `default` if unset.
///
/// # Panics
///
/// If it is set but not a number.
pub fn env_u64(var: &str, default: u64) -> u64 {
    match std::env::var(var) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{var}={v:?} is not a number")),
        Err(_) => default,
    }
}

pub use shmpipe_testkit::TempDir;
pub use shmpipe_testkit::fds::{fd_count, fd_table};

/// Mappings of memfds in this process (`/proc/self/maps` lines naming `/memfd:`): every ring
/// a process has mapped and not yet unmapped. A leaked mapping holds no fd, so fd counts miss
/// it.
pub fn memfd_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("/proc/self/maps")
        .lines()
        .filter(|l| l.contains("/memfd:"))
        .count()
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, ...); `pid` `None` is this
/// process. `None` if the process or the field is missing.
pub fn status_kib(pid: Option<u32>, field: &str) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// The pids of this process's children, reaped or not (`/proc/self/task/*/children`); `None`
/// if the kernel does not provide the file.
pub fn children() -> Option<Vec<u32>> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path().join("children");
        let mut text = String::new();
        std::fs::File::open(path)
            .ok()?
            .read_to_string(&mut text)
            .ok()?;
        pids.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    Some(pids)
}

/// A small seeded generator (SplitMix64): the same seed gives the same choices.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// One of `items`, uniformly.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// SplitMix64's finaliser: a bijective scramble of 64 bits.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of a run: the variable `var` if set (to replay a failure), else the clock.
pub fn seed(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock");
            mix(t.as_nanos() as u64 ^ u64::from(std::process::id()))
        })
}

/// One direction of a test's traffic: message `seq` of stream `id` has a length and bytes that
/// are functions of (`id`, `seq`, the ring's maximum message) alone, so the receiver knows
/// what each message must be, and a lost, repeated, reordered or damaged message shows at
/// the first message it touches (or a message of zero length later).
///
/// Lengths: 1 in 32 is the ring's maximum, 1 in 32 empty, the rest 1..=64 (half) or up to
/// 4 KiB (a third), or anything up to the maximum.
#[derive(Debug, Clone)]
pub struct Stream {
    id: u64,
    /// The next sequence number to send or expect.
    pub next: u64,
    /// Payload bytes sent or verified so far.
    pub bytes: u64,
    scratch: Vec<u8>,
}

impl Stream {
    /// Stream `id`, at sequence number 0.
    pub fn new(id: u64) -> Stream {
        Stream {
            id,
            next: 0,
            bytes: 0,
            scratch: Vec::new(),
        }
    }

    /// The length of message `seq` on a ring whose maximum message is `max`.
    pub fn len_of(&self, seq: u64, max: usize) -> usize {
        let h = mix(self.id.rotate_left(32) ^ mix(seq));
        let r = h >> 59; // 0..32
        let v = (h & 0xffff_ffff) as usize;
        match r {
            0 => max,
            1 => 0,
            2..=17 => 1 + v % max.clamp(1, 64),
            18..=27 => v % (max.min(4096) + 1),
            _ => v % (max + 1),
        }
        .min(max)
    }

    fn key(&self, seq: u64) -> u64 {
        mix(self.id ^ 0x5EED).wrapping_add(seq)
    }

    /// Write message `self.next` into `buf` and advance: the caller sends `buf`.
    pub fn produce(&mut self, max: usize, buf: &mut Vec<u8>) {
        let len = self.len_of(self.next, max);
        fill(self.key(self.next), len, buf);
        self.next += 1;
        self.bytes += len as u64;
    }

    /// Check that `msg` is message `self.next`, and advance.
    ///
    /// # Errors
    ///
    /// What it is instead: a repeat or a later message (by how far), or damaged bytes.
    pub fn verify(&mut self, msg: &[u8], max: usize) -> Result<(), String> {
        let seq = self.next;
        if self.is(seq, msg, max) {
            self.next += 1;
            self.bytes += msg.len() as u64;
            return Ok(());
        }
        let near = (seq.saturating_sub(64)..seq + 64).find(|&s| s != seq && self.is(s, msg, max));
        let want = self.len_of(seq, max);
        Err(match near {
            Some(s) if s < seq => format!(
                "stream {}: expected message {seq}, got a repeat of message {s}",
                self.id
            ),
            Some(s) => format!(
                "stream {}: expected message {seq}, got message {s}: {} lost",
                self.id,
                s - seq
            ),
            None if msg.len() != want => format!(
                "stream {}: message {seq} is {} bytes, expected {want}",
                self.id,
                msg.len()
            ),
            None => {
                fill(self.key(seq), want, &mut self.scratch);
                let at = msg.iter().zip(&self.scratch).position(|(a, b)| a != b);
                format!(
                    "stream {}: message {seq} ({want} bytes) corrupted from byte {at:?}",
                    self.id
                )
            }
        })
    }

    fn is(&mut self, seq: u64, msg: &[u8], max: usize) -> bool {
        msg.len() == self.len_of(seq, max) && {
            fill(self.key(seq), msg.len(), &mut self.scratch);
            msg == &self.scratch[..]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_verifies_itself_and_names_what_went_wrong() {
        let max = 1000;
        let (mut tx, mut rx) = (Stream::new(7), Stream::new(7));
        let mut msgs = Vec::new();
        for _ in 0..300 {
            let mut b = Vec::new();
            tx.produce(max, &mut b);
            msgs.push(b);
        }
        assert!(msgs.iter().any(|m| m.len() == max) && msgs.iter().any(Vec::is_empty));
        for m in &msgs[..100] {
            rx.verify(m, max).unwrap();
        }
        let e = rx.clone().verify(&msgs[103], max).unwrap_err();
        assert!(e.contains("got message 103: 3 lost"), "{e}");
        let e = rx.clone().verify(&msgs[98], max).unwrap_err();
        assert!(e.contains("repeat of message 98"), "{e}");
        let mut m = msgs[100].clone();
        if m.is_empty() {
            m.push(0);
        } else {
            let mid = m.len() / 2;
            m[mid] ^= 1;
        }
        assert!(rx.clone().verify(&m, max).is_err());
        assert_eq!(rx.bytes, msgs[..100].iter().map(|m| m.len() as u64).sum());
    }

    #[test]
    fn status_fields_and_fds_are_readable() {
        assert!(status_kib(None, "VmRSS").unwrap() > 0);
        assert!(status_kib(None, "VmHWM").unwrap() > 0);
        let before = memfd_mappings();
        let (tx, rx) = shmpipe_ring::channel(&shmpipe_ring::Config::new()).unwrap();
        assert_eq!(memfd_mappings(), before + 1);
        drop((tx, rx));
        assert_eq!(memfd_mappings(), before);
        assert!(fd_count() >= 3);
        assert!(children().is_some());
    }
}
