//! Subcommands of `qforge`. Adding one means a file here with an `Args` struct and a `run`
//! function, a `mod` line and a `Command` variant.

mod bench;
mod demo;
mod embed;
mod error;
mod inspect;
mod model;
mod ops;
mod quantize;
mod report;

use clap::{Parser, Subcommand};

pub use error::CliError;

/// int8 model quantization for Rust: dynamic, static post-training and quantization-aware training.
#[derive(Debug, Parser)]
#[command(name = "qforge", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show dtypes, a quantize round trip and a dynamic int8 transformer (the default).
    Demo(demo::Args),
    /// Sentence embeddings of a BERT model folder (mean pooling, L2-normalized).
    Embed(embed::Args),
    /// The ops qforge knows and which of them have int8 kernels.
    Ops(ops::Args),
    /// Model latency and size, as JSON lines; `--report` renders a table and a chart.
    Bench(bench::Args),
    /// Quantize a model (architecture + fp32 weights) into a model file.
    Quantize(quantize::Args),
    /// Per-node dtypes, quantization parameters, sizes and why a node stayed f32.
    Inspect(inspect::Args),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command.unwrap_or(Command::Demo(demo::Args::default())) {
        Command::Demo(a) => demo::run(a),
        Command::Embed(a) => embed::run(a),
        Command::Ops(a) => ops::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Inspect(a) => inspect::run(a),
    }
}
