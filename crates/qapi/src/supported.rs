//! The master list of what has int8 kernels, by quantization route.

use qgraph::OpKind;

/// How one op kind can be quantized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupportedOp {
    pub kind: OpKind,
    /// Static (post-training and QAT) int8 implementation, if any.
    pub static_int8: Option<&'static str>,
    /// Dynamic quantization, if any.
    pub dynamic: Option<&'static str>,
}

/// Every op kind the graph knows, with its int8 support. Ops with neither run in f32 (inside a
/// quantized model, behind automatic dequantize/quantize nodes).
pub fn supported_ops() -> Vec<SupportedOp> {
    use OpKind::*;
    let statics = crate::static_ptq::supported_ops();
    let dynamic = |k: OpKind| {
        match k {
        Linear => Some("qint8 weights (per-channel or per-tensor), quint8 activations per token or per tensor, f32 out; or float16 weights"),
        Lstm | Gru => Some("qint8 input and hidden projections, f32 gate math"),
        Embedding => Some("8-bit rows with per-row scale and zero point, dequantized on lookup"),
        _ => None,
    }
    };
    OpKind::ALL
        .into_iter()
        .filter(|k| !matches!(k, Input | Custom))
        .map(|kind| SupportedOp {
            kind,
            static_int8: statics.iter().find(|(k, _)| *k == kind).map(|(_, d)| *d),
            dynamic: dynamic(kind),
        })
        .collect()
}
