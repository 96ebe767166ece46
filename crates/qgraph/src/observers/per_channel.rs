//! `PerChannelMinMaxObserver` (PyTorch): running min and max of every slice along `axis`
//! (`ch_axis`), one (scale, zero point) per channel.

use qtensor::{QParams, QuantSpec, Tensor};

use super::{channel_min_max, check_batch, empty, per_channel, Observer};
use crate::{GraphError, Result};

#[derive(Debug, Clone)]
pub struct PerChannelMinMaxObserver {
    spec: QuantSpec,
    axis: usize,
    ranges: Option<(Vec<f32>, Vec<f32>)>,
    label: String,
}

impl PerChannelMinMaxObserver {
    pub fn new(spec: QuantSpec, axis: usize) -> PerChannelMinMaxObserver {
        PerChannelMinMaxObserver {
            spec,
            axis,
            ranges: None,
            label: "tensor".into(),
        }
    }

    pub fn labeled(mut self, label: &str) -> Self {
        self.label = label.to_string();
        self
    }

    /// Per-channel (mins, maxs), if any batch was seen.
    pub fn ranges(&self) -> Option<(&[f32], &[f32])> {
        self.ranges.as_ref().map(|(a, b)| (a.as_slice(), b.as_slice()))
    }
}

/// Errors when a batch has a different channel count from the first one.
pub(crate) fn check_channels(label: &str, have: usize, got: usize) -> Result<()> {
    if have != got {
        return Err(GraphError::Observer {
            node: label.to_string(),
            message: format!("batch has {got} channels, earlier batches had {have}"),
        });
    }
    Ok(())
}

impl Observer for PerChannelMinMaxObserver {
    fn observe(&mut self, x: &Tensor) -> Result<()> {
        if !check_batch(&self.label, x)? {
            return Ok(());
        }
        let (lo, hi) = channel_min_max(&self.label, x, self.axis)?;
        match &mut self.ranges {
            Some((mins, maxs)) => {
                check_channels(&self.label, mins.len(), lo.len())?;
                for c in 0..mins.len() {
                    mins[c] = mins[c].min(lo[c]);
                    maxs[c] = maxs[c].max(hi[c]);
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
