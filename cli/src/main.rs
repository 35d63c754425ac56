//! The `shmpipe` command line: `send`, `recv` and `bench`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod transfer;

/// The pipe of the README, under `shmpipe --help`.
const EXAMPLE: &str = "\
Example: stream bytes to another process and check that they arrived whole:
  shmpipe recv /tmp/s | sha256sum &
  head -c 1G /dev/urandom | tee >(sha256sum) | shmpipe send /tmp/s

`send` exits 0 only once `recv` has written everything to its stdout; either side exits \
non-zero with a one-line reason if anything fails.";

/// Messages between processes on one Linux host through shared memory.
#[derive(Debug, Parser)]
#[command(name = "shmpipe", version, about, after_help = EXAMPLE)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Connect to a `shmpipe recv` listening on PATH and stream stdin to it.
    Send(transfer::SendArgs),
    /// Listen on PATH, accept one sender, and write everything it sends to stdout.
    /// Clients that fail the handshake are noted on stderr and ignored.
    Recv(transfer::RecvArgs),
    /// Measure shmpipe against pipes, Unix sockets and the machine's floors.
    Bench(Box<shmpipe_bench::cli::BenchArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Send(args) => transfer::send(args),
        Command::Recv(args) => transfer::recv(args),
        Command::Bench(args) => shmpipe_bench::cli::run(*args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shmpipe: {e}");
            ExitCode::FAILURE
        }
    }
}
