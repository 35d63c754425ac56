//! `shmring send` and `shmring recv`: a byte stream from one process's stdin to another's
//! stdout over a shmring connection.
//!
//! The stream goes over the sender's ring, one message per `read` of stdin. When stdin ends
//! the sender closes its ring; the receiver, once it has written everything to stdout, sends
//! back one verdict message on its own ring: `ok <bytes>` or `error: <reason>`. `send` exits 0
//! only on `ok` with the byte count it sent.

use std::error::Error;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use shmring::{AcceptError, Connection, Listener, Options, RecvError, SendError, connect};

/// How long `send` waits for the receiver to consume the stream: as long as it takes (the
/// receiver's liveness is watched, so a dead receiver still ends the wait at once).
const FOREVER: Duration = Duration::from_secs(u32::MAX as u64);

/// Arguments of `shmring send`.
#[derive(Debug, clap::Args)]
pub(crate) struct SendArgs {
    /// Path of the receiver's socket.
    socket: PathBuf,
    /// Seconds to keep retrying while the socket does not exist or nobody listens on it yet.
    #[arg(long, default_value_t = 5.0)]
    wait: f64,
    /// Capacity of the ring carrying the stream, in bytes (a power of two).
    #[arg(long, default_value_t = shmring::DEFAULT_CAPACITY)]
    capacity: usize,
}

/// Arguments of `shmring recv`.
#[derive(Debug, clap::Args)]
pub(crate) struct RecvArgs {
    /// Path of the socket to listen on.
    socket: PathBuf,
    /// Least capacity of the ring carrying the stream, in bytes (a power of two).
    #[arg(long, default_value_t = shmring::DEFAULT_CAPACITY)]
    capacity: usize,
}

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// stdin or stdout as a plain `File`: no buffering layer between the fd and the ring.
fn raw(fd: std::os::fd::BorrowedFd<'_>, what: &str) -> Result<File> {
    Ok(File::from(
        fd.try_clone_to_owned()
            .map_err(|e| format!("{what}: {e}"))?,
    ))
}

fn connect_waiting(args: &SendArgs, options: Options) -> Result<Connection> {
    let wait = Duration::try_from_secs_f64(args.wait).map_err(|e| format!("--wait: {e}"))?;
    Ok(connect(&args.socket, &options.wait_for_listener(wait))?)
}

pub(crate) fn send(args: SendArgs) -> Result<ExitCode> {
    let options = Options::new().send_capacity(args.capacity);
    let (mut tx, mut rx) = connect_waiting(&args, options)?.split();
    let mut stdin = raw(std::io::stdin().as_fd(), "stdin")?;
    let mut buf = vec![0u8; tx.max_message()];
    let mut sent = 0u64;
    let mut verdict = Vec::new();
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading stdin: {e}").into()),
        };
        if let Err(e) = tx.send(&buf[..n]) {
            return Err(send_failure(&mut rx, e, sent));
        }
        sent += n as u64;
    }
    if let Err(e) = tx.close(FOREVER) {
        return Err(format!("closing after {sent} bytes: {e}").into());
    }
    match rx.recv(&mut verdict) {
        Ok(_) => {}
        Err(RecvError::Closed | RecvError::PeerGone) => {
            return Err("the receiver consumed the stream but exited without confirming it".into());
        }
        Err(e) => return Err(format!("waiting for the receiver's confirmation: {e}").into()),
    }
    let verdict = String::from_utf8_lossy(&verdict);
    match verdict.strip_prefix("ok ").map(str::parse::<u64>) {
        Some(Ok(n)) if n == sent => Ok(ExitCode::SUCCESS),
        Some(Ok(n)) => Err(format!("sent {sent} bytes but the receiver wrote {n}").into()),
        _ => Err(format!("receiver: {verdict}").into()),
    }
}

/// Why a send failed: the receiver's own words if it left a verdict, else the ring's error.
fn send_failure(rx: &mut shmring::Receiver, e: SendError, sent: u64) -> Box<dyn Error> {
    let mut verdict = Vec::new();
    match rx.try_recv(&mut verdict) {
        Ok(_) => format!("receiver: {}", String::from_utf8_lossy(&verdict)).into(),
        Err(_) => format!("sending after {sent} bytes: {e}").into(),
    }
}

pub(crate) fn recv(args: RecvArgs) -> Result<ExitCode> {
    // The reverse ring only carries the verdict: keep it small.
    let options = Options::new()
        .send_capacity(4096)
        .recv_capacity(args.capacity);
    let conn = {
        let mut listener = Listener::bind(&args.socket, &options)?;
        // A client whose handshake fails (garbage, a stall, a crash, a wrong uid) is told
        // why, noted on stderr and dropped; the next one may be the sender.
        loop {
            match listener.accept() {
                Ok(conn) => break conn,
                Err(e @ AcceptError::Handshake { .. }) => {
                    eprintln!("shmring: ignored a connection: {e}");
                }
                Err(e) => return Err(e.into()),
            }
        }
        // The listener drops here: one sender only, and the socket file goes away.
    };
    let (mut tx, mut rx) = conn.split();
    let mut stdout = raw(std::io::stdout().as_fd(), "stdout")?;
    let mut written = 0u64;
    let mut failed = None;
    loop {
        let r = rx.drain(usize::MAX, |m| {
            if failed.is_none() {
                match stdout.write_all(m) {
                    Ok(()) => written += m.len() as u64,
                    Err(e) => failed = Some(e),
                }
            }
        });
        if let Some(e) = failed {
            let why = format!("error: writing stdout after {written} bytes: {e}");
            let _ = tx.send(why.as_bytes());
            return Err(why.trim_start_matches("error: ").into());
        }
        match r {
            Ok(_) => {}
            Err(RecvError::Closed) => break,
            Err(RecvError::PeerGone) => {
                return Err(format!(
                    "the sender went away after {written} bytes without ending the stream"
                )
                .into());
            }
            Err(e) => return Err(format!("receiving after {written} bytes: {e}").into()),
        }
    }
    if let Err(e) = stdout.flush() {
        let why = format!("error: flushing stdout: {e}");
        let _ = tx.send(why.as_bytes());
        return Err(why.trim_start_matches("error: ").into());
    }
    tx.send(format!("ok {written}").as_bytes())?;
    // Wait (briefly) until the sender has read the verdict; if it is gone by now, the stream
    // was still delivered in full.
    let _ = tx.close(Duration::from_secs(5));
    Ok(ExitCode::SUCCESS)
}
