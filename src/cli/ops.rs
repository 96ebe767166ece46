//! `qforge ops`: every op qforge's graphs know, with its fp32 support and which int8 kernels
//! it has.

use qgraph::OpKind;

use super::CliError;

#[derive(Debug, clap::Args)]
pub struct Args {}

/// (op, what it is, dynamic int8 kernel).
const OPS: &[(OpKind, &str, &str)] = &[
    (
        OpKind::Linear,
        "torch.nn.Linear (+ fused ReLU)",
        "qint8 weights per-channel or per-tensor, u8 activations per-row or per-tensor; float16 weight-only",
    ),
    (
        OpKind::Lstm,
        "torch.nn.LSTM",
        "qint8 W_ih / W_hh, f32 gate math; float16 weight-only",
    ),
    (
        OpKind::Gru,
        "torch.nn.GRU",
        "qint8 W_ih / W_hh, f32 gate math; float16 weight-only",
    ),
    (OpKind::Conv2d, "torch.nn.Conv2d (+ fused ReLU)", "-"),
    (OpKind::ConvTranspose2d, "torch.nn.ConvTranspose2d", "-"),
    (OpKind::BatchNorm1d, "torch.nn.BatchNorm1d", "-"),
    (OpKind::BatchNorm2d, "torch.nn.BatchNorm2d", "-"),
    (OpKind::LayerNorm, "torch.nn.LayerNorm", "-"),
    (OpKind::Embedding, "torch.nn.Embedding", "-"),
    (OpKind::Attention, "multi-head self-attention core (BERT)", "-"),
    (OpKind::PositionIds, "position ids 0..S", "-"),
    (OpKind::MatMul, "torch.matmul", "-"),
    (OpKind::Relu, "ReLU", "-"),
    (OpKind::Relu6, "ReLU6", "-"),
    (OpKind::Gelu, "GELU (erf, tanh)", "-"),
    (OpKind::Silu, "SiLU", "-"),
    (OpKind::Hardswish, "Hardswish", "-"),
    (OpKind::Sigmoid, "Sigmoid", "-"),
    (OpKind::Tanh, "Tanh", "-"),
    (OpKind::Softmax, "Softmax", "-"),
    (OpKind::MaxPool2d, "MaxPool2d", "-"),
    (OpKind::AvgPool2d, "AvgPool2d", "-"),
    (OpKind::AdaptiveAvgPool2d, "AdaptiveAvgPool2d", "-"),
    (OpKind::Upsample, "Upsample (nearest, bilinear)", "-"),
    (OpKind::Add, "add (broadcast)", "-"),
    (OpKind::Mul, "mul (broadcast)", "-"),
    (OpKind::Cat, "torch.cat", "-"),
    (OpKind::Flatten, "flatten", "-"),
    (OpKind::Reshape, "reshape", "-"),
    (OpKind::Permute, "permute", "-"),
    (OpKind::Dropout, "dropout (identity at inference)", "-"),
    (OpKind::Identity, "identity", "-"),
];

pub fn run(_args: Args) -> Result<(), CliError> {
    println!("{:<18} {:<40} {:<5} dynamic int8", "op", "", "fp32");
    for (kind, what, dynamic) in OPS {
        println!("{:<18} {:<40} {:<5} {dynamic}", format!("{kind:?}"), what, "yes");
    }
    let with_kernel = OPS.iter().filter(|o| o.2 != "-").count();
    println!("\n{} ops, {with_kernel} with dynamic int8 kernels", OPS.len());
    Ok(())
}
