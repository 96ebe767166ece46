//! `qforge ops`: every op qforge's graphs know, and which int8 kernels it has for static
//! (post-training and quantization-aware) and dynamic quantization.

use super::CliError;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<(), CliError> {
    let ops = qapi::supported_ops();
    println!("{:<18} {:<5} {:<58} dynamic int8", "op", "fp32", "static int8");
    for op in &ops {
        println!(
            "{:<18} {:<5} {:<58} {}",
            format!("{:?}", op.kind),
            "yes",
            op.static_int8.unwrap_or("-"),
            op.dynamic.unwrap_or("-")
        );
    }
    let statics = ops.iter().filter(|o| o.static_int8.is_some()).count();
    let dynamic = ops.iter().filter(|o| o.dynamic.is_some()).count();
    println!(
        "\n{} ops, {statics} with static int8 kernels, {dynamic} with dynamic int8 kernels",
        ops.len()
    );
    Ok(())
}
