//! `qforge bench --model minilm --mode fp32|dynamic --threads N --json FILE`: median latency at
//! batch 1, sequence 128 and the stored parameter size, printed and appended as a JSON line
//! `{"suite":"model","model":..,"mode":..,"batch":..,"seq":..,"threads":..,"median_ms":..,"size_bytes":..}`.

use std::io::Write;
use std::path::PathBuf;

use qapi::models::bert::last_hidden_state;

use super::model::{bench_input, median_ms, minilm_or_random, prepare, with_threads, Mode, Preset};
use super::CliError;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model to measure (`minilm`: all-MiniLM-L6-v2, or a random model of its shape offline).
    #[arg(long, default_value = "minilm")]
    model: String,
    #[arg(long, value_enum, default_value = "dynamic")]
    mode: Mode,
    /// Dynamic quantization preset.
    #[arg(long, value_enum, default_value = "qforge")]
    preset: Preset,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 20)]
    reps: usize,
    /// Append the result as a JSON line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<(), CliError> {
    if args.model != "minilm" {
        return Err(CliError::Usage(format!(
            "unknown model `{}`; available: minilm",
            args.model
        )));
    }
    let model = minilm_or_random()?;
    let graph = prepare(&model.graph, args.mode, args.preset)?;
    let size_bytes = qapi::stored_size_bytes(&graph);
    let enc = bench_input(&model, args.batch, args.seq)?;
    let ms = with_threads(args.threads, || {
        median_ms(3, args.reps, || {
            last_hidden_state(&graph, &enc).map(|_| ()).map_err(CliError::from)
        })
    })??;
    let mode = match args.mode {
        Mode::Fp32 => "fp32",
        Mode::Dynamic => "dynamic",
    };
    let line = serde_json::json!({
        "suite": "model", "model": args.model, "mode": mode, "batch": args.batch, "seq": enc.seq,
        "threads": args.threads, "median_ms": ms, "size_bytes": size_bytes,
    });
    eprintln!("model: {}", model.source);
    println!("{line}");
    if let Some(path) = &args.json {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| CliError::io(path, e))?;
        writeln!(f, "{line}").map_err(|e| CliError::io(path, e))?;
    }
    Ok(())
}
