//! Lets CI build the loom mutants (ring/tests/loom.rs) without rebuilding every dependency:
//! `SHMPIPE_MUTANT=light` sets `--cfg shmpipe_mutant="light"` for this crate alone. Nothing is
//! set otherwise.

fn main() {
    println!("cargo::rerun-if-env-changed=SHMPIPE_MUTANT");
    println!(
        "cargo::rustc-check-cfg=cfg(shmpipe_mutant, values(\"light\", \"heavy\", \"no_clear\"))"
    );
    if let Ok(m) = std::env::var("SHMPIPE_MUTANT") {
        println!("cargo::rustc-cfg=shmpipe_mutant=\"{m}\"");
    }
}
