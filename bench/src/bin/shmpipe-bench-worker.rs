//! A benchmark worker process on its own, for the crate's tests (`shmpipe bench` re-executes
//! itself with `--worker` instead). It reads its job from stdin, a control socket.

fn main() -> std::process::ExitCode {
    shmpipe_bench::worker::main_with(shmpipe_bench::transport::run)
}
