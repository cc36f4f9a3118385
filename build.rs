//! Compiles rust/sys/exit_guard.c (the engine's calls into Python, guarded against glibc's
//! pthread_exit unwinding into Rust frames; see rust/sys/mod.rs and rust/finalize.rs) for glibc targets only.

fn main() {
    println!("cargo::rerun-if-changed=rust/sys/exit_guard.c");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        cc::Build::new()
            .file("rust/sys/exit_guard.c")
            .flag("-fno-exceptions")
            .compile("exit_guard");
    }
}
