//! The epilogue: what happens to an i32 accumulator after the dot product. One description,
//! built once per call into an [`EpiloguePlan`] of per-column constants (a requantization's
//! constants can also come from a [`RequantStage`] built for earlier calls), applied element by
//! element by the reference ([`EpiloguePlan::finish_row`]) and by the vector paths with the
//! same f32 operations in the same order, so every path writes the same bits.
//!
//! Integer stage (PyTorch fbgemm `ReQuantizeOutput` / `ReQuantizeForFloat`, wrapping i32):
//! `c = acc - a_zp[i] * col_offset[j] - row_sum[i] * w_zp[j]`, with
//! `col_offset[j] = sum_k w[j][k] - K * w_zp[j]` and `row_sum[i] = sum_k a[i][k]`; this equals
//! `sum_k (a[i][k] - a_zp[i]) * (w[j][k] - w_zp[j])` exactly whenever that fits in i32.
//!
//! Then one of:
//! - **I32**: `c`.
//! - **Requantize** (fbgemm `requantizeOutputProcessingAvx2` with a float bias, which is what
//!   PyTorch's quantized Linear runs on x86): `ats[j] = a_scale * w_scale[j]`,
//!   `multiplier[j] = ats[j] / out_scale`, bias term `b[j] = bias[j] * f32(1.0 / f64(ats))` for
//!   per-tensor weights and `bias[j] / ats[j]` for per-channel weights, then
//!   `q = clamp(round_half_even((f32(c) + b[j]) * multiplier[j]) + out_zp, lo, hi)`, where ReLU
//!   raises `lo` to `out_zp` and an optional clamp narrows `[lo, hi]`.
//! - **Dequantize** (PyTorch dynamic Linear, fbgemm `ReQuantizeForFloat`):
//!   `y = fma(f32(c), a_scale[i] * w_scale[j], bias[j])` with a single rounding, then
//!   `max(y, 0)` for ReLU. The fused form is what PyTorch 2.15's fbgemm build computes on x86: it
//!   reproduces every bit of the `dynamic_linear` golden vectors, where a separate multiply and
//!   add disagrees in the last bit on about a third of the outputs.

use super::pack::PackedWeights;
use crate::{KernelError, Result};
use qtensor::DType;
use std::borrow::Cow;

/// Quantization parameters of the u8 activations `[M, K]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActivationQuant<'a> {
    /// One scale and zero point for the whole matrix (static quantization, PyTorch dynamic Linear).
    PerTensor { scale: f32, zero_point: i32 },
    /// One scale and zero point per row (per-token dynamic quantization).
    PerRow { scales: &'a [f32], zero_points: &'a [i32] },
}

/// Requantization to 8 bits; the output type (u8 or i8) comes from [`GemmOutput`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Requantize<'a> {
    /// f32 bias per output channel (fbgemm adds it as `bias / (a_scale * w_scale)`).
    pub bias: Option<&'a [f32]>,
    pub out_scale: f32,
    pub out_zero_point: i32,
    /// Fused ReLU: outputs below `out_zero_point` (real value 0) become `out_zero_point`.
    pub relu: bool,
    /// Optional extra clamp in quantized units (e.g. ReLU6), intersected with the type range.
    pub clamp: Option<(i32, i32)>,
}

/// f32 output for dynamic quantization.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dequantize<'a> {
    pub bias: Option<&'a [f32]>,
    pub relu: bool,
}

