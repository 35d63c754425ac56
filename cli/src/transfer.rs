//! `shmpipe send` and `shmpipe recv`: a byte stream from one process's stdin to another's
//! stdout over a shmpipe connection.
//!
//! The stream goes over the sender's ring, one message per `read` of stdin. When stdin ends
//! the sender closes its ring; the receiver, once it has written everything to stdout, sends
//! back one verdict message on its own ring: `ok <bytes>` or `error: <reason>`. `send` exits 0
//! only on `ok` with the byte count it sent.
//!
//! No wait of `send` is unbounded: it waits `--wait` for a receiver to appear, then (while
//! the receiver lives, which it watches even while stdin is idle) as long as the receiver
//! takes to consume the stream, then `--confirm-wait` for the verdict.

use std::error::Error;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rustix::event::{PollFd, PollFlags};
use shmpipe::{
    AcceptError, BindError, CloseError, ConnectError, Connection, Listener, MAX_CAPACITY,
    MIN_CAPACITY, Options, RecvError, RecvTimeoutError, SendError, connect,
};

/// How long `send` waits for the receiver to consume the stream: as long as it takes (the
/// receiver's liveness is watched, so a dead receiver still ends the wait at once).
const FOREVER: Duration = Duration::from_secs(u32::MAX as u64);

/// How long `send` retries quietly before it says it is waiting for a receiver: a receiver
/// started at the same moment is usually listening well within this.
const ANNOUNCE_AFTER: Duration = Duration::from_millis(100);

// The help texts below say "64 to 1G"; they must follow the library.
const _: () = assert!(MIN_CAPACITY == 64 && MAX_CAPACITY == 1 << 30);

/// Arguments of `shmpipe send`.
#[derive(Debug, clap::Args)]
pub(crate) struct SendArgs {
    /// Path of the receiver's socket (where `shmpipe recv PATH` listens).
    #[arg(value_name = "PATH")]
    socket: PathBuf,
    /// Seconds to keep retrying while the socket does not exist or nobody listens on it yet.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    wait: f64,
    /// Seconds to wait, once the receiver has consumed the whole stream, for its confirmation
    /// that it wrote everything to its stdout.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    confirm_wait: f64,
    /// Capacity of the ring carrying the stream: a power of two from 64 to 1G, in bytes or
    /// with a suffix k, M, G (KiB, MiB, GiB: 4k, 64KiB, 1M).
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = parse_capacity)]
    capacity: usize,
    #[command(flatten)]
    report: Report,
}

/// Arguments of `shmpipe recv`.
#[derive(Debug, clap::Args)]
pub(crate) struct RecvArgs {
    /// Path of the socket to listen on (its directory must exist).
    #[arg(value_name = "PATH")]
    socket: PathBuf,
    /// Least capacity of the ring carrying the stream (the sender's `--capacity` may be
    /// larger): a power of two from 64 to 1G, in bytes or with a suffix k, M, G (KiB, MiB,
    /// GiB: 4k, 64KiB, 1M).
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = parse_capacity)]
    capacity: usize,
    #[command(flatten)]
    report: Report,
}

/// What `send` and `recv` say about the transfer besides errors.
#[derive(Debug, clap::Args)]
struct Report {
    /// Show bytes, rate and elapsed time on stderr while the stream runs (if it is a terminal).
    #[arg(long)]
    progress: bool,
    /// At the end, print one line on stderr: bytes, messages, seconds, GB/s.
    #[arg(long)]
    summary: bool,
}

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// A size: a number of bytes, optionally followed by a binary suffix (k/K/KB/KiB, M/MB/MiB,
/// G/GB/GiB: all powers of 1024, since every size here is a power of two) or `B`.
pub(crate) fn parse_size(s: &str) -> std::result::Result<usize, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let unit_bytes: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => 0,
    };
    let n: u64 = match number.parse() {
        Ok(n) if unit_bytes != 0 => n,
        _ => return Err("not a size: write bytes (65536) or use k, M, G (64k, 1M, 1GiB)".into()),
    };
    n.checked_mul(unit_bytes)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| "too large".into())
}

/// A ring capacity: a size that is a power of two from `MIN_CAPACITY` to `MAX_CAPACITY`.
fn parse_capacity(s: &str) -> std::result::Result<usize, String> {
    let n = parse_size(s)?;
    if !n.is_power_of_two() {
        Err(format!(
            "{n} bytes is not a power of two (64, 128, ..., 4k, ..., 1M, ..., 1G)"
        ))
    } else if n < MIN_CAPACITY {
        Err(format!(
            "{n} bytes is below the smallest capacity, 64 bytes"
        ))
    } else if n > MAX_CAPACITY {
        Err(format!(
            "{n} bytes is above the largest capacity, 1G ({MAX_CAPACITY} bytes)"
        ))
    } else {
        Ok(n)
    }
}

/// Seconds from a flag, as a `Duration`.
fn seconds(flag: &str, secs: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{flag} {secs}: {e}").into())
}

