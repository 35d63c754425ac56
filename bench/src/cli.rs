//! `shmring bench`.

use std::error::Error;
use std::process::ExitCode;

/// Arguments of `shmring bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Finish quickly (fewer messages per cell).
    #[arg(long)]
    pub quick: bool,
}

/// Run the benchmark.
pub fn run(_args: BenchArgs) -> Result<ExitCode, Box<dyn Error>> {
    Err("not built yet".into())
}
