//! The in-process stand-in for `notify.rs` under miri (no fds) and loom (a sleeping side is a
//! thread blocked on a condition variable, so a lost wake-up is a deadlock the model reports).

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use crate::sync::{Arc, Condvar, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woken {
    Signalled,
    TimedOut,
    #[allow(dead_code)]
    PeerGone,
}

#[derive(Debug)]
struct Inner {
    count: Mutex<u64>,
    cv: Condvar,
}

/// What this side rings to wake its peer (in-process stand-in).
#[derive(Debug)]
pub struct Bell {
    inner: Arc<Inner>,
}

impl Bell {
    /// A new bell.
    ///
    /// # Errors
    ///
    /// Never, in this stand-in.
    pub fn new() -> io::Result<Bell> {
        Ok(Bell {
            inner: Arc::new(Inner {
                count: Mutex::new(0),
                cv: Condvar::new(),
            }),
        })
    }

    pub(crate) fn ring(&self) {
        let mut c = self.inner.count.lock().unwrap();
        *c += 1;
        self.inner.cv.notify_one();
    }
}

#[derive(Debug)]
pub(crate) struct Wake {
    inner: Arc<Inner>,
}

impl Wake {
    pub(crate) fn local(bell: &Bell) -> io::Result<Wake> {
        Ok(Wake {
            inner: bell.inner.clone(),
        })
    }

    #[allow(dead_code)]
    pub(crate) fn watch(
        &mut self,
        _peer: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    ) -> io::Result<()> {
        Ok(())
    }

    pub(crate) fn wait(&self, timeout: Duration) -> io::Result<Woken> {
        let mut c = self.inner.count.lock().unwrap();
        if *c == 0 {
            // Under loom the sleep has no timeout: a missed signal must show as a deadlock.
            #[cfg(loom)]
            {
                let _ = timeout;
                c = self.inner.cv.wait(c).unwrap();
            }
            #[cfg(not(loom))]
            {
                c = self.inner.cv.wait_timeout(c, timeout).unwrap().0;
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

    pub(crate) fn reset(&self) {
        *self.inner.count.lock().unwrap() = 0;
    }
}

pub(crate) fn peer_gone(_peer: BorrowedFd<'_>) -> bool {
    false
}
