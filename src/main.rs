//! The `shmring` command line (grows with the handshake and benchmark issues).
fn main() {}
