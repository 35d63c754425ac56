//! The examples run: an echo server serving several round-trip clients at once, the README's
//! quickstart, and (feature `tokio`, on in `cargo test --workspace`) the tokio echo service
//! with many clients and its shutdown on Ctrl-C. `cargo test` builds examples before it runs tests; a filtered run
//! (`cargo test --test examples`) may not, and then this says so and skips, except with `CI`
//! set, where a test that cannot run fails.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn example(name: &str) -> Option<PathBuf> {
    // target/<profile>/deps/examples-<hash> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("examples").join(name);
    if path.exists() {
        Some(path)
    } else {
        skip(&format!(
            "{} not built (run the whole `cargo test`)",
            path.display()
        ));
        None
    }
}

#[test]
fn echo_server_serves_several_rtt_clients_at_once() {
    let (Some(server), Some(client)) = (example("echo_server"), example("rtt_client")) else {
        return;
    };
    let _g = serial();
    let dir = TempDir::new();
    let srv = Command::new(&server)
        .arg(dir.sock())
        .arg("4")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let srv = Reaper(Some(srv));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !dir.sock().exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "echo server never listened"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let clients: Vec<_> = (0..4)
        .map(|i| {
            Reaper::new(
                Command::new(&client)
                    .arg(dir.sock())
                    .arg("2000")
                    .arg((16 << i).to_string())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    // Each is killed when dropped, should one of them fail.
    for (i, mut c) in clients.into_iter().enumerate() {
        let out = finish(c.take(), Duration::from_secs(60), "rtt client");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "client {i}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("2000 round trips"), "{text}");
    }
    let mut srv = srv;
    let out = finish(
        srv.0.take().unwrap(),
        Duration::from_secs(20),
        "echo server",
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert_eq!(log.matches("connected").count(), 4, "{log}");
    assert_eq!(log.matches("closed").count(), 4, "{log}");
}

#[test]
fn quickstart_moves_lines() {
    let Some(quickstart) = example("quickstart") else {
        return;
    };
    let _g = serial();
    let tmp = TempDir::new();
    // The example uses a fixed path under $TMPDIR: give it a private one.
    let mut server = Reaper::new(
        Command::new(&quickstart)
            .arg("server")
            .env("TMPDIR", tmp.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let sock = tmp.path().join("shmpipe-quickstart.sock");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "quickstart server never listened"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut client = Command::new(&quickstart)
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = client.stdin.take().unwrap();
    let mut client = Reaper::new(client);
    std::io::Write::write_all(&mut { stdin }, b"hello\nworld\n").unwrap();
    let c = finish(client.take(), Duration::from_secs(20), "quickstart client");
    assert!(c.status.success());
    let s = finish(server.take(), Duration::from_secs(20), "quickstart server");
    assert!(s.status.success());
    assert_eq!(String::from_utf8_lossy(&s.stdout), "hello\nworld\n");
}

#[test]
fn the_readme_shows_the_quickstart_example_as_it_is() {
    let readme = include_str!("../README.md");
    let example = include_str!("../examples/quickstart.rs");
    // The example's code, without its two leading comment lines.
    let code: String = example
        .lines()
        .skip_while(|l| l.starts_with("//!"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        readme.contains(&code),
        "README.md's library example differs from examples/quickstart.rs"
    );
}

#[test]
#[cfg(feature = "tokio")]
fn tokio_echo_serves_many_clients_in_one_runtime() {
    let Some(echo) = example("tokio_echo") else {
        return;
    };
    let _g = serial();
    let dir = TempDir::new();
    let child = Command::new(&echo)
        .arg(dir.sock())
        .args(["8", "500"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = finish(child, Duration::from_secs(60), "tokio_echo with clients");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(stdout.matches("500 round trips").count(), 8, "{stdout}");
    assert_eq!(stderr.matches("client closed").count(), 8, "{stderr}");
    assert!(!dir.sock().exists(), "the socket file is removed");
}

#[test]
#[cfg(feature = "tokio")]
fn tokio_echo_shuts_down_cleanly_on_ctrl_c() {
    let Some(echo) = example("tokio_echo") else {
        return;
    };
    let _g = serial();
    let dir = TempDir::new();
    let child = Command::new(&echo)
        .arg(dir.sock())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Reaper(Some(child));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !dir.sock().exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "tokio_echo never listened"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // A client connects and stays: shutdown must not wait for it to leave.
    let conn = shmpipe::connect(dir.sock(), &shmpipe::Options::new()).unwrap();
    let (mut tx, mut rx) = conn.split();
    tx.send(b"ping").unwrap();
    let mut buf = Vec::new();
    rx.recv_timeout(&mut buf, Duration::from_secs(10)).unwrap();
    assert_eq!(buf, b"ping");
    let c = child.0.take().unwrap();
    let pid = rustix::process::Pid::from_child(&c);
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let out = finish(c, Duration::from_secs(10), "tokio_echo after Ctrl-C");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Ctrl-C, shutting down"), "{stderr}");
    assert!(stderr.contains("tokio_echo: done"), "{stderr}");
    assert!(!dir.sock().exists(), "the socket file is removed");
    // The server closed its ring: our receiver says so.
    assert!(matches!(
        rx.recv_timeout(&mut buf, Duration::from_secs(5)),
        Err(shmpipe::RecvTimeoutError::Failed(
            shmpipe::RecvError::Closed | shmpipe::RecvError::PeerGone
        ))
    ));
}
