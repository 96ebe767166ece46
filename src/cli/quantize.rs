//! `qforge quantize`: a model (architecture + fp32 weights) in, a quantized model file out.
//!
//! - `--mode dynamic` (transformers, RNNs; `--arch minilm` with `--weights` a BERT folder):
//!   Linear layers get int8 weights, activations are quantized per call.
//! - `--mode static` (CNNs: `--arch mobilenet_v2|resnet18|unet` with `--weights` an fp32
//!   safetensors state dict): calibrated on `--calib FILE`, a safetensors file holding an f32
//!   tensor `input` of shape `[N, 3, H, W]`, fed in batches of `--calib-batch`.

use std::path::PathBuf;

use clap::ValueEnum;
use qapi::{prepare, QConfigMap};
use qgraph::{Graph, OpKind, Value};
use qtensor::Tensor;

use super::model::{load_dir, Preset};
use super::CliError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QuantMode {
    Dynamic,
    Static,
}

/// Static quantization configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StaticPreset {
    /// Full-range activations, per-channel weights, histogram calibration.
    Qforge,
    /// PyTorch's x86 default (7-bit activations).
    Fbgemm,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Architecture: minilm, mobilenet_v2, resnet18 or unet.
    #[arg(long)]
    arch: String,
    /// fp32 weights: a safetensors state dict (CNNs) or a BERT model folder (minilm).
    #[arg(long)]
    weights: PathBuf,
    #[arg(long, value_enum)]
    mode: QuantMode,
    /// Calibration images for static mode (safetensors with an f32 tensor `input`).
    #[arg(long)]
    calib: Option<PathBuf>,
    #[arg(long, default_value_t = 4)]
    calib_batch: usize,
    /// Dynamic preset.
    #[arg(long, value_enum, default_value = "qforge")]
    preset: Preset,
    /// Static preset.
    #[arg(long = "static-preset", value_enum, default_value = "qforge")]
    static_preset: StaticPreset,
    /// Nodes to keep in f32 (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    keep_float: Vec<String>,
    /// Where to write the quantized model.
    #[arg(long)]
    output: PathBuf,
}

fn cnn_graph(arch: &str, weights: &std::path::Path) -> Result<Graph, CliError> {
    let (mut graph, _) = qapi::benchmark::cnn(arch, 1)?;
    graph.load_safetensors_file(weights, true)?;
    Ok(graph)
}

/// The `input` tensor of a calibration file, split into batches along dimension 0.
fn calibration_batches(path: &std::path::Path, batch: usize) -> Result<Vec<Vec<Value>>, CliError> {
    let file = qapi::ModelFile::from_safetensors(&std::fs::read(path).map_err(|e| CliError::io(path, e))?)?;
    let Some(qapi::StoredTensor::F32 { shape, data }) = file.tensors.get("input") else {
        return Err(CliError::Usage(format!(
            "{}: expected an f32 tensor named `input` of shape [N, C, H, W]",
            path.display()
        )));
    };
    if shape.len() != 4 || shape[0] == 0 {
        return Err(CliError::Usage(format!(
            "{}: `input` must be [N, C, H, W], got {shape:?}",
            path.display()
        )));
    }
    let per_image: usize = shape[1..].iter().product();
    let batch = batch.max(1);
    data.chunks(per_image * batch)
        .map(|chunk| {
            let n = chunk.len() / per_image;
            let t = Tensor::new([n, shape[1], shape[2], shape[3]], chunk.to_vec())?;
            Ok(vec![Value::F32(t)])
        })
        .collect()
}

pub fn run(args: Args) -> Result<(), CliError> {
    let (graph, report) = match (args.arch.as_str(), args.mode) {
        ("minilm", QuantMode::Dynamic) => {
            let model = load_dir(&args.weights)?;
            qapi::quantize_dynamic(&model.graph, args.preset.kinds(), args.preset.config())?
        }
        ("minilm", QuantMode::Static) => {
            return Err(CliError::Usage(
                "static quantization of transformers is not supported; use --mode dynamic".into(),
            ))
        }
        (arch, QuantMode::Static) => {
            let graph = cnn_graph(arch, &args.weights)?;
            let calib = args.calib.as_ref().ok_or_else(|| {
                CliError::Usage("static quantization needs calibration data: --calib FILE (safetensors with an f32 tensor `input` [N, 3, H, W])".into())
            })?;
            let mut config = match args.static_preset {
                StaticPreset::Qforge => QConfigMap::qforge(),
                StaticPreset::Fbgemm => QConfigMap::fbgemm(),
            };
            for name in &args.keep_float {
                config = config.set_name(name.clone(), None);
            }
            let mut prepared = prepare(&graph, &config)?;
            let n = prepared.calibrate(calibration_batches(calib, args.calib_batch)?)?;
            eprintln!("calibrated on {n} batches");
            prepared.convert()?
        }
        (arch, QuantMode::Dynamic) => {
            let graph = cnn_graph(arch, &args.weights)?;
            qapi::quantize_dynamic(&graph, &[OpKind::Linear], args.preset.config())?
        }
    };
    qapi::save_graph_with_report(&graph, &report, &args.output)?;
    println!("{report}");
    let size = std::fs::metadata(&args.output)
        .map_err(|e| CliError::io(&args.output, e))?
        .len();
    println!("wrote {} ({size} bytes)", args.output.display());
    Ok(())
}
