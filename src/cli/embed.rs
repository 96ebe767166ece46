//! `qforge embed --model DIR --mode fp32|dynamic --input sentences.txt --output emb.safetensors`:
//! sentence embeddings (mean pooling over the attention mask, L2-normalized) of every non-empty
//! line, saved as the f32 tensor `embeddings` `[n, hidden]`.

use std::path::PathBuf;

use qapi::models::bert::{last_hidden_state, mean_pool_normalize};
use qapi::models::tokenizer::Padding;
use safetensors::tensor::{Dtype, TensorView};

use super::model::{load_dir, prepare, Mode, Preset};
use super::CliError;

/// Sentences per forward pass.
const BATCH: usize = 32;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// BERT model folder (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    #[arg(long, value_enum, default_value = "fp32")]
    mode: Mode,
    /// Dynamic quantization preset.
    #[arg(long, value_enum, default_value = "qforge")]
    preset: Preset,
    /// Text file, one sentence per line.
    #[arg(long)]
    input: PathBuf,
    /// Output safetensors file.
    #[arg(long)]
    output: PathBuf,
}

pub fn run(args: Args) -> Result<(), CliError> {
    let model = load_dir(&args.model)?;
    let tokenizer = model.tokenizer.as_ref().expect("load_dir loads the tokenizer");
    let graph = prepare(&model.graph, args.mode, args.preset)?;
    let text = std::fs::read_to_string(&args.input).map_err(|e| CliError::io(&args.input, e))?;
    let sentences: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if sentences.is_empty() {
        return Err(CliError::Usage(format!(
            "{} has no sentences; write one per line",
            args.input.display()
        )));
    }
    let mut embeddings = Vec::with_capacity(sentences.len() * model.config.hidden_size);
    for chunk in sentences.chunks(BATCH) {
        let enc = tokenizer.encode(chunk, Padding::Longest)?;
        let hidden = last_hidden_state(&graph, &enc)?;
        embeddings.extend_from_slice(mean_pool_normalize(&hidden, &enc.attention_mask)?.data());
    }
    let bytes: Vec<u8> = embeddings.iter().flat_map(|v| v.to_le_bytes()).collect();
    let shape = vec![sentences.len(), model.config.hidden_size];
    let view = TensorView::new(Dtype::F32, shape.clone(), &bytes).map_err(|e| CliError::Usage(e.to_string()))?;
    safetensors::serialize_to_file([("embeddings", view)], &None, &args.output)
        .map_err(|e| CliError::Usage(format!("writing {}: {e}", args.output.display())))?;
    eprintln!(
        "{} embeddings {:?} -> {}",
        sentences.len(),
        shape,
        args.output.display()
    );
    Ok(())
}