/// `1.5 s`
fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Options both commands share: rings as large as `--capacity` allows, on either side.
fn cli_options() -> Options {
    Options::new().max_ring(MAX_CAPACITY)
}

/// stdin or stdout as a plain `File`: no buffering layer between the fd and the ring.
fn raw(fd: std::os::fd::BorrowedFd<'_>, what: &str) -> Result<File> {
    Ok(File::from(
        fd.try_clone_to_owned()
            .map_err(|e| format!("{what}: {e}"))?,
    ))
}

/// Why `path` cannot be a socket whatever anyone does: its directory is missing.
fn missing_directory(path: &Path) -> Option<String> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => None,
        Ok(_) => Some(format!(
            "{}: {} is not a directory",
            path.display(),
            dir.display()
        )),
        Err(e) if e.kind() == ErrorKind::NotFound => Some(format!(
            "{}: directory {} does not exist",
            path.display(),
            dir.display()
        )),
        Err(_) => None,
    }
}

/// Bytes and messages so far, drawn as a progress line if asked.
struct Meter {
    start: Instant,
    bytes: u64,
    messages: u64,
    bar: Option<ProgressBar>,
}

impl Meter {
    fn new(report: &Report) -> Meter {
        let bar = report.progress.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {binary_bytes} at {binary_bytes_per_sec} in {elapsed_precise}",
                )
                .expect("a valid template"),
            );
            // Elapsed time moves on while stdin is idle.
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Meter {
            start: Instant::now(),
            bytes: 0,
            messages: 0,
            bar,
        }
    }

    fn add(&mut self, messages: u64, bytes: u64) {
        self.messages += messages;
        self.bytes += bytes;
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    /// Clear the progress line (before any other line on stderr).
    fn clear(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    /// The `--summary` line.
    fn summary(&self, verb: &str) -> String {
        let t = self.start.elapsed().as_secs_f64();
        let rate = if t > 0.0 {
            self.bytes as f64 / t / 1e9
        } else {
            0.0
        };
        format!(
            "shmpipe: {verb} {} bytes in {} messages in {t:.3} s ({rate:.3} GB/s)",
            self.bytes, self.messages
        )
    }
}

fn connect_waiting(args: &SendArgs, options: &Options) -> Result<Connection> {
    let wait = seconds("--wait", args.wait)?;
    let path = &args.socket;
    if let Some(why) = missing_directory(path) {
        return Err(why.into());
    }
    let start = Instant::now();
    let mut announced = false;
    loop {
        match connect(path, options) {
            Err(ConnectError::Connect { source, .. })
                if matches!(
                    source.kind(),
                    ErrorKind::NotFound | ErrorKind::ConnectionRefused
                ) =>
            {
                let waited = start.elapsed();
                if waited >= wait {
                    let what = if source.kind() == ErrorKind::NotFound {
                        "no socket file"
                    } else {
                        "a socket file nobody listens on"
                    };
                    return Err(format!(
                        "no receiver at {p} after waiting {} ({what}): is `shmpipe recv {p}` \
                         running?",
                        secs(waited),
                        p = path.display()
                    )
                    .into());
                }
                if !announced && waited >= ANNOUNCE_AFTER {
                    eprintln!(
                        "shmpipe: waiting up to {} for a receiver on {p} (`shmpipe recv {p}`)",
                        secs(wait),
                        p = path.display()
                    );
                    announced = true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return Ok(r?),
        }
    }
}

/// Wait until stdin has something to say (data, EOF or an error) or the receiver is gone;
/// `true`: the receiver is gone.
fn wait_stdin_or_receiver(stdin: &File, tx: &shmpipe::Sender) -> Result<bool> {
    let peer = tx.peer_fd();
    let mut fds = [
        PollFd::new(stdin, PollFlags::IN),
        PollFd::new(&peer, PollFlags::IN),
    ];
    loop {
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(format!("poll of stdin: {e}").into()),
        }
    }
    Ok(!fds[1].revents().is_empty() && tx.is_peer_gone())
}

pub(crate) fn send(args: SendArgs) -> Result<ExitCode> {
    let confirm_wait = seconds("--confirm-wait", args.confirm_wait)?;
    let options = cli_options().send_capacity(args.capacity);
    let (mut tx, mut rx) = connect_waiting(&args, &options)?.split();
    let mut stdin = raw(std::io::stdin().as_fd(), "stdin")?;
    let mut buf = vec![0u8; tx.max_message()];
    let mut meter = Meter::new(&args.report);
    let result = (|| -> Result<ExitCode> {
        loop {
            // An idle stdin must not hide a dead receiver: wait for either.
            if wait_stdin_or_receiver(&stdin, &tx)? {
                return Err(receiver_gone(&mut rx, meter.bytes));
            }
            let n = match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("reading stdin: {e}").into()),
            };
            if let Err(e) = tx.send(&buf[..n]) {
                return Err(send_failure(&mut rx, e, meter.bytes));
            }
            meter.add(1, n as u64);
        }
        let sent = meter.bytes;
        match tx.close(FOREVER) {
            Ok(()) => {}
            Err(CloseError::Unconsumed { unconsumed }) => {
                return Err(verdict_or(&mut rx, || {
                    format!(
                        "the receiver went away with {unconsumed} of the {sent} bytes unconsumed"
                    )
                }));
            }
            Err(e) => return Err(format!("closing after {sent} bytes: {e}").into()),
        }
        confirmation(&mut rx, sent, confirm_wait)
    })();
    meter.clear();
    if result.is_ok() && args.report.summary {
        eprintln!("{}", meter.summary("sent"));
    }
    result
}

