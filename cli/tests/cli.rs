//! `shmpipe send` and `shmpipe recv` as real processes.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shmpipe_testkit::blocked::{Wait, wait_until_asleep};
use shmpipe_testkit::child::{Reaper, finish};
use shmpipe_testkit::{TempDir, serial};

const BIN: &str = env!("CARGO_BIN_EXE_shmpipe");

fn recv_cmd(sock: &std::path::Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("recv").arg(sock);
    c
}

fn send_cmd(sock: &std::path::Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("send").arg(sock);
    c
}

/// `recv` on `sock`, once it listens, with its stdout and stderr as given.
fn start_recv(sock: &std::path::Path, stdout: Stdio, stderr: Stdio) -> Reaper {
    let recv = Reaper::new(
        recv_cmd(sock)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap(),
    );
    wait_for_socket(sock);
    recv
}

/// `send` to `sock`, its stdin piped, its stderr as given.
fn start_send(sock: &std::path::Path, stderr: Stdio) -> Reaper {
    Reaper::new(
        send_cmd(sock)
            .stdin(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap(),
    )
}

/// Exactly one line, prefixed `shmpipe: `.
fn one_line_reason(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr).into_owned();
    assert_eq!(text.lines().count(), 1, "not one line: {text:?}");
    assert!(text.starts_with("shmpipe: "), "{text:?}");
    text
}

/// Read a child's stdout to its end on a thread of its own, so that the child never blocks on
/// a full pipe while the test waits for something else.
fn read_stdout(child: &mut std::process::Child) -> std::thread::JoinHandle<Vec<u8>> {
    let mut stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).unwrap();
        out
    })
}

fn wait_for_socket(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The pipe, verbatim: `head -c 1G /dev/urandom | tee >(sha256sum) | shmpipe send s`
/// and `shmpipe recv s | sha256sum` print the same sum. SHMPIPE_PIPE_BYTES changes the size.
#[test]
fn cli_pipe_of_1_gib_keeps_the_sha256() {
    let _g = serial();
    let bytes = std::env::var("SHMPIPE_PIPE_BYTES").unwrap_or_else(|_| "1G".into());
    let dir = TempDir::new();
    let recv = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; '{BIN}' recv s | sha256sum > recv.sum"
        ))
        .current_dir(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let recv = Reaper(Some(recv));
    wait_for_socket(&dir.sock());
    let t = Instant::now();
    let send = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; head -c {bytes} /dev/urandom | tee >(sha256sum > send.sum) | '{BIN}' send s"
        ))
        .current_dir(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let send = finish(send, Duration::from_secs(600), "send pipeline");
    assert!(
        send.status.success(),
        "send: {}",
        String::from_utf8_lossy(&send.stderr)
    );
    let mut recv = recv;
    let recv = finish(
        recv.0.take().unwrap(),
        Duration::from_secs(60),
        "recv pipeline",
    );
    assert!(
        recv.status.success(),
        "recv: {}",
        String::from_utf8_lossy(&recv.stderr)
    );
    // `tee >(...)` finishes its sum asynchronously.
    let deadline = Instant::now() + Duration::from_secs(60);
    let sent = loop {
        let s = std::fs::read_to_string(dir.path().join("send.sum")).unwrap_or_default();
        if s.len() >= 64 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "sha256sum of the input never finished"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let received = std::fs::read_to_string(dir.path().join("recv.sum")).unwrap();
    assert_eq!(
        sent.split_whitespace().next(),
        received.split_whitespace().next()
    );
    assert_ne!(
        received.split_whitespace().next(),
        Some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        "the empty stream's sum"
    );
    println!("{bytes} through the CLI pipe in {:?}", t.elapsed());
}

/// A deterministic stream: byte i is (i * 7 + i / 251) as u8.
fn pattern(start: u64, buf: &mut [u8]) {
    for (k, b) in buf.iter_mut().enumerate() {
        let i = start + k as u64;
        *b = (i.wrapping_mul(7) + i / 251) as u8;
    }
}

/// faults.md E4 through the CLI: `recv` delivers what the killed sender committed, then
/// fails saying the sender went away, which only the peer watch tells it (a sender that
/// merely stopped would leave it waiting). How fast the watch wakes a sleeper is asserted
/// where it can be seen (ring/tests/two_process.rs, handshake/tests/faults_wakeups.rs); here the
/// deadlines are hang guards.
#[test]
fn kill_9_of_send_mid_stream_leaves_a_prefix_and_a_failing_recv() {
    let _g = serial();
    let dir = TempDir::new();
    let mut recv = start_recv(&dir.sock(), Stdio::piped(), Stdio::piped());
    let mut send = start_send(&dir.sock(), Stdio::null());
    let mut stdin = send.child().stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut at = 0u64;
        loop {
            pattern(at, &mut buf);
            if stdin.write_all(&buf).is_err() {
                return at;
            }
            at += buf.len() as u64;
        }
    });
    let out = recv.child().stdout.take().unwrap();
    // Read a good part of the stream, then kill -9 the sender.
    let (mut out, mut got) = shmpipe_testkit::deadline(120, "recv's first 16 MiB", move || {
        let mut out = out;
        let mut got = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        let mut want = vec![0u8; 1 << 16];
        while got < 16 << 20 {
            let n = out.read(&mut buf).unwrap();
            assert!(n > 0, "recv ended early");
            pattern(got, &mut want[..n]);
            assert!(buf[..n] == want[..n], "byte {got} differs");
            got += n as u64;
        }
        (out, got)
    });
    send.child().kill().unwrap();
    let killed = Instant::now();
    send.child().wait().unwrap();
    // The rest of what it committed, in order, then EOF and a failing exit.
    got = shmpipe_testkit::deadline(20, "recv's output after the kill", move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut want = vec![0u8; 1 << 16];
        loop {
            let n = out.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            pattern(got, &mut want[..n]);
            assert!(buf[..n] == want[..n], "byte {got} differs after the kill");
            got += n as u64;
        }
        got
    });
    let eof = killed.elapsed();
    let recv = finish(recv.take(), Duration::from_secs(20), "recv after the kill");
    assert!(!recv.status.success());
    let reason = one_line_reason(&recv.stderr);
    assert!(reason.contains("went away"), "{reason}");
    let written = writer.join().unwrap();
    assert!(got <= written, "received more than was written");
    println!("prefix of {got} of {written} bytes; recv ended {eof:?} after the kill: {reason}");
}

