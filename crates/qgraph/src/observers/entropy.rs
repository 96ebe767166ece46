//! Entropy (KL divergence) calibrator (ONNX Runtime `EntropyCalibrater`, after TensorRT): over
//! a signed histogram, every symmetric window of `2 i + 1` bins around the centre
//! (`i >= quantized_bins / 2`) is scored by `KL(p || q)`, where `p` is the window with the
//! outside mass folded into its end bins and `q` is the window merged into `quantized_bins`
//! bins and spread back evenly over the non-empty source bins (integer division, as ONNX
//! Runtime), both smoothed with eps = 1e-4. The window with the least divergence gives the
//! range, clipped to the observed min and max.

use qtensor::{QParams, QuantSpec, Tensor};

use super::range_histogram::RangeHistogram;
use super::{check_batch, empty, per_tensor, Observer};
use crate::Result;

#[derive(Debug, Clone)]
pub struct EntropyCalibrator {
    spec: QuantSpec,
    bins: usize,
    quantized_bins: usize,
    histogram: Option<RangeHistogram>,
    label: String,
}

/// `smooth_distribution`: zeros become eps, the non-zeros give up the same total.
fn smooth(p: &[f64]) -> Option<Vec<f64>> {
    let eps = 1e-4;
    let zeros = p.iter().filter(|&&v| v == 0.0).count();
    let nonzeros = p.len() - zeros;
    if nonzeros == 0 {
        return None;
    }
    let eps1 = eps * zeros as f64 / nonzeros as f64;
    Some(p.iter().map(|&v| if v == 0.0 { eps } else { v - eps1 }).collect())
}

/// `scipy.stats.entropy(p, q)`: `sum p log(p / q)` after normalizing both.
fn kl(p: &[f64], q: &[f64]) -> f64 {
    let (sp, sq) = (p.iter().sum::<f64>(), q.iter().sum::<f64>());
    p.iter()
        .zip(q)
        .map(|(&a, &b)| {
            let (a, b) = (a / sp, b / sq);
            if a > 0.0 {
                a * (a / b).ln()
            } else {
                0.0
            }
        })
        .sum()
}

impl EntropyCalibrator {
    pub fn new(spec: QuantSpec, bins: usize, quantized_bins: usize) -> EntropyCalibrator {
        EntropyCalibrator {
            spec,
            bins: bins.max(2),
            quantized_bins: quantized_bins.max(1),
            histogram: None,
            label: "tensor".into(),
        }
    }

    pub fn labeled(mut self, label: &str) -> Self {
        self.label = label.to_string();
        self
    }

    /// The range with the least KL divergence, before the scale / zero point step.
    pub fn range(&self) -> Result<(f32, f32)> {
        let h = self.histogram.as_ref().ok_or_else(|| empty(&self.label))?;
        let hist = &h.counts;
        let n = hist.len();
        let zero = n / 2;
        let half_q = self.quantized_bins / 2;
        let mut best = (f64::INFINITY, (h.edges[0], h.edges[n]));
        for i in half_q..=zero {
            let start = zero - i;
            let end = (zero + i + 1).min(n);
            let window = &hist[start..end];
            let mut p = window.to_vec();
            p[0] += hist[..start].iter().sum::<f64>();
            *p.last_mut().expect("non-empty window") += hist[end..].iter().sum::<f64>();
            let merged = (window.len() / self.quantized_bins).max(1);
            let mut quantized = vec![0.0f64; self.quantized_bins];
            for (k, qb) in quantized.iter_mut().enumerate() {
                let a = (k * merged).min(window.len());
                let b = ((k + 1) * merged).min(window.len());
                *qb = window[a..b].iter().sum();
            }
            let tail_from = (self.quantized_bins * merged).min(window.len());
            *quantized.last_mut().expect("quantized bins") += window[tail_from..].iter().sum::<f64>();
            let mut q = vec![0.0f64; p.len()];
            for (k, &qb) in quantized.iter().enumerate() {
                let a = (k * merged).min(p.len());
                let b = ((k + 1) * merged).min(p.len());
                let norm = p[a..b].iter().filter(|&&v| v != 0.0).count();
                if norm != 0 {
                    let spread = (qb / norm as f64).trunc();
                    q[a..b].iter_mut().for_each(|v| *v = spread);
                }
            }
            let div = match (smooth(&p), smooth(&q)) {
                (Some(p), Some(q)) => kl(&p, &q),
                _ => f64::INFINITY,
            };
            if div < best.0 {
                best = (div, (h.edges[start], h.edges[end]));
            }
        }
        let (lo, hi) = best.1;
        Ok((lo.max(h.min), hi.min(h.max)))
    }
}

impl Observer for EntropyCalibrator {
    fn observe(&mut self, x: &Tensor) -> Result<()> {
        if !check_batch(&self.label, x)? {
            return Ok(());
        }
        match &mut self.histogram {
            Some(h) => h.add(x.data()),
            None => self.histogram = Some(RangeHistogram::signed(x.data(), self.bins)),
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
