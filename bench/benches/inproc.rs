//! In-process criterion benches (being written).

fn main() {}
