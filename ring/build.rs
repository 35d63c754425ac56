//! Lets CI build the loom mutants (ring/tests/loom.rs) without rebuilding every dependency:
//! `SHMRING_MUTANT=light` sets `--cfg shmring_mutant="light"` for this crate alone. Nothing is
//! set otherwise.

fn main() {
    println!("cargo::rerun-if-env-changed=SHMRING_MUTANT");
    println!(
        "cargo::rustc-check-cfg=cfg(shmring_mutant, values(\"light\", \"heavy\", \"no_clear\"))"
    );
    if let Ok(m) = std::env::var("SHMRING_MUTANT") {
        println!("cargo::rustc-cfg=shmring_mutant=\"{m}\"");
    }
}
