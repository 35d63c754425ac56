//! Cross-process criterion benches (being written).

fn main() {}
