//! `HistogramObserver` (PyTorch `torch.ao.quantization.HistogramObserver`), reproduced step by
//! step in the same float widths so the chosen range matches PyTorch's:
//!
//! 1. The first batch sets `[min, max]` and a `bins`-bin histogram (`torch.histc`: bin
//!    `floor((x - min) * bins / (max - min))` in f32, the top edge in the last bin; a zero-width
//!    range is widened to `[min - 1, max + 1]`).
//! 2. A later batch that widens the range is binned over the new range; the old histogram is
//!    upsampled `upsample_rate` times (each fine bin gets `count / rate`), its fine-bin mid
//!    points are placed into the new bins (`bucketize`, right-closed) and added in.
//! 3. `qparams` runs `_non_linear_param_search`: the quantile window `[alpha, beta]` shrinks by
//!    1e-5 from whichever side frees more bins, while the L2 quantization error
//!    (`_compute_quantization_error`, 256 destination bins) keeps decreasing; the surviving bins
//!    give `[min + w * start, min + w * (end + 1)]`, which `qparams_from_range` turns into
//!    scale and zero point.
//!
//! PyTorch 2.x uses `upsample_rate` 16 (older releases used 128 with a different rebinning);
//! the default here follows the PyTorch that produced the reference vectors.

use qtensor::{QParams, QuantSpec, Tensor};

use super::{check_batch, empty, per_tensor, Observer};
use crate::Result;

/// PyTorch's default bin count.
pub const DEFAULT_BINS: usize = 2048;
/// PyTorch 2.x's `upsample_rate`.
pub const DEFAULT_UPSAMPLE_RATE: usize = 16;
/// Destination bins of the error model (`2 ** 8`, independent of `reduce_range`).
const DST_BINS: usize = 256;

#[derive(Debug, Clone)]
pub struct HistogramObserver {
    spec: QuantSpec,
    bins: usize,
    upsample_rate: usize,
    histogram: Vec<f32>,
    range: Option<(f32, f32)>,
    label: String,
}

impl HistogramObserver {
    /// 2048 bins, upsample rate 16, as PyTorch's defaults.
    pub fn new(spec: QuantSpec) -> HistogramObserver {
        HistogramObserver::with_bins(spec, DEFAULT_BINS)
    }

    pub fn with_bins(spec: QuantSpec, bins: usize) -> HistogramObserver {
        HistogramObserver {
            spec,
            bins: bins.max(1),
            upsample_rate: DEFAULT_UPSAMPLE_RATE,
            histogram: vec![0.0; bins.max(1)],
            range: None,
            label: "tensor".into(),
        }
    }

    /// Sets the upsampling factor used when the range grows.
    pub fn with_upsample_rate(mut self, rate: usize) -> Self {
        self.upsample_rate = rate.max(1);
        self
    }

    pub fn labeled(mut self, label: &str) -> Self {
        self.label = label.to_string();
        self
    }

    /// The histogram and its range.
    pub fn histogram(&self) -> Option<(&[f32], f32, f32)> {
        self.range.map(|(lo, hi)| (self.histogram.as_slice(), lo, hi))
    }

    /// The range `_non_linear_param_search` selects (before the scale / zero point step).
    pub fn search_range(&self) -> Result<(f32, f32)> {
        let (min, max) = self.range.ok_or_else(|| empty(&self.label))?;
        Ok(non_linear_param_search(&self.histogram, min, max))
    }

    fn upscale(&self, orig_min: f32, orig_max: f32, new_min: f32, new_max: f32) -> Vec<f32> {
        let (bins, rate) = (self.bins, self.upsample_rate);
        let fine = bins * rate;
        let bin_size = (orig_max - orig_min) / fine as f32;
        let half = 0.5 * bin_size;
        let edges = linspace(new_min, new_max, bins + 1);
        let mut out = vec![0.0f32; bins];
        // `bucketize(mid, edges, right=True) - 1`, clamped to the bins: the number of edges
        // <= mid, minus one. Mid points increase with i, so the count only moves forward.
        let mut at_or_below = 0usize;
        for i in 0..fine {
            let mid = linspace_at(orig_min, orig_max, fine + 1, i) + half;
            while at_or_below < edges.len() && edges[at_or_below] <= mid {
                at_or_below += 1;
            }
            let b = at_or_below.saturating_sub(1).min(bins - 1);
            out[b] += self.histogram[i / rate] / rate as f32;
        }
        out
    }
}

/// `torch.linspace(start, end, steps)` element `i` in f32: the first half counts up from
/// `start`, the second half down from `end`.
fn linspace_at(start: f32, end: f32, steps: usize, i: usize) -> f32 {
    if steps == 1 {
        return start;
    }
    let step = (end - start) / (steps - 1) as f32;
    if i < steps / 2 {
        start + step * i as f32
    } else {
        end - step * (steps - i - 1) as f32
    }
}

fn linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    (0..steps).map(|i| linspace_at(start, end, steps, i)).collect()
}

/// `torch.histc(x, bins, min, max)` in f32.
pub(crate) fn histc(x: &[f32], bins: usize, min: f32, max: f32) -> Vec<f32> {
    let (lo, hi) = if min == max {
        ((min as f64 - 1.0) as f32, (max as f64 + 1.0) as f32)
    } else {
        (min, max)
    };
    let mut h = vec![0.0f32; bins];
    let scale = bins as f32;
    for &v in x {
        if v >= lo && v <= hi {
            let pos = ((v - lo) * scale / (hi - lo)) as usize;
            h[pos.min(bins - 1)] += 1.0;
        }
    }
    h
}

