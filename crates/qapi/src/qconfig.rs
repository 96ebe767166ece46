//! Which nodes get quantized, and how: a [`QConfig`] (activation and weight observers) per node,
//! resolved from a [`QConfigMap`] of rules. `None` at any level keeps the matching nodes in f32.
//!
//! Precedence, most specific first: exact node name, then name regex (first match in insertion
//! order), then op kind, then the global default.

use qgraph::{ObserverConfig, ObserverKind, OpKind};
use qtensor::{DType, QuantSpec, Scheme};
use regex::Regex;

use crate::{ApiError, Result};

/// Observers for one node: its output activation and (for Linear/Conv) its weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QConfig {
    pub activation: ObserverConfig,
    pub weight: ObserverConfig,
    /// Reproduce PyTorch fbgemm's integer arithmetic where it deviates from exact sums (its
    /// depthwise kernel saturates pairs of products to 16 bits). Off in qforge's presets: with
    /// full-range activations that saturation costs real accuracy.
    pub pytorch_parity: bool,
}

impl QConfig {
    /// PyTorch's x86 default (`get_default_qconfig("fbgemm")`): HistogramObserver quint8 with
    /// `reduce_range` for activations, PerChannelMinMaxObserver qint8 symmetric (axis 0) for
    /// weights.
    pub fn fbgemm() -> QConfig {
        QConfig {
            activation: ObserverConfig::new(
                ObserverKind::Histogram { bins: 2048 },
                QuantSpec::new(DType::QUInt8, Scheme::Affine).with_reduce_range(true),
            ),
            weight: ObserverConfig::new(
                ObserverKind::PerChannelMinMax { axis: 0 },
                QuantSpec::new(DType::QInt8, Scheme::Symmetric),
            ),
            pytorch_parity: true,
        }
    }

    /// qforge's accuracy default: the same histogram search over the full 8-bit activation range
    /// (every qforge kernel accumulates without 16-bit saturation, so halving the range buys
    /// nothing), per-channel symmetric weights.
    pub fn qforge() -> QConfig {
        QConfig {
            activation: ObserverConfig::new(
                ObserverKind::Histogram { bins: 2048 },
                QuantSpec::new(DType::QUInt8, Scheme::Affine),
            ),
            weight: ObserverConfig::new(
                ObserverKind::PerChannelMinMax { axis: 0 },
                QuantSpec::new(DType::QInt8, Scheme::Symmetric),
            ),
            pytorch_parity: false,
        }
    }

    /// Quantization-aware training default: moving-average min/max activations (c = 0.01) and
    /// per-channel weights, as PyTorch's `get_default_qat_qconfig("fbgemm")` (with
    /// `reduce_range` when `pytorch_parity`).
    pub fn qat(pytorch_parity: bool) -> QConfig {
        QConfig {
            activation: ObserverConfig::new(
                ObserverKind::MovingAverageMinMax {
                    averaging_constant: qgraph::observers::DEFAULT_AVERAGING_CONSTANT,
                },
                QuantSpec::new(DType::QUInt8, Scheme::Affine).with_reduce_range(pytorch_parity),
            ),
            weight: ObserverConfig::new(
                ObserverKind::MovingAveragePerChannelMinMax {
                    axis: 0,
                    averaging_constant: qgraph::observers::DEFAULT_AVERAGING_CONSTANT,
                },
                QuantSpec::new(DType::QInt8, Scheme::Symmetric),
            ),
            pytorch_parity,
        }
    }
}

/// A node-name rule.
#[derive(Debug, Clone)]
enum NameRule {
    Exact(String),
    Pattern(Regex),
}

impl NameRule {
    fn matches(&self, name: &str) -> bool {
        match self {
            NameRule::Exact(n) => n == name,
            NameRule::Pattern(r) => r.is_match(name),
        }
    }
}

/// Rules that give each node its [`QConfig`] (or `None`: keep in f32). See the module docs.
#[derive(Debug, Clone, Default)]
pub struct QConfigMap {
    global: Option<QConfig>,
    by_kind: Vec<(OpKind, Option<QConfig>)>,
    by_name: Vec<(NameRule, Option<QConfig>)>,
}

/// Where a node's configuration came from, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    Name(String),
    Pattern(String),
    Kind(OpKind),
    Global,
}

impl QConfigMap {
    /// A map whose global default is `global`.
    pub fn new(global: Option<QConfig>) -> QConfigMap {
        QConfigMap {
            global,
            ..QConfigMap::default()
        }
    }

    /// PyTorch's x86 default for everything.
    pub fn fbgemm() -> QConfigMap {
        QConfigMap::new(Some(QConfig::fbgemm()))
    }

    /// qforge's accuracy default for everything.
    pub fn qforge() -> QConfigMap {
        QConfigMap::new(Some(QConfig::qforge()))
    }

    pub fn set_global(mut self, config: Option<QConfig>) -> QConfigMap {
        self.global = config;
        self
    }

    /// Every node of `kind` (overrides the global default).
    pub fn set_kind(mut self, kind: OpKind, config: Option<QConfig>) -> QConfigMap {
        self.by_kind.retain(|(k, _)| *k != kind);
        self.by_kind.push((kind, config));
        self
    }

    /// The node called `name` exactly (overrides everything else).
    pub fn set_name(mut self, name: impl Into<String>, config: Option<QConfig>) -> QConfigMap {
        self.by_name.push((NameRule::Exact(name.into()), config));
        self
    }

    /// Nodes whose name matches the regular expression `pattern` (e.g. `^encoder\.layer\.0\.`).
    pub fn set_pattern(mut self, pattern: &str, config: Option<QConfig>) -> Result<QConfigMap> {
        let regex = Regex::new(pattern).map_err(|e| ApiError::Config {
            detail: format!("invalid node-name pattern `{pattern}`: {e}"),
        })?;
        self.by_name.push((NameRule::Pattern(regex), config));
        Ok(self)
    }

    /// The configuration of a node and where it came from.
    pub fn resolve(&self, name: &str, kind: OpKind) -> (Option<QConfig>, ConfigSource) {
        let exact = self
            .by_name
            .iter()
            .rev()
            .find(|(r, _)| matches!(r, NameRule::Exact(n) if n == name));
        if let Some((_, c)) = exact {
            return (*c, ConfigSource::Name(name.to_string()));
        }
        for (rule, c) in &self.by_name {
            if let NameRule::Pattern(r) = rule {
                if rule.matches(name) {
                    return (*c, ConfigSource::Pattern(r.as_str().to_string()));
                }
            }
        }
        if let Some((_, c)) = self.by_kind.iter().find(|(k, _)| *k == kind) {
            return (*c, ConfigSource::Kind(kind));
        }
        (self.global, ConfigSource::Global)
    }
}