/// faults.md L5 through the CLI: a `send` blocked on a full ring fails, naming the dead
/// receiver, when the receiver is killed. It is seen blocked first: asleep in `epoll_wait`,
/// which `send` calls only in its ring's waits (the handshake waits in `poll`, stdin in
/// `read`); and it fails in a send, with `PeerGone`, which only the peer watch gives. The
/// 10 s limit is a hang guard.
#[test]
fn kill_9_of_recv_fails_a_blocked_send_at_once() {
    let _g = serial();
    let dir = TempDir::new();
    // A receiver whose stdout nobody reads: the pipe and then the ring fill up.
    let mut recv = start_recv(&dir.sock(), Stdio::piped(), Stdio::null());
    let mut send = start_send(&dir.sock(), Stdio::piped());
    let mut stdin = send.child().stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let buf = vec![b'x'; 1 << 16];
        while stdin.write_all(&buf).is_ok() {}
    });
    let pid = send.child().id();
    wait_until_asleep(
        pid,
        pid,
        Wait::Epoll,
        Duration::from_secs(20),
        "send with nobody reading recv's output",
        || {
            send.child().try_wait().unwrap().is_none()
                || panic!("send exited while it should block")
        },
    );
    recv.child().kill().unwrap();
    recv.child().wait().unwrap();
    let out = finish(
        send.take(),
        Duration::from_secs(10),
        "send after its receiver died",
    );
    assert!(!out.status.success());
    let reason = one_line_reason(&out.stderr);
    assert!(
        reason.contains("sending after") && reason.contains("gone"),
        "{reason}"
    );
    writer.join().unwrap();
}

