//! An echo service on tokio: one runtime serves any number of clients, a task per connection,
//! and shuts down cleanly on Ctrl-C (stops accepting, tells every connection to finish, closes
//! its rings, removes the socket file).
//!
//! ```text
//! cargo run --release --features tokio --example tokio_echo -- /tmp/echo.sock
//! cargo run --release --example rtt_client -- /tmp/echo.sock          # as many as you like
//! cargo run --release --features tokio --example tokio_echo -- /tmp/echo.sock 8 2000
//! ```
//!
//! With a client count (and a message count), it also runs that many clients in the same
//! runtime, each checking every echoed byte, and exits once each has closed its connection:
//! tests/examples.rs runs it that way.

use std::time::{Duration, Instant};

use shmpipe::tokio::{Connection, Listener, connect};
use shmpipe::{AcceptError, Options, RecvError};
use tokio::sync::watch;
use tokio::task::JoinSet;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: tokio_echo SOCKET [CLIENTS [MESSAGES]]")?;
    let clients: Option<usize> = args.next().map(|n| n.parse()).transpose()?;
    let messages: u64 = args.next().map(|n| n.parse()).transpose()?.unwrap_or(1000);

    let mut listener = Listener::bind(&path, &Options::new())?;
    eprintln!("tokio_echo: listening on {path}");
    let (stop, stopped) = watch::channel(false);
    let mut served = JoinSet::new();

    let mut clients_done = JoinSet::new();
    for c in 0..clients.unwrap_or(0) {
        let path = path.clone();
        clients_done.spawn(async move { client(&path, c as u64, messages).await });
    }

    let mut interrupted = false;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => {
                    eprintln!("tokio_echo: client connected ({})", conn.peer());
                    served.spawn(serve(conn, stopped.clone()));
                }
                // One client's failed handshake: keep serving the others.
                Err(AcceptError::Handshake { source, .. }) => eprintln!("tokio_echo: {source}"),
                Err(e) => return Err(e.into()),
            },
            _ = tokio::signal::ctrl_c() => {
                eprintln!("tokio_echo: Ctrl-C, shutting down");
                interrupted = true;
                break;
            }
            Some(done) = clients_done.join_next() => {
                let (round_trips, took) = done?.map_err(|e| e.to_string())?;
                println!("client: {round_trips} round trips in {took:?}");
                if clients_done.is_empty() {
                    break;
                }
            }
        }
    }
    // Stop accepting (the socket file goes with the listener). On Ctrl-C, tell every
    // connection to stop; when our own clients are done, let each connection end as its
    // client closes it (a stop now could win the race with a close already made).
    drop(listener);
    if interrupted {
        let _ = stop.send(true);
    }
    while let Some(r) = served.join_next().await {
        r?;
    }
    eprintln!("tokio_echo: done");
    Ok(())
}

/// Echo every message back until the client closes, goes away, or we are told to stop.
async fn serve(conn: Connection, mut stop: watch::Receiver<bool>) {
    let (mut tx, mut rx) = conn.split();
    let mut buf = Vec::new();
    loop {
        tokio::select! {
            // `recv` is cancel safe: a message is never lost to the other branch.
            r = rx.recv(&mut buf) => match r {
                Ok(_) => {
                    if let Err(e) = tx.send(&buf).await {
                        eprintln!("tokio_echo: dropping a client: {e}");
                        return;
                    }
                }
                Err(RecvError::Closed) => {
                    eprintln!("tokio_echo: client closed");
                    break;
                }
                Err(e) => {
                    eprintln!("tokio_echo: client gone: {e}");
                    return;
                }
            },
            _ = stop.changed() => break,
        }
    }
    // Our replies were all read, or the client had a second to read them.
    let _ = tx.close(Duration::from_secs(1)).await;
}

/// A client of our own: `messages` round trips, every byte checked.
async fn client(
    path: &str,
    id: u64,
    messages: u64,
) -> Result<(u64, Duration), Box<dyn std::error::Error + Send + Sync>> {
    let mut conn = connect(path, &Options::new()).await?;
    let start = Instant::now();
    let mut reply = Vec::new();
    for i in 0..messages {
        let msg = format!("client {id} message {i} {}", "x".repeat((i % 200) as usize));
        conn.send(msg.as_bytes()).await?;
        conn.recv(&mut reply).await?;
        if reply != msg.as_bytes() {
            return Err(format!("client {id}: reply {i} differs").into());
        }
    }
    let took = start.elapsed();
    let (tx, _rx) = conn.split();
    tx.close(Duration::from_secs(5)).await?;
    Ok((messages, took))
}
