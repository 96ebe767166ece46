//! The histograms ONNX Runtime's calibrators collect (`HistogramCollector` in
//! onnxruntime/python/tools/quantization/calibrate.py):
//!
//! - [`RangeHistogram::signed`]: values over `[-t, t]`, `t = max(|min|, |max|)` of the first
//!   batch; a batch with a larger `t` grows the histogram by whole bins of the old width on
//!   both sides, keeping the old counts in the middle (`merge_histogram`).
//! - [`RangeHistogram::absolute`]: `|x|` over `[min |x|, max |x|]` of the first batch; larger
//!   values append bins of the old width on the right (`collect_absolute_value`).

/// Bin counts and their edges (`edges.len() == counts.len() + 1`), plus the observed range.
#[derive(Debug, Clone)]
pub(crate) struct RangeHistogram {
    pub counts: Vec<f64>,
    pub edges: Vec<f32>,
    pub min: f32,
    pub max: f32,
    absolute: bool,
    /// Half-width of the signed histogram.
    threshold: f32,
}

/// NumPy `histogram` with `bins` uniform bins over `[lo, hi]` (a zero-width range is widened
/// by 0.5 on each side, as NumPy does).
fn uniform(x: impl Iterator<Item = f32>, bins: usize, lo: f32, hi: f32) -> (Vec<f64>, Vec<f32>) {
    let (lo, hi) = if lo == hi { (lo - 0.5, hi + 0.5) } else { (lo, hi) };
    let edges: Vec<f32> = (0..=bins)
        .map(|i| (lo as f64 + (hi as f64 - lo as f64) * i as f64 / bins as f64) as f32)
        .collect();
    let counts = bin_into(x, &edges);
    (counts, edges)
}

/// Counts values into bins `[e_i, e_{i+1})`, the last bin closed; values outside are dropped.
fn bin_into(x: impl Iterator<Item = f32>, edges: &[f32]) -> Vec<f64> {
    let bins = edges.len() - 1;
    let (lo, hi) = (edges[0], edges[bins]);
    let norm = bins as f64 / (hi as f64 - lo as f64);
    let mut counts = vec![0.0f64; bins];
    for v in x {
        if !(v >= lo && v <= hi) {
            continue;
        }
        let mut i = (((v as f64 - lo as f64) * norm) as usize).min(bins - 1);
        while i > 0 && v < edges[i] {
            i -= 1;
        }
        while i + 1 < bins && v >= edges[i + 1] {
            i += 1;
        }
        counts[i] += 1.0;
    }
    counts
}

impl RangeHistogram {
    /// First batch of a signed histogram.
    pub fn signed(x: &[f32], bins: usize) -> RangeHistogram {
        let (min, max) = qtensor::min_max(x);
        let t = min.abs().max(max.abs());
        let (counts, edges) = uniform(x.iter().copied(), bins, -t, t);
        RangeHistogram {
            counts,
            edges,
            min,
            max,
            absolute: false,
            threshold: t,
        }
    }

    /// First batch of an absolute-value histogram.
    pub fn absolute(x: &[f32], bins: usize) -> RangeHistogram {
        let (min, max) = qtensor::min_max(x);
        let (alo, ahi) = qtensor::min_max(&x.iter().map(|v| v.abs()).collect::<Vec<_>>());
        let (counts, edges) = uniform(x.iter().map(|v| v.abs()), bins, alo, ahi);
        RangeHistogram {
            counts,
            edges,
            min,
            max,
            absolute: true,
            threshold: ahi,
        }
    }

    /// Adds a later batch.
    pub fn add(&mut self, x: &[f32]) {
        let (lo, hi) = qtensor::min_max(x);
        self.min = self.min.min(lo);
        self.max = self.max.max(hi);
        if self.absolute {
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let last = *self.edges.last().expect("edges");
            if amax > last {
                let width = self.edges[1] - self.edges[0];
                let mut e = last + width;
                while e < amax + width {
                    self.edges.push(e);
                    e += width;
                }
            }
            let counts = bin_into(x.iter().map(|v| v.abs()), &self.edges);
            let old = std::mem::replace(&mut self.counts, counts);
            self.counts.iter_mut().zip(&old).for_each(|(c, o)| *c += o);
            return;
        }
        let t = lo.abs().max(hi.abs());
        let bins = self.counts.len();
        if t <= self.threshold {
            let (counts, _) = uniform(x.iter().copied(), bins, -self.threshold, self.threshold);
            self.counts.iter_mut().zip(&counts).for_each(|(c, n)| *c += n);
        } else if self.threshold == 0.0 {
            let (mut counts, edges) = uniform(x.iter().copied(), bins, -t, t);
            counts.iter_mut().zip(&self.counts).for_each(|(c, o)| *c += o);
            self.counts = counts;
            self.edges = edges;
            self.threshold = t;
        } else {
            let stride = 2.0 * self.threshold as f64 / bins as f64;
            let half_added = ((t as f64 - self.threshold as f64) / stride).floor() as usize + 1;
            let new_bins = bins + 2 * half_added;
            let new_t = (half_added as f64 * stride + self.threshold as f64) as f32;
            let (mut counts, edges) = uniform(x.iter().copied(), new_bins, -new_t, new_t);
            for (i, o) in self.counts.iter().enumerate() {
                counts[half_added + i] += o;
            }
            self.counts = counts;
            self.edges = edges;
            self.threshold = new_t;
        }
    }
}
