//! What quantization did to each node, and why: the answer to "which layers are int8?".

use std::fmt;

/// The fate of one node.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum NodeStatus {
    /// Runs an int8 (or float16) kernel.
    Quantized {
        /// e.g. "qint8 weights per-channel, quint8 activations per-row (dynamic)".
        detail: String,
    },
    /// Runs in f32; `reason` says why.
    Float { reason: FloatReason },
    /// Structural nodes with nothing to quantize (inputs, reshapes, identity).
    NotApplicable,
}

/// Why a node stayed in f32.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FloatReason {
    /// The configuration maps it to `None` (by name, pattern, kind or globally).
    OptedOut { rule: String },
    /// qforge has no int8 kernel for this op.
    NoKernel,
    /// The op kind was not asked for (e.g. dynamic quantization of Linear only).
    NotSelected,
    /// Accuracy-driven fallback kept it in f32.
    Fallback { detail: String },
    /// Another reason, spelled out.
    Other(String),
}

impl fmt::Display for FloatReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FloatReason::OptedOut { rule } => write!(f, "opted out ({rule})"),
            FloatReason::NoKernel => f.write_str("no int8 kernel for this op"),
            FloatReason::NotSelected => f.write_str("op kind not selected for quantization"),
            FloatReason::Fallback { detail } => write!(f, "accuracy fallback: {detail}"),
            FloatReason::Other(s) => f.write_str(s),
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeReport {
    pub name: String,
    /// PyTorch-style op name, e.g. `ConvReLU2d`.
    pub op: String,
    pub status: NodeStatus,
}

/// Per-node outcome of a quantization run.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QuantReport {
    pub nodes: Vec<NodeReport>,
}

impl QuantReport {
    /// Names of the nodes that run int8 (or float16) kernels.
    pub fn quantized(&self) -> Vec<&str> {
        self.nodes
            .iter()
            .filter(|n| matches!(n.status, NodeStatus::Quantized { .. }))
            .map(|n| n.name.as_str())
            .collect()
    }

    /// Names and reasons of the nodes kept in f32.
    pub fn kept_float(&self) -> Vec<(&str, &FloatReason)> {
        self.nodes
            .iter()
            .filter_map(|n| match &n.status {
                NodeStatus::Float { reason } => Some((n.name.as_str(), reason)),
                _ => None,
            })
            .collect()
    }

    /// The row of node `name`.
    pub fn node(&self, name: &str) -> Option<&NodeReport> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

impl fmt::Display for QuantReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.nodes.iter().map(|n| n.name.len()).max().unwrap_or(4).max(4);
        let op_width = self.nodes.iter().map(|n| n.op.len()).max().unwrap_or(2).max(2);
        writeln!(f, "{:<width$}  {:<op_width$}  status", "node", "op")?;
        for n in &self.nodes {
            let status = match &n.status {
                NodeStatus::Quantized { detail } => format!("int8: {detail}"),
                NodeStatus::Float { reason } => format!("f32: {reason}"),
                NodeStatus::NotApplicable => "-".to_string(),
            };
            writeln!(f, "{:<width$}  {:<op_width$}  {status}", n.name, n.op)?;
        }
        let q = self.quantized().len();
        let fl = self.kept_float().len();
        write!(f, "{q} quantized, {fl} kept in f32")
    }
}
