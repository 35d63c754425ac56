//! Test helpers: every test that waits on another thread runs under a deadline
//! (`shmpipe_testkit::deadline`, stretched under miri); messages are made and checked with the
//! testkit's `fill`.
#![allow(dead_code, unreachable_pub, unused_imports)]

pub use shmpipe_testkit::{deadline, fill};

/// Loop counts scaled down under miri.
pub fn scaled(n: usize) -> usize {
    if cfg!(miri) { (n / 100).max(4) } else { n }
}

/// Check a message made by `fill`.
#[track_caller]
pub fn check(seq: u64, msg: &[u8], scratch: &mut Vec<u8>) {
    assert!(
        shmpipe_testkit::is_message(seq, msg, scratch),
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
/// selected and `SHMPIPE_CHILD` set; fds travel over a socketpair on the child's stdin.
#[cfg(not(miri))]
pub mod child {
    use std::io::{IoSlice, IoSliceMut};
    use std::mem::MaybeUninit;
    use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
    use std::process::Stdio;
    use std::time::Duration;

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
            if shmpipe_testkit::child::wait_exit(&mut self.proc, Duration::from_secs(secs))
                .is_none()
            {
                let _ = self.proc.kill();
                panic!("child still running after {secs} s (hang); killed");
            }
            self.proc.wait().unwrap()
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
        std::env::var("SHMPIPE_CHILD").ok()
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
        let proc = shmpipe_testkit::child::rerun(test, false)
            .env("SHMPIPE_CHILD", role)
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
