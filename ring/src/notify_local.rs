//! The in-process stand-in for `notify.rs` under miri (no eventfd) and loom (models a
//! sleeping side as a thread blocked on a condition variable, so a lost wake-up is a
//! deadlock the model reports).

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use crate::sync::{Condvar, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woken {
    Signalled,
    TimedOut,
    #[allow(dead_code)]
    PeerGone,
}

#[derive(Debug)]
pub(crate) struct Notifier {
    count: Mutex<u64>,
    cv: Condvar,
}

impl Notifier {
    pub(crate) fn new() -> io::Result<Notifier> {
        Ok(Notifier {
            count: Mutex::new(0),
            cv: Condvar::new(),
        })
    }

    pub(crate) fn signal(&self) -> io::Result<()> {
        let mut c = self.count.lock().unwrap();
        *c += 1;
        self.cv.notify_one();
        Ok(())
    }

    pub(crate) fn wait(
        &self,
        timeout: Duration,
        _peer: Option<BorrowedFd<'_>>,
    ) -> io::Result<Woken> {
        let mut c = self.count.lock().unwrap();
        if *c == 0 {
            // Under loom the sleep has no timeout: a missed signal must show as a deadlock.
            #[cfg(loom)]
            {
                let _ = timeout;
                c = self.cv.wait(c).unwrap();
            }
            #[cfg(not(loom))]
            {
                c = self.cv.wait_timeout(c, timeout).unwrap().0;
            }
        }
        let woken = if *c > 0 {
            Woken::Signalled
        } else {
            Woken::TimedOut
        };
        *c = 0;
        Ok(woken)
    }
}

pub(crate) fn peer_gone(_peer: BorrowedFd<'_>) -> bool {
    false
}
