//! The `shmring` command line: `send`, `recv` and `bench`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod transfer;

/// Messages between processes on one Linux host through shared memory.
#[derive(Debug, Parser)]
#[command(name = "shmring", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Connect to a `shmring recv` listening on SOCKET and stream stdin to it.
    Send(transfer::SendArgs),
    /// Listen on SOCKET, accept one sender, and write everything it sends to stdout.
    /// Clients that fail the handshake are noted on stderr and ignored.
    Recv(transfer::RecvArgs),
    /// Measure shmring against pipes, Unix sockets and the machine's floors.
    Bench(Box<shmring_bench::cli::BenchArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Send(args) => transfer::send(args),
        Command::Recv(args) => transfer::recv(args),
        Command::Bench(args) => shmring_bench::cli::run(*args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shmring: {e}");
            ExitCode::FAILURE
        }
    }
}
