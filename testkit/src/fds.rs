//! This process's open fds, from `/proc/self/fd`. Every listing includes the directory
//! handle that reads it, consistently, so counts and sets taken here compare exactly.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// How many fds this process has open.
///
/// # Panics
///
/// If `/proc/self/fd` cannot be read.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// The numbers of this process's open fds.
///
/// # Panics
///
/// If `/proc/self/fd` cannot be read.
pub fn fd_set() -> BTreeSet<i32> {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// `fd -> target` for each of `fds` (what `/proc/self/fd/<fd>` links to, or why it cannot be
/// read: an fd closed since it was listed), joined with `sep`.
pub fn describe(fds: &BTreeSet<i32>, sep: &str) -> String {
    fds.iter()
        .map(
            |fd| match std::fs::read_link(format!("/proc/self/fd/{fd}")) {
                Ok(l) => format!("{fd} -> {}", l.display()),
                Err(e) => format!("{fd} -> ({e})"),
            },
        )
        .collect::<Vec<_>>()
        .join(sep)
}

/// Every open fd and what it points to, one per line, for a failure message.
pub fn fd_table() -> String {
    let mut out = String::new();
    for line in describe(&fd_set(), "\n").lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

/// Wait until this process has exactly `before` fds open again, and fail with `what` and the
/// fd table if it has not within 2 s. The wait is for threads of the test (or of the code
/// under test) that are still closing theirs; when all is well it returns at once.
///
/// # Panics
///
/// If the count is not back within 2 s.
#[track_caller]
pub fn assert_fds_restored(before: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let now = fd_count();
        if now == before {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "{what}: {now} fds open, {before} before: leak\n{}",
                fd_table()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sets_and_tables_agree() {
        let _g = crate::serial();
        let before = fd_count();
        let set = fd_set();
        assert_eq!(set.len(), before);
        let extra = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(fd_count(), before + 1);
        // The listing's own handle is in each set, under whichever number was free.
        assert_eq!(fd_set().len(), before + 1);
        assert!(fd_table().contains("/proc/"), "{}", fd_table());
        assert!(fd_table().lines().count() >= before);
        drop(extra);
        assert_fds_restored(before, "after closing the file");
    }
}
