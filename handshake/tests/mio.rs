//! mio (feature `mio`; `cargo test -p shmpipe-handshake --features mio`): a `mio::Poll` loop
//! serving several clients, with the listener, every receiver and every sender registered as
//! `mio::event::Source`s and driven by the readiness protocol alone. Every wait has a deadline.

mod common;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use common::{TempDir, serial};
use mio::{Events, Interest, Poll, Token};
use shmpipe_handshake::{Listener, Options, RECHECK, Receiver, Sender, connect};
use shmpipe_ring::{RecvError, TryRecvError, TrySendError};

const LISTENER: Token = Token(usize::MAX);

fn small() -> Options {
    Options::new()
        .capacity(1 << 12)
        .handshake_timeout(Duration::from_secs(5))
}

fn message(client: u64, i: u64) -> Vec<u8> {
    let len = 16 + ((client * 131 + i * 7919) % 700) as usize;
    let mut m = client.to_le_bytes().to_vec();
    m.extend_from_slice(&i.to_le_bytes());
    m.extend((16..len).map(|j| (i as usize * 31 + j) as u8));
    m
}

struct Client {
    tx: Sender,
    rx: Receiver,
    /// Received, not yet echoed.
    queue: VecDeque<Vec<u8>>,
    ended: bool,
}

impl Client {
    /// Move what can be moved, then arm whatever we now wait on. Returns whether the client
    /// is finished (closed, and everything echoed).
    fn service(&mut self) -> bool {
        loop {
            let mut progressed = false;
            if !self.ended && self.queue.len() < 64 {
                let q = &mut self.queue;
                match self.rx.try_drain(64, |m| q.push_back(m.to_vec())) {
                    Ok(_) => progressed = true,
                    Err(TryRecvError::Empty) => {}
                    Err(TryRecvError::Failed(RecvError::Closed)) => self.ended = true,
                    Err(TryRecvError::Failed(e)) => panic!("{e}"),
                }
            }
            while let Some(m) = self.queue.front() {
                match self.tx.try_send(m) {
                    Ok(()) => {
                        self.queue.pop_front();
                        progressed = true;
                    }
                    Err(TrySendError::Full) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            if progressed {
                continue;
            }
            // Nothing moved: arm what we wait on before going back to `poll`.
            let mut again = false;
            if !self.ended && self.queue.len() < 64 {
                again |= self.rx.arm().unwrap();
            }
            if let Some(m) = self.queue.front() {
                again |= self.tx.arm(m.len()).unwrap();
            }
            if !again {
                return self.ended && self.queue.is_empty();
            }
        }
    }
}

#[test]
fn a_mio_poll_loop_serves_several_clients() {
    let _g = serial();
    const CLIENTS: u64 = 4;
    const N: u64 = 3000;
    let dir = TempDir::new();
    let mut listener = Listener::bind(dir.sock(), &small()).unwrap();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let path = dir.sock();
            std::thread::spawn(move || {
                let conn = connect(&path, &small()).unwrap();
                let (mut tx, mut rx) = conn.split();
                let reader = std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    for i in 0..N {
                        if i % 1000 == 0 {
                            // Slow now and then: the server's replies fill the ring.
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        rx.recv_timeout(&mut buf, Duration::from_secs(20)).unwrap();
                        assert_eq!(buf, message(c, i), "client {c} reply {i}");
                    }
                });
                for i in 0..N {
                    tx.send_timeout(&message(c, i), Duration::from_secs(20))
                        .unwrap();
                }
                reader.join().unwrap();
                tx.close(Duration::from_secs(10)).unwrap();
            })
        })
        .collect();

    let mut poll = Poll::new().unwrap();
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .unwrap();
    let mut events = Events::with_capacity(64);
    let mut served: HashMap<usize, Client> = HashMap::new();
    let (mut next, mut finished, mut woken, mut rechecks) = (0usize, 0, 0u64, 0u64);
    let start = Instant::now();
    while finished < CLIENTS {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "mio server deadline"
        );
        // The protocol: wait at most RECHECK, and look at everything again after a timeout.
        poll.poll(&mut events, Some(RECHECK)).unwrap();
        let mut due: Vec<usize> = Vec::new();
        if events.is_empty() {
            rechecks += 1;
            due.extend(served.keys());
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                // Edge-triggered: until Ok(None).
                loop {
                    match listener.try_accept() {
                        Ok(Some(conn)) => {
                            let (mut tx, mut rx) = conn.split();
                            let id = next;
                            next += 1;
                            let reg = poll.registry();
                            reg.register(&mut rx, Token(2 * id), Interest::READABLE)
                                .unwrap();
                            reg.register(&mut tx, Token(2 * id + 1), Interest::READABLE)
                                .unwrap();
                            served.insert(
                                id,
                                Client {
                                    tx,
                                    rx,
                                    queue: VecDeque::new(),
                                    ended: false,
                                },
                            );
                            due.push(id);
                        }
                        Ok(None) => break,
                        Err(e) => panic!("{e}"),
                    }
                }
            } else {
                woken += 1;
                due.push(ev.token().0 / 2);
            }
        }
        due.sort_unstable();
        due.dedup();
        for id in due {
            let Some(c) = served.get_mut(&id) else {
                continue;
            };
            if c.service() {
                let mut c = served.remove(&id).unwrap();
                poll.registry().deregister(&mut c.rx).unwrap();
                poll.registry().deregister(&mut c.tx).unwrap();
                finished += 1;
            }
        }
    }
    for c in clients {
        c.join().unwrap();
    }
    // Progress came from the handles' events, not from the re-check timer.
    assert!(
        woken > 10 * rechecks,
        "{woken} events, {rechecks} re-checks"
    );
}
