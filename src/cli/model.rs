//! What several subcommands share: finding and loading a BERT model (or a random one of the
//! same shape when nothing is downloaded), turning it fp32 or dynamic int8, benchmark inputs and
//! timing.

use std::path::{Path, PathBuf};

use clap::ValueEnum;
use qapi::dynamic::DynamicConfig;
use qapi::models::bert::{build_bert, load_bert, randomize, BertConfig};
use qapi::models::tokenizer::{BertTokenizer, Encoded, Padding};
use qgraph::{Graph, OpKind};

use super::CliError;

/// How the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// The original fp32 graph.
    Fp32,
    /// Linear layers dynamically quantized (see `--preset`).
    Dynamic,
    /// Static int8 (CNNs), calibrated on random images.
    Static,
}

/// Dynamic quantization settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Preset {
    /// Per-channel int8 weights, per-row int8 activations (most accurate).
    #[default]
    Qforge,
    /// PyTorch's x86 dynamic quantization, output for output.
    PytorchFbgemm,
    /// float16 weights, f32 compute.
    Float16,
}

impl Preset {
    /// The op kinds quantized: the qforge preset also stores embedding tables as 8-bit rowwise
    /// tables (the word embeddings are half of a small transformer's bytes); the PyTorch-parity
    /// preset quantizes Linears only, as PyTorch's `quantize_dynamic` defaults do.
    pub fn kinds(self) -> &'static [OpKind] {
        match self {
            Preset::Qforge => &[OpKind::Linear, OpKind::Embedding],
            Preset::PytorchFbgemm | Preset::Float16 => &[OpKind::Linear],
        }
    }

    pub fn config(self) -> DynamicConfig {
        match self {
            Preset::Qforge => DynamicConfig::qforge(),
            Preset::PytorchFbgemm => DynamicConfig::pytorch_fbgemm(),
            Preset::Float16 => DynamicConfig::float16(),
        }
    }
}

/// `$QFORGE_MODELS`, else `target/models` (where `cargo xtask fetch-models` puts them).
pub fn models_root() -> PathBuf {
    std::env::var_os("QFORGE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/models"))
}

/// The all-MiniLM-L6-v2 folder, if it has been fetched.
pub fn find_minilm() -> Option<PathBuf> {
    let dir = models_root().join("all-MiniLM-L6-v2");
    (dir.join("model.safetensors").is_file() && dir.join("config.json").is_file()).then_some(dir)
}

/// A BERT graph with what is needed to feed it.
pub struct LoadedBert {
    pub graph: Graph,
    pub config: BertConfig,
    pub tokenizer: Option<BertTokenizer>,
    /// Where the weights came from, for printing.
    pub source: String,
}

/// Loads the BERT folder `dir` (graph, config, tokenizer).
pub fn load_dir(dir: &Path) -> Result<LoadedBert, CliError> {
    let (graph, config) = load_bert(dir)?;
    let tokenizer = BertTokenizer::from_file(dir.join("tokenizer.json"), 128)?;
    Ok(LoadedBert {
        graph,
        config,
        tokenizer: Some(tokenizer),
        source: dir.display().to_string(),
    })
}

/// all-MiniLM-L6-v2 if fetched, else a randomly initialised model of the same shape.
pub fn minilm_or_random() -> Result<LoadedBert, CliError> {
    if let Some(dir) = find_minilm() {
        return load_dir(&dir);
    }
    let config = BertConfig::minilm_l6();
    let mut graph = build_bert(&config, "")?;
    randomize(&mut graph, 42);
    Ok(LoadedBert {
        graph,
        config,
        tokenizer: None,
        source: "random weights, MiniLM-L6 shape (run `cargo xtask fetch-models` for the real model)".into(),
    })
}

/// The graph to run in `mode`.
pub fn prepare(graph: &Graph, mode: Mode, preset: Preset) -> Result<Graph, CliError> {
    Ok(match mode {
        Mode::Fp32 => graph.clone(),
        Mode::Dynamic => qapi::quantize_dynamic(graph, preset.kinds(), preset.config())?.0,
        Mode::Static => {
            return Err(CliError::Usage(
                "static quantization of transformers is not supported; use --mode dynamic".into(),
            ))
        }
    })
}

/// The benchmark input of the peers: one sentence padded to `seq` tokens (token ids spread over
/// the vocabulary when there is no tokenizer).
pub fn bench_input(model: &LoadedBert, batch: usize, seq: usize) -> Result<Encoded, CliError> {
    let sentence = "The quick brown fox jumps over the lazy dog. ".repeat(6);
    if let Some(tok) = &model.tokenizer {
        let sentences = vec![sentence.as_str(); batch];
        return Ok(tok.encode(&sentences, Padding::Fixed(seq))?);
    }
    let n = batch * seq;
    Ok(Encoded {
        batch,
        seq,
        input_ids: (0..n)
            .map(|i| ((i * 7919 + 101) % model.config.vocab_size) as i64)
            .collect(),
        attention_mask: vec![1; n],
        token_type_ids: vec![0; n],
    })
}

/// Median wall time in milliseconds of `reps` calls after `warmup` calls.
pub fn median_ms(warmup: usize, reps: usize, f: impl FnMut() -> Result<(), CliError>) -> Result<f64, CliError> {
    qapi::benchmark::median_ms(f, warmup, reps)
}

/// Runs `f` on a rayon pool of `threads` threads.
pub fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> Result<T, CliError> {
    Ok(qapi::benchmark::with_threads(threads, f)?)
}