/// What the GEMM does with each accumulator; see the module docs for the exact formulas.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Epilogue<'a> {
    /// The zero-point-corrected i32 sum, written to [`GemmOutput::I32`].
    I32,
    /// Requantized 8-bit output, written to [`GemmOutput::U8`] or [`GemmOutput::I8`].
    Requantize(Requantize<'a>),
    /// f32 output, written to [`GemmOutput::F32`] or [`GemmOutput::F32Uninit`].
    Dequantize(Dequantize<'a>),
}

/// The output matrix `[M, N]`, row-major.
#[derive(Debug)]
pub enum GemmOutput<'a> {
    U8(&'a mut [u8]),
    I8(&'a mut [i8]),
    F32(&'a mut [f32]),
    I32(&'a mut [i32]),
    /// f32 output that need not be initialized: every element is written exactly once (each
    /// is finished by one tile), so after a successful call all of it is initialized. Saves the
    /// caller zeroing a buffer that is overwritten anyway.
    F32Uninit(&'a mut [std::mem::MaybeUninit<f32>]),
}

impl GemmOutput<'_> {
    fn len(&self) -> usize {
        match self {
            GemmOutput::U8(o) => o.len(),
            GemmOutput::I8(o) => o.len(),
            GemmOutput::F32(o) => o.len(),
            GemmOutput::I32(o) => o.len(),
            GemmOutput::F32Uninit(o) => o.len(),
        }
    }
}

/// A per-row value that is either shared by all rows or given per row.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RowParam<'a, T: Copy> {
    Uniform(T),
    PerRow(&'a [T]),
}

impl<T: Copy> RowParam<'_, T> {
    #[inline]
    pub(crate) fn get(&self, i: usize) -> T {
        match self {
            RowParam::Uniform(v) => *v,
            RowParam::PerRow(v) => v[i],
        }
    }
}

/// The f32 stage, with its per-column constants.
#[derive(Debug, Clone)]
pub(crate) enum Stage<'a> {
    I32,
    Requantize {
        /// Built for this call, or borrowed from a [`RequantStage`] prepared earlier.
        bias_term: Cow<'a, [f32]>,
        multiplier: Cow<'a, [f32]>,
        zero_point: i32,
        lo: i32,
        hi: i32,
    },
    Dequantize {
        w_scales: &'a [f32],
        /// The caller's bias, borrowed (zeros when there is none).
        bias: Cow<'a, [f32]>,
        relu: bool,
    },
}

/// Element type of the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutKind {
    U8,
    I8,
    F32,
    I32,
}

/// The raw output matrix shared by the parallel tasks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutPtr {
    pub(crate) ptr: *mut u8,
    pub(crate) kind: OutKind,
    /// Elements per row (N).
    pub(crate) ld: usize,
}

// SAFETY: tasks write disjoint (row, column) blocks of the output, which the caller borrows
// mutably for the whole call; no element is read or written by two tasks.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Byte address of element `(i, j)`.
    #[inline]
    pub(crate) fn at(&self, i: usize, j: usize) -> *mut u8 {
        let size = match self.kind {
            OutKind::U8 | OutKind::I8 => 1,
            OutKind::F32 | OutKind::I32 => 4,
        };
        // Stays inside the output slice: i < M, j < N, ld = N (checked by the caller).
        self.ptr.wrapping_add((i * self.ld + j) * size)
    }
}

/// Everything an epilogue needs, computed once per call.
#[derive(Debug, Clone)]
pub(crate) struct EpiloguePlan<'a> {
    pub(crate) a_zp: RowParam<'a, i32>,
    pub(crate) a_scale: RowParam<'a, f32>,
    pub(crate) col_offsets: &'a [i32],
    pub(crate) w_zps: &'a [i32],
    /// `sum_k a[i][k]`, only when some weight zero point is non-zero (empty otherwise).
    pub(crate) row_sums: Vec<i32>,
    pub(crate) has_a_zp: bool,
    pub(crate) stage: Stage<'a>,
    pub(crate) out: OutPtr,
}

fn param(detail: String) -> KernelError {
    KernelError::Param {
        op: "gemm_u8s8",
        detail,
    }
}

fn check_bias(bias: Option<&[f32]>, n: usize) -> Result<()> {
    if let Some(b) = bias {
        if b.len() != n {
            return Err(KernelError::Shape {
                op: "gemm_u8s8",
                detail: format!("bias has {} values, expected N = {n}", b.len()),
            });
        }
        if let Some((i, v)) = b.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(param(format!("bias[{i}] = {v} is not finite; clean the bias")));
        }
    }
    Ok(())
}

