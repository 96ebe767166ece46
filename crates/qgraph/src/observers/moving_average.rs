//! `MovingAverageMinMaxObserver` (PyTorch): the first batch sets the range, later ones move it
//! by `min = min + c * (min(x) - min)` (same for max) in f32, `c` = 0.01 by default.

use qtensor::{QParams, QuantSpec, Tensor};

use super::{check_batch, empty, per_tensor, Observer};
use crate::Result;

#[derive(Debug, Clone)]
pub struct MovingAverageMinMaxObserver {
    spec: QuantSpec,
    averaging_constant: f32,
    range: Option<(f32, f32)>,
    label: String,
}

impl MovingAverageMinMaxObserver {
    pub fn new(spec: QuantSpec, averaging_constant: f32) -> MovingAverageMinMaxObserver {
        MovingAverageMinMaxObserver {
            spec,
            averaging_constant,
            range: None,
            label: "tensor".into(),
        }
    }

    pub fn labeled(mut self, label: &str) -> Self {
        self.label = label.to_string();
        self
    }

    pub fn range(&self) -> Option<(f32, f32)> {
        self.range
    }
}

impl Observer for MovingAverageMinMaxObserver {
    fn observe(&mut self, x: &Tensor) -> Result<()> {
        if !check_batch(&self.label, x)? {
            return Ok(());
        }
        let (lo, hi) = qtensor::min_max(x.data());
        let c = self.averaging_constant;
        self.range = Some(match self.range {
            Some((a, b)) => (a + c * (lo - a), b + c * (hi - b)),
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
