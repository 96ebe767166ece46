//! `MovingAveragePerChannelMinMaxObserver` (PyTorch): per-channel ranges, the first batch sets
//! them and later ones move them by `min = min + c * (min(x) - min)` in f32.

use qtensor::{QParams, QuantSpec, Tensor};

use super::per_channel::check_channels;
use super::{channel_min_max, check_batch, empty, per_channel, Observer};
use crate::Result;

#[derive(Debug, Clone)]
pub struct MovingAveragePerChannelMinMaxObserver {
    spec: QuantSpec,
    axis: usize,
    averaging_constant: f32,
    ranges: Option<(Vec<f32>, Vec<f32>)>,
    label: String,
}

impl MovingAveragePerChannelMinMaxObserver {
    pub fn new(spec: QuantSpec, axis: usize, averaging_constant: f32) -> MovingAveragePerChannelMinMaxObserver {
        MovingAveragePerChannelMinMaxObserver {
            spec,
            axis,
            averaging_constant,
            ranges: None,
            label: "tensor".into(),
        }
    }

    pub fn labeled(mut self, label: &str) -> Self {
        self.label = label.to_string();
        self
    }
}

impl Observer for MovingAveragePerChannelMinMaxObserver {
    fn observe(&mut self, x: &Tensor) -> Result<()> {
        if !check_batch(&self.label, x)? {
            return Ok(());
        }
        let (lo, hi) = channel_min_max(&self.label, x, self.axis)?;
        let k = self.averaging_constant;
        match &mut self.ranges {
            Some((mins, maxs)) => {
                check_channels(&self.label, mins.len(), lo.len())?;
                for c in 0..mins.len() {
                    mins[c] = mins[c] + k * (lo[c] - mins[c]);
                    maxs[c] = maxs[c] + k * (hi[c] - maxs[c]);
                }
            }
            None => self.ranges = Some((lo, hi)),
        }
        Ok(())
    }

    fn qparams(&self) -> Result<QParams> {
        let (mins, maxs) = self.ranges.as_ref().ok_or_else(|| empty(&self.label))?;
        per_channel(&self.spec, self.axis, mins, maxs)
    }

    fn spec(&self) -> &QuantSpec {
        &self.spec
    }

    fn label(&self) -> &str {
        &self.label
    }
}
