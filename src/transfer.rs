//! `shmring send` and `shmring recv` (built with the handshake).

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `shmring send`.
#[derive(Debug, clap::Args)]
pub(crate) struct SendArgs {
    /// Path of the receiver's socket.
    socket: PathBuf,
}

/// Arguments of `shmring recv`.
#[derive(Debug, clap::Args)]
pub(crate) struct RecvArgs {
    /// Path of the socket to listen on.
    socket: PathBuf,
}

pub(crate) fn send(args: SendArgs) -> Result<ExitCode, Box<dyn Error>> {
    Err(format!("send to {}: not built yet (needs the handshake)", args.socket.display()).into())
}

pub(crate) fn recv(args: RecvArgs) -> Result<ExitCode, Box<dyn Error>> {
    Err(format!("recv on {}: not built yet (needs the handshake)", args.socket.display()).into())
}
