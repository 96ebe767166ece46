//! `cargo xtask bench [SUITE ...] [--json FILE] [--no-history] [suite flags]`: runs benchmark
//! suites, collects their JSON lines into one file, and keeps a per-machine history.
//!
//! The `model` suite runs `qforge bench` (batch 1, one thread) on every model and mode of
//! [`MODEL_RUNS`]: all-MiniLM-L6-v2 (the fetched model, or a random one of its shape) dynamic and
//! fp32, and MobileNetV2, ResNet18 and UNet static and fp32; suite flags are not passed to it.
//!
//! Regression check: every run also measures the fp32 GEMM baseline (`linear_f32`). Each row's
//! `median_ns` is divided by the geometric mean of the baseline's times from the same run, so a
//! machine that is 20 % slower today moves both alike and the ratio stays put. A row whose ratio
//! grew by more than 10 % against the previous run in the history file is flagged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::{cargo, run, suite_names, SUITES};

/// The suite whose rows normalize all others.
const BASELINE: &str = "linear_f32";
/// The suite measured through the `qforge` binary rather than an example.
const MODEL_SUITE: &str = "model";
/// (model, mode, timed repetitions) of the `model` suite.
pub(crate) const MODEL_RUNS: &[(&str, &str, usize)] = &[
    ("minilm", "dynamic", 20),
    ("minilm", "fp32", 10),
    ("mobilenet_v2", "static", 20),
    ("mobilenet_v2", "fp32", 10),
    ("resnet18", "static", 20),
    ("resnet18", "fp32", 5),
    ("unet", "static", 10),
    ("unet", "fp32", 3),
];
/// Ratio growth beyond which a row is reported as a regression.
const THRESHOLD: f64 = 0.10;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

pub fn bench(args: &[String]) -> Result<(), String> {
    let mut names = Vec::new();
    let mut forwarded = Vec::new();
    let mut json_out: Option<PathBuf> = None;
    let mut history = true;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => json_out = Some(it.next().ok_or("--json needs a file")?.into()),
            "--no-history" => history = false,
            flag if flag.starts_with("--") => {
                forwarded.push(a.clone());
                if let Some(v) = it.next() {
                    forwarded.push(v.clone());
                }
            }
            _ => names.push(a.as_str()),
        }
    }
    let mut selected: Vec<&(&str, &str, &str)> = if names.is_empty() {
        SUITES.iter().collect()
    } else {
        names
            .iter()
            .map(|n| {
                SUITES
                    .iter()
                    .find(|s| s.0 == *n)
                    .ok_or_else(|| format!("unknown suite `{n}`; suites: {}", suite_names()))
            })
            .collect::<Result<_, _>>()?
    };
    if history && !selected.iter().any(|s| s.0 == BASELINE) {
        selected.insert(
            0,
            SUITES
                .iter()
                .find(|s| s.0 == BASELINE)
                .expect("baseline suite is listed"),
        );
    }
    let scratch = workspace().join("target/bench");
    std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for (name, package, example) in selected {
        eprintln!("== bench {name}");
        let part = scratch.join(format!("{name}.jsonl"));
        let _ = std::fs::remove_file(&part);
        if *name == MODEL_SUITE {
            bench_models(&part)?;
        } else {
            let mut cmd = cargo();
            cmd.args([
                "run",
                "--release",
                "--quiet",
                "-p",
                package,
                "--example",
                example,
                "--",
                "--json",
            ])
            .arg(&part)
            .args(&forwarded);
            run(cmd)?;
        }
        let text = std::fs::read_to_string(&part).map_err(|e| format!("{name} wrote no JSON: {e}"))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut row: Value =
                serde_json::from_str(line).map_err(|e| format!("{name}: bad JSON line {line:?}: {e}"))?;
            if row.get("suite").is_none() {
                row["suite"] = json!(name);
            }
            rows.push(row);
        }
    }
    let out = json_out.unwrap_or_else(|| scratch.join("latest.jsonl"));
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&out, text).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    eprintln!("{} rows in {}", rows.len(), out.display());
    if history {
        record(&rows)?;
    }
    Ok(())
}

