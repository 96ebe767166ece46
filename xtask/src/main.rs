//! Project tasks: `cargo xtask test`, `cargo xtask bench [SUITE] [--json FILE]`,
//! `cargo xtask fetch-models`, `cargo xtask cross-test`.
//!
//! Benchmark suites live next to the code they measure as release-mode examples
//! (`crates/<crate>/examples/bench_<suite>.rs`); this runner builds and runs them and forwards
//! `--json FILE` so every suite writes the same JSON-lines format.

mod bench;
mod fetch;

use std::process::{Command, ExitCode};

/// (suite name, package, example) of every benchmark suite.
pub(crate) const SUITES: &[(&str, &str, &str)] = &[
    ("quantize", "qtensor", "bench_quantize"),
    ("gemm", "qkernels", "bench_gemm"),
    ("conv", "qkernels", "bench_conv"),
    ("linear_f32", "qgraph", "bench_linear_f32"),
    // Not an example: `qforge bench` on every model and mode (`bench::MODEL_RUNS`).
    ("model", "qforge", "qforge bench"),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("bench") => bench::bench(&args[1..]),
        Some("fetch-models") => fetch::fetch_models().map(|dir| eprintln!("models in {}", dir.display())),
        Some("cross-test") => cross_test(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask test [cargo test args]\n       cargo xtask fetch-models\n       cargo xtask cross-test [cargo test args]\n       cargo xtask bench [SUITE ...] [--json FILE] [--no-history]\nsuites: {}", suite_names());
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn suite_names() -> String {
    SUITES.iter().map(|s| s.0).collect::<Vec<_>>().join(", ")
}

pub(crate) fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

pub(crate) fn run(mut cmd: Command) -> Result<(), String> {
    let status = cmd.status().map_err(|e| format!("could not start {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

/// Fetches the real models, then runs every test of the workspace (unit, integration and doc
/// tests). Tests that need a model read `QFORGE_MODELS`; `QFORGE_REQUIRE_MODELS=1` tells them the
/// models were fetched, so a missing file is a failure rather than a skip.
fn test(extra: &[String]) -> Result<(), String> {
    let mut cmd = cargo();
    cmd.args(["test", "--workspace"]).args(extra);
    match fetch::fetch_models() {
        Ok(dir) => {
            cmd.env("QFORGE_MODELS", dir).env("QFORGE_REQUIRE_MODELS", "1");
        }
        Err(e) => eprintln!("warning: models not fetched ({e}); tests that need them will be skipped"),
    }
    run(cmd)
}

/// The aarch64 target the portable kernels are checked on.
const CROSS_TARGET: &str = "aarch64-unknown-linux-gnu";

/// Builds the numeric crates for aarch64 and runs their tests under user-mode QEMU: there the
/// kernels take the portable path, which must give the same results as on x86-64.
/// Needs `rustup target add aarch64-unknown-linux-gnu` and the Debian packages `qemu-user`
/// and `gcc-aarch64-linux-gnu` (linker and C library).
fn cross_test(extra: &[String]) -> Result<(), String> {
    let missing: Vec<&str> = ["aarch64-linux-gnu-gcc", "qemu-aarch64"]
        .into_iter()
        .filter(|tool| Command::new(tool).arg("--version").output().is_err())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "cross-test needs {}: install the Debian packages gcc-aarch64-linux-gnu and qemu-user",
            missing.join(" and ")
        ));
    }
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == CROSS_TARGET)
        })
        .unwrap_or(false);
    if !installed {
        return Err(format!(
            "cross-test needs the {CROSS_TARGET} standard library: rustup target add {CROSS_TARGET}"
        ));
    }
    let mut cmd = cargo();
    cmd.args(["test", "--target", CROSS_TARGET, "-p", "qtensor", "-p", "qkernels"])
        .args(extra)
        .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER", "aarch64-linux-gnu-gcc")
        .env(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER",
            "qemu-aarch64 -L /usr/aarch64-linux-gnu",
        );
    run(cmd)
}