/// `torch.div(a, b, rounding_mode="floor")` for f32.
fn div_floor(a: f32, b: f32) -> f32 {
    let m = a % b;
    let mut div = (a - m) / b;
    if m != 0.0 && (b < 0.0) != (m < 0.0) {
        div -= 1.0;
    }
    if div == 0.0 {
        return (0.0f32).copysign(a / b);
    }
    let mut f = div.floor();
    if div - f > 0.5 {
        f += 1.0;
    }
    f
}

/// `_compute_quantization_error`: L2 error of quantizing source bins `[start, end]` onto
/// 256 uniform destination bins, with values uniform inside each source bin.
fn quantization_error(hist: &[f32], min: f32, max: f32, start: usize, end: usize) -> f64 {
    let bins = hist.len();
    let bin_width = (max as f64 - min as f64) / bins as f64;
    let dst_width = bin_width * (end - start + 1) as f64 / DST_BINS as f64;
    if dst_width == 0.0 {
        return 0.0;
    }
    let (bw, dw, half) = (bin_width as f32, dst_width as f32, (dst_width / 2.0) as f32);
    let neg_half = (-dst_width / 2.0) as f32;
    let top = (DST_BINS - 1) as f32;
    let cube_diff = |b: f32, e: f32| (e * e * e - b * b * b) / 3.0;
    let full_bin = cube_diff(neg_half, half);
    let mut total = 0.0f64;
    for (i, &count) in hist.iter().enumerate() {
        let begin = (i as i64 - start as i64) as f32 * bw;
        let src_end = begin + bw;
        let dst_begin = div_floor(begin, dw).clamp(0.0, top);
        let dst_begin_center = (dst_begin + 0.5) * dw;
        let dst_end = div_floor(src_end, dw).clamp(0.0, top);
        let density = count / bw;
        let mut norm = 0.0f32;
        norm += density * cube_diff(begin - dst_begin_center, half);
        norm += (dst_end - dst_begin - 1.0) * (density * full_bin);
        let dst_end_center = dst_end * dw + half;
        norm += density * cube_diff(neg_half, src_end - dst_end_center);
        total += norm as f64;
    }
    total
}

/// `_non_linear_param_search`: the sub-range of the histogram with the least L2 error.
fn non_linear_param_search(hist: &[f32], min: f32, max: f32) -> (f32, f32) {
    let bins = hist.len();
    let bin_width = (max - min) / bins as f32;
    let total = hist.iter().map(|&v| v as f64).sum::<f64>() as f32 as f64;
    let mut acc = 0.0f64;
    let csum: Vec<f32> = hist
        .iter()
        .map(|&v| {
            acc += v as f64;
            acc as f32
        })
        .collect();
    let step = 1e-5f64;
    let (mut alpha, mut beta) = (0.0f64, 1.0f64);
    let (mut start, mut end) = (0usize, bins - 1);
    let mut norm_min = f64::INFINITY;
    while alpha < beta {
        let next_alpha = alpha + step;
        let next_beta = beta - step;
        let (lo_target, hi_target) = ((next_alpha * total) as f32, (next_beta * total) as f32);
        let mut l = start;
        while l < end && csum[l] < lo_target {
            l += 1;
        }
        let mut r = end;
        while r > start && csum[r] > hi_target {
            r -= 1;
        }
        let (mut next_start, mut next_end) = (start, end);
        if l - start > end - r {
            next_start = l;
            alpha = next_alpha;
        } else {
            next_end = r;
            beta = next_beta;
        }
        if next_start == start && next_end == end {
            continue;
        }
        let norm = quantization_error(hist, min, max, next_start, next_end);
        if norm > norm_min {
            break;
        }
        norm_min = norm;
        start = next_start;
        end = next_end;
    }
    (min + bin_width * start as f32, min + bin_width * (end + 1) as f32)
}

impl Observer for HistogramObserver {
    fn observe(&mut self, x: &Tensor) -> Result<()> {
        if !check_batch(&self.label, x)? {
            return Ok(());
        }
        let (lo, hi) = qtensor::min_max(x.data());
        match self.range {
            None => {
                self.histogram = histc(x.data(), self.bins, lo, hi);
                self.range = Some((lo, hi));
            }
            Some((min, max)) => {
                let (new_min, new_max) = (min.min(lo), max.max(hi));
                let update = histc(x.data(), self.bins, new_min, new_max);
                if new_min == min && new_max == max {
                    self.histogram.iter_mut().zip(&update).for_each(|(h, u)| *h += u);
                    return Ok(());
                }
                let old = if min == max {
                    let mass: f32 = self.histogram.iter().sum();
                    histc(&[min], self.bins, new_min, new_max)
                        .into_iter()
                        .map(|v| v * mass)
                        .collect()
                } else {
                    self.upscale(min, max, new_min, new_max)
                };
                self.histogram = update.iter().zip(&old).map(|(u, o)| u + o).collect();
                self.range = Some((new_min, new_max));
            }
        }
        Ok(())
    }

    fn qparams(&self) -> Result<QParams> {
        let (lo, hi) = self.search_range()?;
        per_tensor(&self.spec, lo, hi)
    }

    fn spec(&self) -> &QuantSpec {
        &self.spec
    }

    fn label(&self) -> &str {
        &self.label
    }
}