/// The `model` suite: `qforge bench --json part` for each of [`MODEL_RUNS`], with the models
/// folder of `cargo xtask fetch-models`.
fn bench_models(part: &Path) -> Result<(), String> {
    for (model, mode, reps) in MODEL_RUNS {
        let mut cmd = cargo();
        cmd.args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "qforge",
            "--bin",
            "qforge",
            "--",
            "bench",
        ])
        .args([
            "--model",
            model,
            "--mode",
            mode,
            "--threads",
            "1",
            "--reps",
            &reps.to_string(),
        ])
        .arg("--json")
        .arg(part)
        .env("QFORGE_MODELS", crate::fetch::models_dir());
        run(cmd)?;
    }
    Ok(())
}

/// A row's identity: every field except the measurements.
fn key(row: &Value) -> String {
    let mut parts: Vec<String> = row
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "median_ns" | "gops" | "gflops" | "gelems" | "median_ms" | "size_bytes" | "chain_gops"
                    )
                })
                .map(|(k, v)| format!("{k}={v}"))
                .collect()
        })
        .unwrap_or_default();
    parts.sort();
    parts.join(",")
}

/// A row's time in ns: `median_ns`, `median_ms`, or derived from a GEMM row's GFLOP/s.
fn time_ns(row: &Value) -> Option<f64> {
    let gemm_time = || {
        let flops = ["m", "k", "n"]
            .iter()
            .map(|d| row.get(*d).and_then(Value::as_f64))
            .product::<Option<f64>>()?
            * 2.0;
        Some(flops / row.get("gflops").and_then(Value::as_f64)?)
    };
    row.get("median_ns")
        .and_then(Value::as_f64)
        .or_else(|| row.get("median_ms").and_then(Value::as_f64).map(|ms| ms * 1e6))
        .or_else(gemm_time)
}

/// The machine's name in the history: CPU model and core count.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cpu}-{cores}c")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .collect()
}

/// Appends this run's normalized times to the machine's history and flags regressions.
fn record(rows: &[Value]) -> Result<(), String> {
    let baseline: Vec<f64> = rows
        .iter()
        .filter(|r| r["suite"] == BASELINE)
        .filter_map(time_ns)
        .collect();
    if baseline.is_empty() {
        return Err("the baseline suite produced no rows".into());
    }
    let base = (baseline.iter().map(|t| t.ln()).sum::<f64>() / baseline.len() as f64).exp();
    let ratios: BTreeMap<String, f64> = rows
        .iter()
        .filter(|r| r["suite"] != BASELINE)
        .filter_map(|r| time_ns(r).map(|t| (key(r), t / base)))
        .collect();
    let dir = workspace().join("benches/history");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join(format!("{}.jsonl", machine()));
    let previous: Option<BTreeMap<String, f64>> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.lines().rev().find(|l| !l.trim().is_empty()).map(str::to_string))
        .and_then(|l| serde_json::from_str::<Value>(&l).ok())
        .and_then(|v| serde_json::from_value(v["ratios"].clone()).ok());
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let entry = json!({"unix_time": stamp, "baseline_ns": base, "ratios": ratios});
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    text.push_str(&format!("{entry}\n"));
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    match previous {
        None => eprintln!("history: first run on this machine, recorded in {}", path.display()),
        Some(prev) => {
            let mut regressions = 0;
            for (k, r) in &ratios {
                if let Some(p) = prev.get(k) {
                    let change = r / p - 1.0;
                    if change > THRESHOLD {
                        regressions += 1;
                        eprintln!("REGRESSION {:+.1}% {k}", 100.0 * change);
                    }
                }
            }
            eprintln!(
                "history: {} rows compared with the previous run, {regressions} regressions (> {:.0} %)",
                ratios.len(),
                100.0 * THRESHOLD
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rows_key_leaves_out_its_measurements() {
        let row = |ns: f64, chain: f64, c_in: u64| {
            json!({"suite": "conv", "name": "unet32.e1.3", "c_in": c_in, "threads": 1,
                "gops": 600.0 * ns, "median_ns": ns, "chain_gops": chain})
        };
        assert_eq!(key(&row(1.0, 700.0, 32)), key(&row(2.0, 650.0, 32)));
        assert_ne!(key(&row(1.0, 700.0, 32)), key(&row(1.0, 700.0, 64)));
        assert_eq!(time_ns(&row(3.0, 700.0, 32)), Some(3.0));
    }
}
