//! What shmpipe's test suites share, so that each suite does not keep a copy:
//!
//! - [`fds`]: this process's open fds (`/proc/self/fd`): counts, sets, a printable table, and
//!   the wait for a count to come back after a test;
//! - [`TempDir`]: a private directory for sockets, removed on drop;
//! - [`child`]: the test binary re-run as a peer process, waited for with a deadline and
//!   killed when the test is done or fails;
//! - [`blocked`]: what a thread or a process is blocked in, from `/proc`, so that a test can
//!   wait until a peer is asleep on a ring instead of sleeping and hoping it is;
//! - [`deadline`]: run a closure on its own thread and fail if it hangs;
//! - [`fill`] / [`is_message`]: self-checking message payloads;
//! - [`skip`]: a test that cannot run here skips in a local run and fails in CI;
//! - [`serial`]: one lock per test binary for the tests that count fds or time kills.
//!
//! It depends on no shmpipe crate (see Cargo.toml), and has no `unsafe`.

#![forbid(unsafe_code)]

pub mod blocked;
pub mod child;
pub mod fds;

use std::io::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, mpsc};
use std::time::Duration;

static SERIAL: Mutex<()> = Mutex::new(());

/// Tests of one binary that count this process's fds, or time or kill processes, take this
/// lock so that they run one at a time (a failed test's poisoned lock is taken anyway).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// True when the environment variable `CI` is set to anything but the empty string, as
/// `.ci/run` is run.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// For a test that cannot do its work here (not root, a tool or a build product missing):
/// in a local run, print `SKIPPED: <reason>` (uncaptured) and return, so that the caller returns too;
/// with `CI` set ([`in_ci`]), fail with the reason, because a test that passes having done
/// nothing must not pass in CI.
///
/// # Panics
///
/// When `CI` is set.
#[track_caller]
pub fn skip(reason: &str) {
    if in_ci() {
        panic!("cannot run: {reason} (CI is set: a test that cannot run fails)");
    }
    // Straight to the stderr stream, not through `eprintln!`, which libtest captures and
    // shows only for a failing test: a skip must be seen in a passing run.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {reason} (with CI set this fails)"
    );
}

/// Run `f` on its own thread and fail (panic) if it has not finished within `secs` (under
/// miri, about a thousand times slower, the limit is stretched 200 times). A panic inside `f`
/// is raised again here, so the test (or proptest, which shrinks it) sees it.
///
/// The thread of a hung `f` is left behind: the test fails, and the test binary's exit ends
/// it.
///
/// # Panics
///
/// If `f` panics or overstays its limit.
pub fn deadline<T: Send + 'static>(
    secs: u64,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let secs = if cfg!(miri) { secs * 200 } else { secs };
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(format!("deadline: {what}"))
        .spawn(move || {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
        })
        .expect("spawn the deadline thread");
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => resume_unwind(panic),
        Err(_) => panic!("{what}: still running after {secs} s (hang)"),
    }
}

/// Fill `out` with message `seq` of `len` bytes: every byte is a function of `seq` and its
/// position (xorshift64 seeded from `seq`), and `fill(seq, k)` is a prefix of `fill(seq, n)`
/// for `k <= n`.
pub fn fill(seq: u64, len: usize, out: &mut Vec<u8>) {
    out.clear();
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let take = (len - out.len()).min(8);
        out.extend_from_slice(&x.to_le_bytes()[..take]);
    }
}

/// Message `seq` of `len` bytes, as [`fill`] makes it.
pub fn message(seq: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    fill(seq, len, &mut v);
    v
}

/// Is `msg` exactly message `seq` of its length, as [`fill`] makes it? (`scratch` is reused
/// from call to call.)
pub fn is_message(seq: u64, msg: &[u8], scratch: &mut Vec<u8>) -> bool {
    fill(seq, msg.len(), scratch);
    msg == &scratch[..]
}

/// A fresh private directory (mode 0700) under the temporary directory, for a test's sockets;
/// removed with its contents on drop.
#[derive(Debug)]
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    /// A directory named `shmpipe-test-…`.
    ///
    /// # Panics
    ///
    /// If it cannot be created.
    pub fn new() -> TempDir {
        TempDir::tagged("test")
    }

    /// A directory named `shmpipe-<tag>-…`, so that one left behind says which suite made
    /// it.
    ///
    /// # Panics
    ///
    /// If it cannot be created.
    pub fn tagged(tag: &str) -> TempDir {
        TempDir(
            tempfile::Builder::new()
                .prefix(&format!("shmpipe-{tag}-"))
                .tempdir()
                .expect("create a temp dir"),
        )
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// The path of the socket a test binds in it (`<dir>/s`: short, well under the 108 bytes
    /// of `sun_path`).
    pub fn sock(&self) -> PathBuf {
        self.path().join("s")
    }
}

impl Default for TempDir {
    fn default() -> TempDir {
        TempDir::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_is_a_prefix_family_and_is_message_checks_it() {
        let mut scratch = Vec::new();
        let long = message(7, 100);
        for k in 0..=100 {
            assert!(is_message(7, &long[..k], &mut scratch), "prefix {k}");
        }
        assert!(!is_message(8, &long, &mut scratch));
        let mut bad = long.clone();
        bad[50] ^= 1;
        assert!(!is_message(7, &bad, &mut scratch));
    }

    #[test]
    fn a_temp_dir_is_removed_on_drop() {
        // Opens fds (fds.rs counts them).
        let _g = serial();
        let dir = TempDir::tagged("testkit");
        let path = dir.path().to_owned();
        assert!(path.is_dir());
        assert!(dir.sock().starts_with(&path));
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn deadline_returns_the_value_and_reraises_a_panic() {
        assert_eq!(deadline(10, "value", || 42), 42);
        let r = catch_unwind(|| deadline(10, "panics", || panic!("inner")));
        assert!(r.is_err());
    }
}
