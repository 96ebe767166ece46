//! Weight packing: PyTorch Linear weights `[N, K]` (out_features x in_features, row-major i8)
//! rearranged once into the layout every kernel path reads, with the per-column sums the
//! zero-point correction needs.
//!
//! Layout: columns are grouped in panels of [`PANEL_COLS`] = 16 output channels; each panel
//! holds `k_groups = ceil(K / 4)` rows of 64 bytes, row `g` being
//! `[w[c][4g], w[c][4g+1], w[c][4g+2], w[c][4g+3]]` for the panel's 16 columns `c` in order.
//! One such 64-byte row is exactly the signed operand of a 512-bit `vpdpbusd` (16 lanes, each
//! a dot product of 4 bytes), two 256-bit `vpdpbusd` operands, or one row of an AMX B tile.
//! K is zero-padded to a multiple of 4 and N to a multiple of 16, so padded products are 0.

use crate::{KernelError, Result};
use qtensor::{DType, QParams};

/// Output channels per packed panel (one 512-bit vector of i32 accumulators).
pub const PANEL_COLS: usize = 16;
/// Reduction elements consumed per packed row (the 4-byte dot product of `vpdpbusd`).
pub const K_GROUP: usize = 4;
/// Bytes in one packed row of a panel.
pub const PANEL_ROW_BYTES: usize = PANEL_COLS * K_GROUP;

/// One 64-byte packed row, 64-byte aligned so vector loads never split cache lines.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct PanelRow(pub(crate) [i8; PANEL_ROW_BYTES]);

/// Per-tensor or per-output-channel weight quantization parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightQuant {
    PerTensor {
        scale: f32,
        zero_point: i32,
    },
    /// One `(scale, zero_point)` per output channel (row of the `[N, K]` weight).
    PerChannel {
        scales: Vec<f32>,
        zero_points: Vec<i32>,
    },
}

impl WeightQuant {
    /// Converts qtensor parameters of a qint8 weight `[N, K]` (per-channel along axis 0).
    pub fn from_qparams(qparams: &QParams) -> Result<WeightQuant> {
        match qparams {
            QParams::PerTensor { scale, zero_point } => Ok(WeightQuant::PerTensor {
                scale: *scale,
                zero_point: *zero_point,
            }),
            QParams::PerChannel {
                axis: 0,
                scales,
                zero_points,
            } => Ok(WeightQuant::PerChannel {
                scales: scales.clone(),
                zero_points: zero_points.clone(),
            }),
            QParams::PerChannel { axis, .. } => Err(KernelError::Param {
                op: "PackedWeights",
                detail: format!(
                    "per-channel weight parameters must run along axis 0 (output channels), got axis {axis}"
                ),
            }),
        }
    }
}

/// Weights packed once for every kernel path, with their quantization parameters and the
/// column offsets fbgemm calls `col_offsets`: `col_offset[j] = sum_k w[j][k] - K * w_zp[j]`.
#[derive(Clone)]
pub struct PackedWeights {
    n: usize,
    k: usize,
    k_groups: usize,
    panels: usize,
    rows: Vec<PanelRow>,
    col_offsets: Vec<i32>,
    /// Per output column (expanded from per-tensor), so kernels index them uniformly.
    scales: Vec<f32>,
    zero_points: Vec<i32>,
    per_channel: bool,
}

impl std::fmt::Debug for PackedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedWeights")
            .field("n", &self.n)
            .field("k", &self.k)
            .field("per_channel", &self.per_channel)
            .finish_non_exhaustive()
    }
}

impl PackedWeights {
    /// Packs `w`, an `[n, k]` row-major i8 matrix (PyTorch Linear layout: out x in features).
    pub fn new(w: &[i8], n: usize, k: usize, quant: WeightQuant) -> Result<PackedWeights> {
        let _span = tracing::debug_span!("pack_weights", n, k).entered();
        if n == 0 || k == 0 {
            return Err(KernelError::Shape {
                op: "PackedWeights",
                detail: format!("weight shape [{n}, {k}] is empty; both dimensions must be at least 1"),
            });
        }
        if w.len() != n * k {
            return Err(KernelError::Shape {
                op: "PackedWeights",
                detail: format!("weight [{n}, {k}] needs {} values, got {}", n * k, w.len()),
            });
        }
        super::check_k("PackedWeights", k)?;
        let (scales, zero_points, per_channel) = match quant {
            WeightQuant::PerTensor { scale, zero_point } => (vec![scale; n], vec![zero_point; n], false),
            WeightQuant::PerChannel { scales, zero_points } => {
                if scales.len() != n || zero_points.len() != n {
                    return Err(KernelError::Shape {
                        op: "PackedWeights",
                        detail: format!(
                            "per-channel weights need {n} scales and zero points (one per output channel), got {} and {}",
                            scales.len(),
                            zero_points.len()
                        ),
                    });
                }
                (scales, zero_points, true)
            }
        };
        for &s in &scales {
            qtensor::qparams::check_scale(s)?;
        }
        for &z in &zero_points {
            qtensor::qparams::check_zero_point(z, DType::QInt8)?;
        }
        let k_groups = k.div_ceil(K_GROUP);
        let panels = n.div_ceil(PANEL_COLS);
        let mut rows = vec![PanelRow([0; PANEL_ROW_BYTES]); panels * k_groups];
        for (j, wrow) in w.chunks_exact(k).enumerate() {
            let (panel, lane) = (j / PANEL_COLS, j % PANEL_COLS);
            for (kk, &value) in wrow.iter().enumerate() {
                rows[panel * k_groups + kk / K_GROUP].0[lane * K_GROUP + kk % K_GROUP] = value;
            }
        }
        let col_offsets = w
            .chunks_exact(k)
            .zip(&zero_points)
            .map(|(wrow, &zp)| wrow.iter().map(|&v| v as i32).sum::<i32>() - k as i32 * zp)
            .collect();
        Ok(PackedWeights {
            n,
            k,
            k_groups,
            panels,
            rows,
            col_offsets,
            scales,
            zero_points,
            per_channel,
        })
    }