#[test]
fn send_exits_zero_only_after_the_receiver_consumed_everything() {
    let _g = serial();
    let dir = TempDir::new();
    let mut recv = start_recv(&dir.sock(), Stdio::piped(), Stdio::piped());
    let mut input = vec![0u8; 8 << 20];
    pattern(0, &mut input);
    let mut send = start_send(&dir.sock(), Stdio::piped());
    let mut stdin = send.child().stdin.take().unwrap();
    let data = input.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    // Nobody reads recv's stdout yet: 8 MiB cannot all have been consumed. `send` waits for
    // the receiver (seen asleep in `epoll_wait`, where its ring waits) instead of exiting.
    let pid = send.child().id();
    wait_until_asleep(
        pid,
        pid,
        Wait::Epoll,
        Duration::from_secs(20),
        "send with nobody reading recv's output",
        || {
            send.child().try_wait().unwrap().is_none()
                || panic!("send exited before its data was consumed")
        },
    );
    let stdout = recv.child().stdout.take().unwrap();
    let output = shmpipe_testkit::deadline(60, "reading recv's output", move || {
        let mut output = Vec::new();
        { stdout }.read_to_end(&mut output).unwrap();
        output
    });
    let send = finish(send.take(), Duration::from_secs(20), "send");
    let recv = finish(recv.take(), Duration::from_secs(20), "recv");
    assert!(
        send.status.success(),
        "{}",
        String::from_utf8_lossy(&send.stderr)
    );
    assert!(
        recv.status.success(),
        "{}",
        String::from_utf8_lossy(&recv.stderr)
    );
    assert!(output == input, "output differs from input");
    assert!(!dir.sock().exists(), "recv removes its socket file");
    writer.join().unwrap();
}

#[test]
fn empty_input_is_a_successful_empty_stream() {
    let _g = serial();
    let dir = TempDir::new();
    let recv = recv_cmd(&dir.sock())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_socket(&dir.sock());
    let send = send_cmd(&dir.sock())
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let send = finish(send, Duration::from_secs(20), "send");
    let recv = finish(recv, Duration::from_secs(20), "recv");
    assert!(
        send.status.success(),
        "{}",
        String::from_utf8_lossy(&send.stderr)
    );
    assert!(
        recv.status.success(),
        "{}",
        String::from_utf8_lossy(&recv.stderr)
    );
    assert!(recv.stdout.is_empty());
}