/// The per-column constants of a [`Requantize`] epilogue, built once for given activation
/// parameters and reused by later calls with the same ones (see `conv::call_cache`): the
/// [`Stage::Requantize`] a call would build, bit for bit.
#[derive(Debug, Clone)]
pub(crate) struct RequantStage {
    act_scale: f32,
    bias_term: Vec<f32>,
    multiplier: Vec<f32>,
    zero_point: i32,
    lo: i32,
    hi: i32,
    out_kind: OutKind,
}

impl RequantStage {
    /// Validates `r` and computes the constants for activations of scale `act_scale` (see the
    /// module docs for the formulas); the output is u8 or else i8.
    pub(crate) fn new(act_scale: f32, w: &PackedWeights, r: &Requantize<'_>, u8_out: bool) -> Result<RequantStage> {
        let n = w.n();
        qtensor::qparams::check_scale(act_scale)?;
        check_bias(r.bias, n)?;
        qtensor::qparams::check_scale(r.out_scale)?;
        let dtype = if u8_out { DType::QUInt8 } else { DType::QInt8 };
        qtensor::qparams::check_zero_point(r.out_zero_point, dtype)?;
        let (mut lo, mut hi) = (dtype.qmin(), dtype.qmax());
        if r.relu {
            lo = lo.max(r.out_zero_point);
        }
        if let Some((clo, chi)) = r.clamp {
            if clo > chi {
                return Err(param(format!("clamp [{clo}, {chi}] is empty; pass lo <= hi")));
            }
            lo = lo.max(clo);
            hi = hi.min(chi);
        }
        // Per-tensor weights share one scale: one multiplier and one reciprocal (in
        // f64, as fbgemm's `1.0 / act_times_w_scale`) serve every column.
        let (multiplier, bias_term): (Vec<f32>, Vec<f32>) = if w.per_channel() {
            let ats: Vec<f32> = w.scales().iter().map(|&ws| act_scale * ws).collect();
            let multiplier = ats.iter().map(|&s| s / r.out_scale).collect();
            let bias_term = match r.bias {
                Some(b) => b.iter().zip(&ats).map(|(&b, &s)| b / s).collect(),
                None => vec![0.0; n],
            };
            (multiplier, bias_term)
        } else {
            let ats = act_scale * w.scale(0);
            let reciprocal = (1.0f64 / ats as f64) as f32;
            let bias_term = match r.bias {
                Some(b) => b.iter().map(|&b| b * reciprocal).collect(),
                None => vec![0.0; n],
            };
            (vec![ats / r.out_scale; n], bias_term)
        };
        let finite = |v: &f32| v.is_finite();
        if !multiplier.iter().all(|&m| m.is_finite() && m > 0.0) || !bias_term.iter().all(finite) {
            return Err(param(format!(
                "activation scale {act_scale} x weight scales / output scale {} gives a multiplier or bias term outside f32; rescale",
                r.out_scale
            )));
        }
        Ok(RequantStage {
            act_scale,
            bias_term,
            multiplier,
            zero_point: r.out_zero_point,
            lo: lo.min(hi),
            hi,
            out_kind: if u8_out { OutKind::U8 } else { OutKind::I8 },
        })
    }

    fn into_stage(self) -> Stage<'static> {
        Stage::Requantize {
            bias_term: Cow::Owned(self.bias_term),
            multiplier: Cow::Owned(self.multiplier),
            zero_point: self.zero_point,
            lo: self.lo,
            hi: self.hi,
        }
    }

    fn stage(&self) -> Stage<'_> {
        Stage::Requantize {
            bias_term: Cow::Borrowed(&self.bias_term),
            multiplier: Cow::Borrowed(&self.multiplier),
            zero_point: self.zero_point,
            lo: self.lo,
            hi: self.hi,
        }
    }
}

