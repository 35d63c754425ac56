//! An echo server: one thread serves any number of clients through a [`Selector`], sleeping
//! while all are idle. Each message is sent back to the client it came from.
//!
//! ```text
//! cargo run --release --example echo_server -- /tmp/echo.sock
//! cargo run --release --example rtt_client -- /tmp/echo.sock     # as many as you like
//! ```
//!
//! A client that stops reading its replies for more than a second, dies, or closes is
//! dropped without disturbing the others.

use std::collections::HashMap;
use std::time::Duration;

use shmpipe::{
    AcceptError, Listener, Options, RecvError, Selector, SendTimeoutError, Sender, Token,
    TryRecvError,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: echo_server SOCKET [MAX_CLIENTS_THEN_EXIT]")?;
    // With a count, exit once that many clients have come and gone (for tests).
    let limit: Option<usize> = std::env::args().nth(2).map(|n| n.parse()).transpose()?;
    let mut listener = Listener::bind(&path, &Options::new())?;
    let mut sel = Selector::new()?;
    let accept = sel.insert_fd(&listener)?;
    let mut senders: HashMap<Token, Sender> = HashMap::new();
    let (mut served, mut ready, mut replies) = (0, Vec::new(), Vec::new());
    eprintln!("echo: listening on {path}");
    while limit.is_none_or(|l| served < l || !senders.is_empty()) {
        sel.select(&mut ready, None)?;
        for &t in &ready {
            if t == accept {
                match listener.try_accept() {
                    Ok(Some(conn)) => {
                        let peer = conn.peer();
                        let (tx, rx) = conn.split();
                        let token = sel.insert(rx)?;
                        senders.insert(token, tx);
                        served += 1;
                        eprintln!("echo: client {} connected ({peer})", token.index());
                    }
                    Ok(None) => {}
                    // One client's failed handshake: keep serving the rest.
                    Err(AcceptError::Handshake { source, .. }) => eprintln!("echo: {source}"),
                    Err(e) => return Err(e.into()),
                }
                continue;
            }
            let Some(rx) = sel.get_mut(t) else { continue };
            // Copy out what is there (up to 64 messages per turn, for fairness), then reply.
            replies.clear();
            let end = match rx.try_drain(64, |m| replies.push(m.to_vec())) {
                Ok(_) | Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Failed(e)) => Some(e),
            };
            let tx = senders.get_mut(&t).expect("a sender per receiver");
            let failed = replies
                .iter()
                .find_map(|m| tx.send_timeout(m, Duration::from_secs(1)).err());
            if let Some(e) = failed {
                let why = match e {
                    SendTimeoutError::Timeout => "stopped reading its replies".to_owned(),
                    SendTimeoutError::Failed(e) => e.to_string(),
                };
                eprintln!("echo: dropping client {}: {why}", t.index());
            } else if let Some(e) = end {
                match e {
                    RecvError::Closed => eprintln!("echo: client {} closed", t.index()),
                    e => eprintln!("echo: client {}: {e}", t.index()),
                }
            } else {
                continue;
            }
            sel.remove(t);
            senders.remove(&t);
        }
    }
    Ok(())
}
