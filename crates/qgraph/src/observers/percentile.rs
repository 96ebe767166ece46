//! Percentile calibrator (ONNX Runtime `PercentileCalibrater`, 2048 bins, 99.999 %): the range
//! keeps `percentile` % of the observed mass. Symmetric specs histogram `|x|` and take
//! `[-e, e]` with `e` the edge where the CDF first reaches `p / 100`; affine specs histogram the
//! signed values and cut `(100 - p) / 200` from each side. The range is clipped to the observed
//! min and max, then [`qtensor::QuantSpec::qparams_from_range`] gives scale and zero point.

use qtensor::{QParams, QuantSpec, Scheme, Tensor};

use super::range_histogram::RangeHistogram;
use super::{check_batch, empty, per_tensor, Observer};
use crate::{GraphError, Result};

#[derive(Debug, Clone)]
pub struct PercentileCalibrator {
    spec: QuantSpec,
    bins: usize,
    percentile: f64,
    histogram: Option<RangeHistogram>,
    label: String,
}

impl PercentileCalibrator {
    pub fn new(spec: QuantSpec, bins: usize, percentile: f64) -> PercentileCalibrator {
        PercentileCalibrator {
            spec,
            bins: bins.max(1),
            percentile,
            histogram: None,
            label: "tensor".into(),
        }
    }

    pub fn labeled(mut self, label: &str) -> Self {
        self.label = label.to_string();
        self
    }

    /// The clipped range, before the scale / zero point step.
    pub fn range(&self) -> Result<(f32, f32)> {
        let h = self.histogram.as_ref().ok_or_else(|| empty(&self.label))?;
        if !(0.0..=100.0).contains(&self.percentile) {
            return Err(GraphError::Observer {
                node: self.label.clone(),
                message: format!("percentile {} must be within [0, 100]", self.percentile),
            });
        }
        let total: f64 = h.counts.iter().sum();
        let mut acc = 0.0;
        let cdf: Vec<f64> = h
            .counts
            .iter()
            .map(|c| {
                acc += c / total;
                acc
            })
            .collect();
        // `np.searchsorted(cdf, v)`: the first index whose cdf reaches v.
        let search = |v: f64| cdf.iter().position(|&c| c >= v).unwrap_or(cdf.len());
        let (lo, hi) = if self.spec.scheme == Scheme::Symmetric {
            let e = h.edges[search(self.percentile / 100.0)];
            (-e, e)
        } else {
            let cut = (100.0 - self.percentile) / 200.0;
            (h.edges[search(cut)], h.edges[search(1.0 - cut)])
        };
        Ok((lo.max(h.min), hi.min(h.max)))
    }
}

impl Observer for PercentileCalibrator {
    fn observe(&mut self, x: &Tensor) -> Result<()> {
        if !check_batch(&self.label, x)? {
            return Ok(());
        }
        match &mut self.histogram {
            Some(h) => h.add(x.data()),
            None => {
                self.histogram = Some(if self.spec.scheme == Scheme::Symmetric {
                    RangeHistogram::absolute(x.data(), self.bins)
                } else {
                    RangeHistogram::signed(x.data(), self.bins)
                })
            }
        }
        Ok(())
    }

    fn qparams(&self) -> Result<QParams> {
        let (lo, hi) = self.range()?;
        per_tensor(&self.spec, lo, hi)
    }

    fn spec(&self) -> &QuantSpec {
        &self.spec
    }

    fn label(&self) -> &str {
        &self.label
    }
}
