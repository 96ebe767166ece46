//! `qforge inspect MODEL`: every node of a saved model: op, stored dtypes and quantization
//! parameters, sizes, and why a node stayed f32.

use std::path::PathBuf;

use qapi::NodeStatus;

use super::CliError;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model file written by `qforge quantize` (or `qapi::save_graph`).
    model: PathBuf,
}

pub fn run(args: Args) -> Result<(), CliError> {
    let nodes = qapi::inspect(&args.model)?;
    let mut total = 0usize;
    for n in &nodes {
        let status = match &n.status {
            Some(NodeStatus::Quantized { detail }) => format!("int8: {detail}"),
            Some(NodeStatus::Float { reason }) => format!("f32: {reason}"),
            Some(NodeStatus::NotApplicable) | None => String::new(),
        };
        println!("{}  [{}]  {status}", n.name, n.op);
        if let Some(out) = &n.output {
            println!("    output: {out}");
        }
        for (name, desc, bytes) in &n.params {
            println!("    {name}: {desc} ({bytes} bytes)");
            total += bytes;
        }
    }
    let size = std::fs::metadata(&args.model)
        .map_err(|e| CliError::io(&args.model, e))?
        .len();
    println!(
        "\n{} nodes, {total} bytes of parameters, file {size} bytes",
        nodes.len()
    );
    Ok(())
}
