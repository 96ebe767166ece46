//! `MinMaxObserver` (PyTorch): the running min and max over all batches,
//! `min = min(min, min(x))`, `max = max(max, max(x))`.

use qtensor::{QParams, QuantSpec, Tensor};

use super::{check_batch, empty, per_tensor, Observer};
use crate::Result;

#[derive(Debug, Clone)]
pub struct MinMaxObserver {
    spec: QuantSpec,
    range: Option<(f32, f32)>,
    label: String,
}

impl MinMaxObserver {
    pub fn new(spec: QuantSpec) -> MinMaxObserver {
        MinMaxObserver {
            spec,
            range: None,
            label: "tensor".into(),
        }
    }

    /// Names the node in errors.
    pub fn labeled(mut self, label: &str) -> Self {
        self.label = label.to_string();
        self
    }

    /// The observed (min, max), if any batch was seen.
    pub fn range(&self) -> Option<(f32, f32)> {
        self.range
    }
}

impl Observer for MinMaxObserver {
    fn observe(&mut self, x: &Tensor) -> Result<()> {
        if !check_batch(&self.label, x)? {
            return Ok(());
        }
        let (lo, hi) = qtensor::min_max(x.data());
        self.range = Some(match self.range {
            Some((a, b)) => (a.min(lo), b.max(hi)),
            None => (lo, hi),
        });
        Ok(())
    }

    fn qparams(&self) -> Result<QParams> {
        let (lo, hi) = self.range.ok_or_else(|| empty(&self.label))?;
        per_tensor(&self.spec, lo, hi)
    }

    fn spec(&self) -> &QuantSpec {
        &self.spec
    }

    fn label(&self) -> &str {
        &self.label
    }
}