    /// Packs a qint8 weight `[n, k]` given its int representation and qtensor parameters.
    pub fn from_qparams(w: &[i8], n: usize, k: usize, qparams: &QParams) -> Result<PackedWeights> {
        PackedWeights::new(w, n, k, WeightQuant::from_qparams(qparams)?)
    }

    /// Output channels (rows of the original weight).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input features (the reduction length).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Whether scales and zero points are per output channel.
    pub fn per_channel(&self) -> bool {
        self.per_channel
    }

    /// Scale of output channel `j`.
    pub fn scale(&self, j: usize) -> f32 {
        self.scales[j]
    }

    /// Zero point of output channel `j`.
    pub fn zero_point(&self, j: usize) -> i32 {
        self.zero_points[j]
    }

    /// The original weight value `w[j][kk]`, read back from the packed layout.
    pub fn get(&self, j: usize, kk: usize) -> i8 {
        self.rows[(j / PANEL_COLS) * self.k_groups + kk / K_GROUP].0[(j % PANEL_COLS) * K_GROUP + kk % K_GROUP]
    }

    /// `sum_k w[j][k] - K * w_zp[j]` per output channel.
    pub fn col_offsets(&self) -> &[i32] {
        &self.col_offsets
    }

    pub(crate) fn scales(&self) -> &[f32] {
        &self.scales
    }

    pub(crate) fn zero_points(&self) -> &[i32] {
        &self.zero_points
    }

    /// Pointer to packed row `g` of panel `p`; rows of one panel are contiguous.
    pub(crate) fn panel_ptr(&self, p: usize) -> *const i8 {
        debug_assert!(p < self.panels);
        self.rows[p * self.k_groups..].as_ptr() as *const i8
    }

    /// Bytes between the starts of two consecutive panels.
    pub(crate) fn panel_stride(&self) -> usize {
        self.k_groups * PANEL_ROW_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_layout_reads_back_the_weight() {
        let (n, k) = (19, 7);
        let w: Vec<i8> = (0..n * k).map(|i| (i as i32 * 37 % 256 - 128) as i8).collect();
        let p = PackedWeights::new(
            &w,
            n,
            k,
            WeightQuant::PerTensor {
                scale: 0.5,
                zero_point: 3,
            },
        )
        .unwrap();
        for j in 0..n {
            for kk in 0..k {
                assert_eq!(p.get(j, kk), w[j * k + kk]);
            }
            let sum: i32 = w[j * k..(j + 1) * k].iter().map(|&v| v as i32).sum();
            assert_eq!(p.col_offsets()[j], sum - 3 * k as i32);
        }
        // Padding is zero.
        assert_eq!(p.get(n, 0), 0);
        assert_eq!(p.get(0, k), 0);
    }

    #[test]
    fn rejects_bad_shapes_and_params() {
        let w = vec![0i8; 6];
        let pt = WeightQuant::PerTensor {
            scale: 1.0,
            zero_point: 0,
        };
        assert!(matches!(
            PackedWeights::new(&w, 2, 2, pt.clone()),
            Err(KernelError::Shape { .. })
        ));
        assert!(matches!(
            PackedWeights::new(&w, 0, 6, pt),
            Err(KernelError::Shape { .. })
        ));
        let bad = WeightQuant::PerChannel {
            scales: vec![1.0],
            zero_points: vec![0],
        };
        assert!(matches!(
            PackedWeights::new(&w, 2, 3, bad),
            Err(KernelError::Shape { .. })
        ));
        let nan = WeightQuant::PerTensor {
            scale: f32::NAN,
            zero_point: 0,
        };
        assert!(matches!(PackedWeights::new(&w, 2, 3, nan), Err(KernelError::Quant(_))));
    }
}
