//! Plumbing for the cross-process tests: temp dirs, re-executed children, deadlines (the
//! shared parts from `shmpipe-testkit`), and the byte streams both sides check.

#![allow(dead_code, unreachable_pub, missing_docs, unused_imports)]

use std::process::{Child, Stdio};

pub use shmpipe_testkit::blocked::{Wait, getpid, gettid, wait_until_asleep};
pub use shmpipe_testkit::child::{Reaper, finish, marked_line};
pub use shmpipe_testkit::fds::fd_count;
pub use shmpipe_testkit::{TempDir, serial, skip};

/// Re-run this test binary's ignored `child` entry as `role`.
pub fn spawn_child(role: &str, env: &[(&str, String)]) -> Child {
    let mut cmd = shmpipe_testkit::child::rerun("child", true);
    cmd.env("SHMPIPE_ROLE", role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn child")
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
