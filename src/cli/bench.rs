//! `qforge bench --model minilm|mobilenet_v2|resnet18|unet --mode fp32|dynamic|static
//! --threads N --json FILE`: median latency at batch 1 (sequence 128 for MiniLM, 224x224 or
//! 256x256 images for the CNNs) and the size on disk, printed and appended as a JSON line
//! `{"suite":"model","model":..,"mode":..,"batch":..,"seq"|"hw":..,"threads":..,"median_ms":..,"size_bytes":..}`.
//! `qforge bench --report --json FILE` renders such a file as Markdown and SVG.
//! `qforge bench ... --interleave` serves timings call by call to a harness on stdin (see
//! [`interleave`]), so that a peer engine can be timed in turn with qforge under the same
//! machine state.

use std::io::Write;
use std::path::PathBuf;

use qapi::models::bert::last_hidden_state;

use super::model::{bench_input, median_ms, minilm_or_random, prepare, with_threads, Mode, Preset};
use super::CliError;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model to measure: `minilm` (all-MiniLM-L6-v2, or a random model of its shape offline), or
    /// `mobilenet_v2`, `resnet18`, `unet` (seeded random weights).
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
    /// Append the result as a JSON line to this file (with `--report`: the rows to render).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Render the rows of `--json FILE` as FILE.md and FILE.svg instead of measuring.
    #[arg(long)]
    report: bool,
    /// Prepare the model, print one `{"ready":..}` line, then answer each line `N` read from
    /// stdin with the times of `N` runs as `{"times_ms":[..]}`, until stdin closes.
    #[arg(long, conflicts_with = "report")]
    interleave: bool,
}

pub fn run(args: Args) -> Result<(), CliError> {
    if args.report {
        let rows = args
            .json
            .as_ref()
            .ok_or_else(|| CliError::Usage("--report needs --json FILE with the rows to render".into()))?;
        return super::report::render(rows);
    }
    if qapi::benchmark::CNN_MODELS.contains(&args.model.as_str()) {
        let mode = match args.mode {
            Mode::Fp32 => "fp32",
            Mode::Static => "static",
            Mode::Dynamic => {
                return Err(CliError::Usage(format!(
                    "{} is a CNN: use --mode fp32 or --mode static",
                    args.model
                )))
            }
        };
        if args.interleave {
            let (graph, x) = qapi::benchmark::cnn_input(&args.model, mode)?;
            let ready = serde_json::json!({"ready": true, "model": args.model, "mode": mode});
            return interleave(
                &ready,
                args.threads,
                || x.clone(),
                |x| graph.run(x).map(|_| ()).map_err(CliError::from),
            );
        }
        let row = qapi::benchmark::bench_cnn(&args.model, mode, args.threads, args.reps)?;
        return emit(&row.json(), args.json.as_deref());
    }
    if args.model != "minilm" {
        return Err(CliError::Usage(format!(
            "unknown model `{}`; available: minilm, {}",
            args.model,
            qapi::benchmark::CNN_MODELS.join(", ")
        )));
    }
    let mode = match args.mode {
        Mode::Fp32 => "fp32",
        Mode::Dynamic => "dynamic",
        Mode::Static => {
            return Err(CliError::Usage(
                "static quantization of transformers is not supported; use --mode dynamic".into(),
            ))
        }
    };
    let model = minilm_or_random()?;
    let graph = prepare(&model.graph, args.mode, args.preset)?;
    let size_bytes = qapi::stored_size_bytes(&graph);
    let enc = bench_input(&model, args.batch, args.seq)?;
    if args.interleave {
        let ready = serde_json::json!({
            "ready": true, "model": args.model, "mode": mode, "source": model.source,
        });
        return interleave(
            &ready,
            args.threads,
            || (),
            |()| last_hidden_state(&graph, &enc).map(|_| ()).map_err(CliError::from),
        );
    }
    let ms = with_threads(args.threads, || {
        median_ms(3, args.reps, || {
            last_hidden_state(&graph, &enc).map(|_| ()).map_err(CliError::from)
        })
    })??;
    let line = serde_json::json!({
        "suite": "model", "model": args.model, "mode": mode, "batch": args.batch, "seq": enc.seq,
        "threads": args.threads, "median_ms": ms, "size_bytes": size_bytes,
    });
    eprintln!("model: {}", model.source);
    emit(&line.to_string(), args.json.as_deref())
}

/// Serves timings on request: prints `ready`, then for each stdin line holding a count `N`
/// runs `f` `N` times on `threads` threads, each on an input `setup` makes before the clock
/// starts, and prints `{"times_ms":[..]}` (one entry per run); an empty line is skipped,
/// anything else is an error. Returns when stdin closes.
fn interleave<I>(
    ready: &serde_json::Value,
    threads: usize,
    mut setup: impl FnMut() -> I + Send,
    mut f: impl FnMut(I) -> Result<(), CliError> + Send,
) -> Result<(), CliError> {
    println!("{ready}");
    std::io::stdout()
        .flush()
        .map_err(|e| CliError::io(std::path::Path::new("stdout"), e))?;
    with_threads(threads, || {
        for line in std::io::stdin().lines() {
            let line = line.map_err(|e| CliError::io(std::path::Path::new("stdin"), e))?;
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let n: usize = line
                .parse()
                .map_err(|_| CliError::Usage(format!("--interleave reads run counts, one per line; got `{line}`")))?;
            let mut times = Vec::with_capacity(n);
            for _ in 0..n {
                let input = setup();
                let t = std::time::Instant::now();
                f(input)?;
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            println!("{}", serde_json::json!({ "times_ms": times }));
            std::io::stdout()
                .flush()
                .map_err(|e| CliError::io(std::path::Path::new("stdout"), e))?;
        }
        Ok(())
    })?
}

/// Prints a JSON line and appends it to `json` when given.
fn emit(line: &str, json: Option<&std::path::Path>) -> Result<(), CliError> {
    println!("{line}");
    if let Some(path) = json {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| CliError::io(path, e))?;
        writeln!(f, "{line}").map_err(|e| CliError::io(path, e))?;
    }
    Ok(())
}