#[test]
fn a_receiver_that_cannot_write_fails_both_sides_with_its_reason() {
    let _g = serial();
    let dir = TempDir::new();
    // recv's stdout is a pipe whose reader goes away after 10 bytes.
    let recv = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "'{BIN}' recv s | head -c 10 > /dev/null; exit ${{PIPESTATUS[0]}}"
        ))
        .current_dir(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_socket(&dir.sock());
    let mut send = send_cmd(&dir.sock())
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = send.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let buf = vec![b'y'; 1 << 16];
        for _ in 0..1024 {
            if stdin.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let recv = finish(recv, Duration::from_secs(20), "recv");
    let send = finish(send, Duration::from_secs(20), "send");
    writer.join().unwrap();
    assert!(!recv.status.success());
    let r = one_line_reason(&recv.stderr);
    assert!(r.contains("writing stdout"), "{r}");
    assert!(!send.status.success());
    let s = one_line_reason(&send.stderr);
    assert!(
        s.contains("receiver") && s.contains("writing stdout"),
        "{s}"
    );
}

/// `send` says once that it waits, and when it gives up, how long it waited and what must be
/// running.
#[test]
fn send_without_a_receiver_says_it_waits_then_fails_with_a_reason() {
    let dir = TempDir::new();
    let t = Instant::now();
    let out = send_cmd(&dir.sock())
        .args(["--wait", "0.5"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().collect();
    let sock = dir.sock().display().to_string();
    assert_eq!(lines.len(), 2, "{text:?}");
    assert!(
        lines[0].starts_with("shmpipe: waiting up to 0.5 s for a receiver")
            && lines[0].contains(&sock),
        "{text:?}"
    );
    assert!(
        lines[1].starts_with("shmpipe: no receiver at ")
            && lines[1].contains("after waiting 0.5 s")
            && lines[1].contains(&format!("`shmpipe recv {sock}` running")),
        "{text:?}"
    );
}

/// A socket path in a directory that does not exist: both commands say so of the path given,
/// at once, without a word of the lock file beside the socket.
#[test]
fn a_missing_directory_is_reported_for_the_path_given() {
    let dir = TempDir::new();
    let sock = dir.path().join("no-such-dir").join("s");
    for cmd in [recv_cmd(&sock), send_cmd(&sock)] {
        let mut cmd = cmd;
        let out = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = finish(
            out,
            Duration::from_secs(10),
            "a command on a missing directory",
        );
        assert!(!out.status.success());
        let reason = one_line_reason(&out.stderr);
        assert!(
            reason.contains(&format!("{}: directory ", sock.display()))
                && reason.contains("does not exist"),
            "{reason}"
        );
        assert!(!reason.contains(".lock"), "{reason}");
    }
}

/// Sizes take suffixes (powers of 1024) or plain bytes; a bad one is refused naming the flag
/// as typed, not the library's fields (`send capacity`, `max_ring`).
#[test]
fn capacity_takes_suffixes_and_errors_name_the_flag() {
    let dir = TempDir::new();
    for (value, why) in [
        ("1000", "not a power of two"),
        ("2G", "above the largest capacity, 1G"),
        ("32", "below the smallest capacity"),
        ("4x", "not a size"),
        ("", "not a size"),
    ] {
        for cmd in [recv_cmd(&dir.sock()), send_cmd(&dir.sock())] {
            let mut cmd = cmd;
            let out = cmd
                .args(["--capacity", value])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(!out.status.success());
            let text = String::from_utf8_lossy(&out.stderr);
            assert!(
                text.contains(&format!("'{value}' for '--capacity")) && text.contains(why),
                "{value}: {text}"
            );
            assert!(
                !text.contains("max_ring") && !text.contains("send capacity"),
                "{text}"
            );
        }
    }
    // 128 MiB: above the library's default `max_ring`, which the CLI lifts to 1G. Only the
    // options are checked here (nobody listens), not a 128 MiB ring.
    let out = send_cmd(&dir.sock())
        .args(["--capacity", "128MiB", "--wait", "0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let reason = one_line_reason(&out.stderr);
    assert!(reason.contains("no receiver at"), "{reason}");
    // A stream through rings given as 4k (recv) and 65536 (send), and 64KiB and 1M.
    for (recv_cap, send_cap) in [("4k", "65536"), ("64KiB", "1M")] {
        let _g = serial();
        let recv = recv_cmd(&dir.sock())
            .args(["--capacity", recv_cap])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut recv = Reaper::new(recv);
        let output = read_stdout(recv.child());
        let mut input = vec![0u8; 1 << 20];
        pattern(0, &mut input);
        let mut send = send_cmd(&dir.sock())
            .args(["--capacity", send_cap])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = send.stdin.take().unwrap();
        let data = input.clone();
        let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
        let send = finish(send, Duration::from_secs(20), "send");
        let recv = finish(recv.take(), Duration::from_secs(20), "recv");
        writer.join().unwrap();
        assert!(
            send.status.success() && recv.status.success(),
            "{recv_cap}/{send_cap}: {} / {}",
            String::from_utf8_lossy(&send.stderr),
            String::from_utf8_lossy(&recv.stderr)
        );
        assert!(
            output.join().unwrap() == input,
            "{recv_cap}/{send_cap}: output differs"
        );
    }
}

/// `--help` shows the pipe, and each command's help the largest capacity.
#[test]
fn help_shows_the_pipe_and_the_largest_capacity() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("shmpipe recv /tmp/s | sha256sum &")
            && help.contains("| shmpipe send /tmp/s"),
        "{help}"
    );
    for sub in ["send", "recv"] {
        let out = Command::new(BIN).args([sub, "--help"]).output().unwrap();
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("--capacity <SIZE>") && help.contains("from 64 to 1G"),
            "{help}"
        );
        assert!(
            help.contains("--progress") && help.contains("--summary"),
            "{help}"
        );
    }
}

/// A `send` whose stdin is open but idle learns at once that its receiver died (not when
/// stdin ends, which may be never), and says so. The 10 s limit is a hang guard.
#[test]
fn send_on_an_idle_stdin_notices_that_the_receiver_died() {
    let _g = serial();
    let dir = TempDir::new();
    let mut recv = start_recv(&dir.sock(), Stdio::null(), Stdio::null());
    let mut send = start_send(&dir.sock(), Stdio::piped());
    // Held open, never written: stdin is idle, not at its end.
    let stdin = send.child().stdin.take().unwrap();
    // recv removes its socket file once it has accepted: the handshake is over.
    let deadline = Instant::now() + Duration::from_secs(10);
    while dir.sock().exists() {
        assert!(Instant::now() < deadline, "recv never accepted the sender");
        assert!(send.child().try_wait().unwrap().is_none(), "send exited");
        std::thread::sleep(Duration::from_millis(5));
    }
    recv.child().kill().unwrap();
    recv.child().wait().unwrap();
    let out = finish(
        send.take(),
        Duration::from_secs(10),
        "send on an idle stdin after its receiver died",
    );
    drop(stdin);
    assert!(!out.status.success());
    let reason = one_line_reason(&out.stderr);
    assert!(
        reason.contains("the receiver went away after 0 bytes, before stdin ended"),
        "{reason}"
    );
}

/// A receiver (played by this test) that consumes the whole stream and then neither confirms
/// nor goes away: `send` gives up after `--confirm-wait` and says so; one that goes away
/// without confirming: `send` says that instead.
#[test]
fn send_waits_for_the_confirmation_a_bounded_time_and_says_what_happened() {
    let _g = serial();
    for hold in [true, false] {
        let dir = TempDir::new();
        let mut listener = shmpipe::Listener::bind(dir.sock(), &shmpipe::Options::new()).unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let fake = std::thread::spawn(move || {
            let conn = listener.accept().unwrap();
            let (tx, mut rx) = conn.split();
            let mut got = 0usize;
            loop {
                match rx.drain(usize::MAX, |m| got += m.len()) {
                    Ok(_) => {}
                    Err(shmpipe::RecvError::Closed) => break,
                    Err(e) => panic!("fake receiver: {e}"),
                }
            }
            if hold {
                // Consumed, never confirmed: alive until `send` has exited (or a guard).
                let _ = done_rx.recv_timeout(Duration::from_secs(20));
            }
            drop((tx, rx));
            got
        });
        let t = Instant::now();
        let mut send = send_cmd(&dir.sock())
            .args(["--confirm-wait", "0.5"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        send.stdin
            .take()
            .unwrap()
            .write_all(b"twelve bytes")
            .unwrap();
        let out = finish(send, Duration::from_secs(15), "send without a confirmation");
        let elapsed = t.elapsed();
        done_tx.send(()).unwrap_or(());
        assert_eq!(fake.join().unwrap(), 12);
        assert!(!out.status.success());
        let reason = one_line_reason(&out.stderr);
        if hold {
            assert!(
                reason.contains("consumed all 12 bytes but did not confirm")
                    && reason.contains("within 0.5 s"),
                "{reason}"
            );
            assert!(elapsed >= Duration::from_millis(500), "{elapsed:?}");
        } else {
            assert!(
                reason.contains("consumed all 12 bytes but exited without confirming"),
                "{reason}"
            );
        }
    }
}

/// `--summary` prints one line at the end on each side; `--progress` draws nothing when
/// stderr is not a terminal, and changes nothing else.
#[test]
fn summary_is_one_line_on_each_side() {
    let _g = serial();
    let dir = TempDir::new();
    let recv = recv_cmd(&dir.sock())
        .args(["--summary", "--progress"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut recv = Reaper::new(recv);
    let output = read_stdout(recv.child());
    let mut input = vec![0u8; 3 << 20];
    pattern(0, &mut input);
    let mut send = send_cmd(&dir.sock())
        .args(["--summary", "--progress"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = send.stdin.take().unwrap();
    let data = input.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let send = finish(send, Duration::from_secs(20), "send");
    let recv = finish(recv.take(), Duration::from_secs(20), "recv");
    writer.join().unwrap();
    assert!(send.status.success() && recv.status.success());
    assert!(output.join().unwrap() == input, "output differs");
    for (out, verb) in [(&send, "sent"), (&recv, "received")] {
        let line = one_line_reason(&out.stderr);
        let line = line.trim_end();
        let rest = line
            .strip_prefix(&format!("shmpipe: {verb} {} bytes in ", 3 << 20))
            .unwrap_or_else(|| panic!("{line:?}"));
        let (messages, rest) = rest.split_once(" messages in ").expect(line);
        assert!(messages.parse::<u64>().unwrap() >= 1, "{line}");
        let (seconds, rate) = rest.split_once(" s (").expect(line);
        seconds.parse::<f64>().expect(line);
        rate.strip_suffix(" GB/s)")
            .expect(line)
            .parse::<f64>()
            .expect(line);
    }
}

#[test]
fn send_waits_for_a_receiver_that_starts_late() {
    let _g = serial();
    let dir = TempDir::new();
    let mut send = start_send(&dir.sock(), Stdio::piped());
    send.child()
        .stdin
        .take()
        .unwrap()
        .write_all(b"late but fine")
        .unwrap();
    // The receiver starts once `send` is seen retrying (asleep between two attempts to
    // connect), not after a guess at how long that takes.
    let pid = send.child().id();
    wait_until_asleep(
        pid,
        pid,
        Wait::Sleep,
        Duration::from_secs(20),
        "send waiting for a receiver",
        || {
            send.child().try_wait().unwrap().is_none()
                || panic!("send gave up before the receiver came")
        },
    );
    let recv = recv_cmd(&dir.sock())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let recv = finish(recv, Duration::from_secs(20), "recv");
    let send = finish(send.take(), Duration::from_secs(20), "send");
    assert!(
        send.status.success(),
        "{}",
        String::from_utf8_lossy(&send.stderr)
    );
    assert!(
        recv.status.success(),
        "{}",
        String::from_utf8_lossy(&recv.stderr)
    );
    assert_eq!(recv.stdout, b"late but fine");
}

#[test]
fn a_second_recv_on_a_live_socket_refuses() {
    let _g = serial();
    let dir = TempDir::new();
    let first = recv_cmd(&dir.sock())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _first = Reaper(Some(first));
    wait_for_socket(&dir.sock());
    let out = recv_cmd(&dir.sock()).output().unwrap();
    assert!(!out.status.success());
    let reason = one_line_reason(&out.stderr);
    assert!(reason.contains("another listener"), "{reason}");
}

/// A client that sends garbage, and one that connects and vanishes, do not end `recv`: each
/// is noted on stderr (one line each) and the real sender that comes next gets through.
#[test]
fn recv_ignores_clients_that_fail_the_handshake_and_serves_the_sender() {
    use rustix::net::{AddressFamily, SendFlags, SocketAddrUnix, SocketFlags, SocketType};
    let _g = serial();
    let dir = TempDir::new();
    let recv = recv_cmd(&dir.sock())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut recv = Reaper(Some(recv));
    wait_for_socket(&dir.sock());
    let addr = SocketAddrUnix::new(dir.sock()).unwrap();
    let rogue = || {
        let s = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        rustix::net::connect(&s, &addr).unwrap();
        s
    };
    let garbage = rogue();
    rustix::net::send(&garbage, b"not a hello, not anything", SendFlags::NOSIGNAL).unwrap();
    // The listener answers with a REJECT, then closes; wait for that before the next one.
    let mut buf = [0u8; 512];
    let _ = rustix::net::recv(&garbage, &mut buf, rustix::net::RecvFlags::empty());
    drop(garbage);
    drop(rogue());

    let mut send = send_cmd(&dir.sock())
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    send.stdin
        .take()
        .unwrap()
        .write_all(b"the real one")
        .unwrap();
    let send = finish(send, Duration::from_secs(20), "send");
    assert!(
        send.status.success(),
        "{}",
        String::from_utf8_lossy(&send.stderr)
    );
    let recv = finish(recv.0.take().unwrap(), Duration::from_secs(20), "recv");
    let stderr = String::from_utf8_lossy(&recv.stderr);
    assert!(recv.status.success(), "{stderr}");
    assert_eq!(recv.stdout, b"the real one");
    let ignored: Vec<&str> = stderr.lines().collect();
    assert_eq!(ignored.len(), 2, "{stderr}");
    assert!(
        ignored
            .iter()
            .all(|l| l.starts_with("shmpipe: ignored a connection: handshake with client")),
        "{stderr}"
    );
}
