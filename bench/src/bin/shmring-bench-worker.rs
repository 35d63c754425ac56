//! A benchmark worker process on its own, for the crate's tests (`shmring bench` re-executes
//! itself with `--worker` instead). It reads its job from stdin, a control socket.

fn main() -> std::process::ExitCode {
    shmring_bench::worker::main_with(shmring_bench::transport::run)
}
