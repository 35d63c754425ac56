//! Plumbing for the cross-process tests: temp dirs, re-executed children, deadlines.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

/// Tests of one binary that count fds or time kills run one at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

#[derive(Debug)]
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new() -> TempDir {
        TempDir(
            tempfile::Builder::new()
                .prefix("shmring-x-")
                .tempdir()
                .expect("create a temp dir"),
        )
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    pub fn sock(&self) -> PathBuf {
        self.path().join("s")
    }
}

/// Re-run this test binary's ignored `child` entry as `role`.
pub fn spawn_child(role: &str, env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args([
        "--ignored",
        "--exact",
        "child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("SHMRING_ROLE", role)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn child")
}

/// The next line the child marked with `@@ ` (libtest prints its own lines too); empty at EOF.
pub fn marked_line(child: &mut Child) -> String {
    let out = child.stdout.as_mut().expect("piped stdout");
    loop {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match out.read(&mut byte).expect("read child stdout") {
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

/// Wait for `child` at most `limit`; kill it and fail if it is still running.
pub fn finish(mut child: Child, limit: Duration, what: &str) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{what}: still running after {limit:?}: killed.\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills the child when dropped, so a failing test leaves nothing running.
pub struct Reaper(pub Option<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A deterministic byte stream cut into messages of varying sizes (xorshift64*).
pub struct Pattern {
    state: u64,
    max: usize,
}

impl Pattern {
    pub fn new(seed: u64, max: usize) -> Pattern {
        Pattern {
            state: seed | 1,
            max,
        }
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The next message, written into `buf`.
    pub fn fill(&mut self, buf: &mut Vec<u8>) {
        let len = 1 + (self.next_u64() as usize % self.max);
        buf.clear();
        while buf.len() < len {
            buf.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        buf.truncate(len);
    }
}

/// FNV-1a over a stream, for checksums both sides print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fnv(pub u64);

impl Fnv {
    pub fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}