impl<'a> EpiloguePlan<'a> {
    /// Validates the call's parameters and precomputes the per-column constants.
    pub(crate) fn new(
        a: &[u8],
        m: usize,
        act: &ActivationQuant<'a>,
        w: &'a PackedWeights,
        epilogue: &Epilogue<'a>,
        prepared: Option<&'a RequantStage>,
        out: &mut GemmOutput<'_>,
    ) -> Result<EpiloguePlan<'a>> {
        let (n, k) = (w.n(), w.k());
        if out.len() != m * n {
            return Err(KernelError::Shape {
                op: "gemm_u8s8",
                detail: format!("output has {} elements, expected M x N = {m} x {n}", out.len()),
            });
        }
        let (a_zp, a_scale) = match *act {
            ActivationQuant::PerTensor { scale, zero_point } => {
                qtensor::qparams::check_scale(scale)?;
                qtensor::qparams::check_zero_point(zero_point, DType::QUInt8)?;
                (RowParam::Uniform(zero_point), RowParam::Uniform(scale))
            }
            ActivationQuant::PerRow { scales, zero_points } => {
                if scales.len() != m || zero_points.len() != m {
                    return Err(KernelError::Shape {
                        op: "gemm_u8s8",
                        detail: format!(
                            "per-row activation parameters need M = {m} scales and zero points, got {} and {}",
                            scales.len(),
                            zero_points.len()
                        ),
                    });
                }
                scales.iter().try_for_each(|&s| qtensor::qparams::check_scale(s))?;
                zero_points
                    .iter()
                    .try_for_each(|&z| qtensor::qparams::check_zero_point(z, DType::QUInt8))?;
                (RowParam::PerRow(zero_points), RowParam::PerRow(scales))
            }
        };
        let has_a_zp = match a_zp {
            RowParam::Uniform(z) => z != 0,
            RowParam::PerRow(z) => z.iter().any(|&z| z != 0),
        };
        let row_sums = if w.zero_points().iter().any(|&z| z != 0) {
            a.chunks_exact(k)
                .map(|row| row.iter().map(|&v| v as i32).sum())
                .collect()
        } else {
            Vec::new()
        };
        let (kind, ptr) = match out {
            GemmOutput::U8(o) => (OutKind::U8, o.as_mut_ptr()),
            GemmOutput::I8(o) => (OutKind::I8, o.as_mut_ptr() as *mut u8),
            GemmOutput::F32(o) => (OutKind::F32, o.as_mut_ptr() as *mut u8),
            GemmOutput::I32(o) => (OutKind::I32, o.as_mut_ptr() as *mut u8),
            GemmOutput::F32Uninit(o) => (OutKind::F32, o.as_mut_ptr() as *mut u8),
        };
        let stage = match (prepared, epilogue, kind) {
            (Some(p), _, kind) => {
                if a_scale.get(0).to_bits() != p.act_scale.to_bits()
                    || !matches!(a_scale, RowParam::Uniform(_))
                    || p.multiplier.len() != n
                    || p.out_kind != kind
                {
                    return Err(param(format!(
                        "requantization prepared for activation scale {} and {} {:?} columns, the call has {a_scale:?} and {n} {kind:?}",
                        p.act_scale,
                        p.multiplier.len(),
                        p.out_kind
                    )));
                }
                p.stage()
            }
            (None, Epilogue::I32, OutKind::I32) => Stage::I32,
            (None, Epilogue::Requantize(r), OutKind::U8 | OutKind::I8) => {
                let RowParam::Uniform(act_scale) = a_scale else {
                    return Err(param(
                        "requantization needs per-tensor activation parameters (fbgemm ReQuantizeOutput); use Epilogue::Dequantize for per-row activations".into(),
                    ));
                };
                RequantStage::new(act_scale, w, r, kind == OutKind::U8)?.into_stage()
            }
            (None, Epilogue::Dequantize(d), OutKind::F32) => {
                check_bias(d.bias, n)?;
                Stage::Dequantize {
                    w_scales: w.scales(),
                    bias: d.bias.map_or_else(|| Cow::Owned(vec![0.0; n]), Cow::Borrowed),
                    relu: d.relu,
                }
            }
            (None, e, kind) => {
                return Err(param(format!(
                    "epilogue {} cannot write a {kind:?} output; use I32 -> GemmOutput::I32, Requantize -> U8/I8, Dequantize -> F32",
                    match e {
                        Epilogue::I32 => "I32",
                        Epilogue::Requantize(_) => "Requantize",
                        Epilogue::Dequantize(_) => "Dequantize",
                    }
                )))
            }
        };
        Ok(EpiloguePlan {
            a_zp,
            a_scale,
            col_offsets: w.col_offsets(),
            w_zps: w.zero_points(),
            row_sums,
            has_a_zp,
            stage,
            out: OutPtr { ptr, kind, ld: n },
        })
    }

    /// Sum of row `i` of the activations, 0 when no weight zero point needs it.
    #[inline]
    pub(crate) fn row_sum(&self, i: usize) -> i32 {
        if self.row_sums.is_empty() {
            0
        } else {
            self.row_sums[i]
        }
    }

    /// The integer stage for element `(i, j)`.
    #[inline]
    pub(crate) fn corrected(&self, acc: i32, i: usize, j: usize) -> i32 {
        acc.wrapping_sub(self.a_zp.get(i).wrapping_mul(self.col_offsets[j]))
            .wrapping_sub(self.row_sum(i).wrapping_mul(self.w_zps[j]))
    }

    /// Finishes `acc.len()` accumulators of row `i` starting at column `j0` and writes them.
    /// The reference for every vector epilogue.
    ///
    /// # Safety
    /// `i < M` and `j0 + acc.len() <= N`, and no other task writes these elements.
    pub(crate) unsafe fn finish_row(&self, i: usize, j0: usize, acc: &[i32]) {
        for (jj, &raw) in acc.iter().enumerate() {
            let j = j0 + jj;
            let c = self.corrected(raw, i, j);
            let dst = self.out.at(i, j);
            match &self.stage {
                Stage::I32 => (dst as *mut i32).write_unaligned(c),
                Stage::Requantize {
                    bias_term,
                    multiplier,
                    zero_point,
                    lo,
                    hi,
                } => {
                    let q = requantize_one(c, bias_term[j], multiplier[j], *zero_point, *lo, *hi);
                    if self.out.kind == OutKind::U8 {
                        dst.write(q as u8)
                    } else {
                        (dst as *mut i8).write(q as i8)
                    }
                }
                Stage::Dequantize { w_scales, bias, relu } => {
                    let y = dequantize_one(c, self.a_scale.get(i) * w_scales[j], bias[j], *relu);
                    (dst as *mut f32).write_unaligned(y)
                }
            }
        }
    }
}

/// Products beyond this magnitude saturate the output anyway; clamping first keeps the f32 to
/// i32 conversion in range on every path (it is an integer, so clamping commutes with rounding).
pub(crate) const ROUND_LIMIT: f32 = (1 << 30) as f32;

/// `clamp(round_half_even((f32(c) + bias_term) * multiplier) + zero_point, lo, hi)`.
#[inline]
pub(crate) fn requantize_one(c: i32, bias_term: f32, multiplier: f32, zero_point: i32, lo: i32, hi: i32) -> i32 {
    let x = (c as f32 + bias_term) * multiplier;
    let r = x.clamp(-ROUND_LIMIT, ROUND_LIMIT).round_ties_even() as i32;
    (r + zero_point).clamp(lo, hi)
}

/// `fma(f32(c), scale, bias)`, then ReLU as `y > 0 ? y : 0` (the vector `max(y, 0)`).
#[inline]
pub(crate) fn dequantize_one(c: i32, scale: f32, bias: f32, relu: bool) -> f32 {
    let y = (c as f32).mul_add(scale, bias);
    // NaN and -0.0 both become +0.0, as `vmaxps(y, 0)` returns its second operand for them.
    if relu && y.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        0.0
    } else {
        y
    }
}
