//! Test helpers: every test that waits on another thread runs under a deadline.
#![allow(dead_code, unreachable_pub)]

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::mpsc;
use std::time::Duration;

/// Run `f` on its own thread and fail the test if it has not finished within `secs`
/// (under miri, which is ~1000x slower, the deadline is stretched).
pub fn deadline<T: Send + 'static>(
    secs: u64,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let secs = if cfg!(miri) { secs * 200 } else { secs };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => resume_unwind(panic),
        Err(_) => panic!("{what}: still running after {secs} s (hang)"),
    }
}

/// Loop counts scaled down under miri.
pub fn scaled(n: usize) -> usize {
    if cfg!(miri) { (n / 100).max(4) } else { n }
}

/// A message whose every byte is a function of `seq` and its length, to check in place.
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

/// Check a message made by `fill`.
pub fn check(seq: u64, msg: &[u8], scratch: &mut Vec<u8>) {
    fill(seq, msg.len(), scratch);
    assert!(
        msg == &scratch[..],
        "message {seq} of {} bytes corrupted",
        msg.len()
    );
}

/// Message length for `seq`: mostly small, sometimes large, never above `max`.
pub fn size_for(seq: u64, max: usize) -> usize {
    let r = seq.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
    let len = match r % 16 {
        0 => r as usize % (max + 1),
        1..=3 => 0,
        _ => r as usize % 257,
    };
    len.min(max)
}

/// Child processes for two-process tests: the test binary re-runs itself with one named test
/// selected and `SHMRING_CHILD` set; fds travel over a socketpair on the child's stdin.
#[cfg(not(miri))]
pub mod child {
    use std::io::{IoSlice, IoSliceMut};
    use std::mem::MaybeUninit;
    use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use rustix::net::{
        AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
        SendAncillaryMessage, SendFlags, SocketFlags, SocketType, recvmsg, sendmsg, socketpair,
    };

    /// A spawned child, killed and reaped when dropped.
    pub struct Child {
        pub proc: std::process::Child,
        /// Our end of the socketpair on the child's stdin.
        sock: OwnedFd,
    }

    impl Child {
        /// Wait for the child to exit, killing it and failing after `secs`.
        pub fn wait(mut self, secs: u64) -> std::process::ExitStatus {
            let end = Instant::now() + Duration::from_secs(secs);
            loop {
                if let Some(status) = self.proc.try_wait().unwrap() {
                    return status;
                }
                if Instant::now() > end {
                    let _ = self.proc.kill();
                    panic!("child still running after {secs} s (hang); killed");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }

        pub fn pidfd(&self) -> OwnedFd {
            let pid = rustix::process::Pid::from_child(&self.proc);
            rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap()
        }

        /// The fds the child sent back with `send_to_parent`.
        pub fn receive_fds(&self) -> Vec<OwnedFd> {
            recv_fds(self.sock.as_fd())
        }
    }

    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.proc.kill();
            let _ = self.proc.wait();
        }
    }

    /// The role this process was started with, if it is a child.
    pub fn role() -> Option<String> {
        std::env::var("SHMRING_CHILD").ok()
    }

    /// Start `test` of this binary in a child with `role` and `fds`, stdout piped.
    pub fn spawn(test: &str, role: &str, fds: &[BorrowedFd<'_>]) -> Child {
        let (ours, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let proc = Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env("SHMRING_CHILD", role)
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        send_fds(ours.as_fd(), fds);
        Child { proc, sock: ours }
    }

    /// In a child: the fds the parent sent over stdin.
    pub fn receive_fds() -> Vec<OwnedFd> {
        recv_fds(std::io::stdin().as_fd())
    }

    /// In a child: send fds back to the parent over stdin (a socketpair end).
    pub fn send_to_parent(fds: &[BorrowedFd<'_>]) {
        send_fds(std::io::stdin().as_fd(), fds)
    }

    fn send_fds(sock: BorrowedFd<'_>, fds: &[BorrowedFd<'_>]) {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
        sendmsg(
            sock,
            &[IoSlice::new(&[fds.len() as u8])],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .unwrap();
    }

    fn recv_fds(sock: BorrowedFd<'_>) -> Vec<OwnedFd> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut byte = [0u8];
        recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut byte)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .unwrap();
        let mut fds = Vec::new();
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(iter) = msg {
                fds.extend(iter);
            }
        }
        assert_eq!(fds.len(), byte[0] as usize);
        fds
    }

    /// Read the child's stdout until it prints the line `want` (libtest prints its own lines
    /// too). Fails if the child exits first; a hung child is caught by the caller's deadline.
    pub fn expect_line(child: &mut Child, want: &str) {
        use std::io::BufRead;
        let out = child.proc.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(out).lines();
        loop {
            match lines.next() {
                // libtest prints "test name ... " before the test runs, on the same line.
                Some(Ok(line)) if line.trim().ends_with(want) => return,
                Some(Ok(_)) => continue,
                other => panic!("child ended before printing {want:?}: {other:?}"),
            }
        }
    }
}