/// The receiver's verdict, waited for at most `limit` once it consumed all `sent` bytes.
fn confirmation(rx: &mut shmpipe::Receiver, sent: u64, limit: Duration) -> Result<ExitCode> {
    let mut verdict = Vec::new();
    match rx.recv_timeout(&mut verdict, limit) {
        Ok(_) => {}
        Err(RecvTimeoutError::Timeout) => {
            return Err(format!(
                "the receiver consumed all {sent} bytes but did not confirm writing them \
                 within {} (--confirm-wait)",
                secs(limit)
            )
            .into());
        }
        Err(RecvTimeoutError::Failed(RecvError::Closed | RecvError::PeerGone)) => {
            return Err(format!(
                "the receiver consumed all {sent} bytes but exited without confirming them"
            )
            .into());
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

/// The receiver's own words if it left a verdict, else `otherwise()`.
fn verdict_or(rx: &mut shmpipe::Receiver, otherwise: impl FnOnce() -> String) -> Box<dyn Error> {
    let mut verdict = Vec::new();
    match rx.try_recv(&mut verdict) {
        Ok(_) => format!("receiver: {}", String::from_utf8_lossy(&verdict)).into(),
        Err(_) => otherwise().into(),
    }
}

/// Why a send failed: the receiver's own words if it left a verdict, else the ring's error.
fn send_failure(rx: &mut shmpipe::Receiver, e: SendError, sent: u64) -> Box<dyn Error> {
    verdict_or(rx, || format!("sending after {sent} bytes: {e}"))
}

/// The receiver died (or hung up) while `send` waited for stdin, which has not ended.
fn receiver_gone(rx: &mut shmpipe::Receiver, sent: u64) -> Box<dyn Error> {
    verdict_or(rx, || {
        format!("the receiver went away after {sent} bytes, before stdin ended")
    })
}

fn bind(args: &RecvArgs, options: &Options) -> Result<Listener> {
    if let Some(why) = missing_directory(&args.socket) {
        return Err(why.into());
    }
    match Listener::bind(&args.socket, options) {
        Ok(l) => Ok(l),
        // The lock file is ours, not the user's: speak of the path they gave.
        Err(BindError::Io { op, path, source }) if path != args.socket => Err(format!(
            "{}: cannot listen there: {op} of its lock file {} failed: {source}",
            args.socket.display(),
            path.display()
        )
        .into()),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn recv(args: RecvArgs) -> Result<ExitCode> {
    // The reverse ring only carries the verdict: keep it small.
    let options = cli_options()
        .send_capacity(4096)
        .recv_capacity(args.capacity);
    let conn = {
        let mut listener = bind(&args, &options)?;
        // A client whose handshake fails (garbage, a stall, a crash, a wrong uid) is told
        // why, noted on stderr and dropped; the next one may be the sender.
        loop {
            match listener.accept() {
                Ok(conn) => break conn,
                Err(e @ AcceptError::Handshake { .. }) => {
                    eprintln!("shmpipe: ignored a connection: {e}");
                }
                Err(e) => return Err(e.into()),
            }
        }
        // The listener drops here: one sender only, and the socket file goes away.
    };
    let (mut tx, mut rx) = conn.split();
    let mut stdout = raw(std::io::stdout().as_fd(), "stdout")?;
    let mut meter = Meter::new(&args.report);
    let result = (|| -> Result<()> {
        let mut failed = None;
        loop {
            let (mut messages, mut bytes) = (0u64, 0u64);
            let written = meter.bytes;
            let r = rx.drain(usize::MAX, |m| {
                if failed.is_none() {
                    match stdout.write_all(m) {
                        Ok(()) => {
                            messages += 1;
                            bytes += m.len() as u64;
                        }
                        Err(e) => failed = Some(e),
                    }
                }
            });
            meter.add(messages, bytes);
            let written = written + bytes;
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
        tx.send(format!("ok {}", meter.bytes).as_bytes())?;
        Ok(())
    })();
    meter.clear();
    result?;
    if args.report.summary {
        eprintln!("{}", meter.summary("received"));
    }
    // Wait (briefly) until the sender has read the verdict; if it is gone by now, the stream
    // was still delivered in full.
    let _ = tx.close(Duration::from_secs(5));
    Ok(ExitCode::SUCCESS)
}
