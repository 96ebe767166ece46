//! Quantization parameters of convolution operands and the per-output-channel requantization
//! epilogue every convolution path applies identically.
//!
//! PyTorch fbgemm `ReQuantizeOutput` (float bias, the vector form fbgemm runs on x86), for
//! output channel `c`: `act_times_w = act_scale * w_scale[c]` (f32), bias term
//! `bias[c] / act_times_w` (f32 division) for per-channel weights and
//! `bias[c] * f32(1.0 / f64(act_times_w))` (a reciprocal computed in f64) for per-tensor weights,
//! `multiplier = act_times_w / out_scale` (f32), and
//! `y = clamp(round_half_even((acc as f32 + bias_term) * multiplier) + out_zp, lo, hi)` where
//! `acc = sum (x - x_zp) * (w - w_zp[c])` exactly in i32 and `[lo, hi]` is `[0, 255]`, or
//! `[out_zp, 255]` with a fused ReLU, or `[out_zp, q(6.0)]` with a fused ReLU6. fbgemm's
//! depthwise kernels apply the same operations in the same order.

use qtensor::quantize::{quantize_one, Overflow};
use qtensor::QParams;

use crate::{KernelError, Result};

/// Per-tensor `quint8` activation parameters: `real = (q - zero_point) * scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActQuant {
    pub scale: f32,
    pub zero_point: i32,
}

impl ActQuant {
    /// Checks that the scale is finite and positive and the zero point lies in `[0, 255]`.
    pub fn new(scale: f32, zero_point: i32) -> Result<ActQuant> {
        qtensor::qparams::check_scale(scale)?;
        qtensor::qparams::check_zero_point(zero_point, qtensor::DType::QUInt8)?;
        Ok(ActQuant { scale, zero_point })
    }

    /// `q = clamp(zp + round_half_even(x * (1 / scale)), 0, 255)` (PyTorch `quantize_val`).
    pub fn quantize(&self, x: f32) -> u8 {
        quantize_one(x, 1.0 / self.scale, self.zero_point, 0, 255, Overflow::Saturate) as u8
    }
}

/// Activation fused into the requantization epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FusedActivation {
    #[default]
    None,
    /// Lower bound at the output zero point (PyTorch `ConvReLU2d`).
    Relu,
    /// ReLU plus an upper bound at the quantized 6.0.
    Relu6,
}

/// Weight quantization of a convolution: one `(scale, zero_point)` for the whole tensor, or one
/// per output channel. Weights are `qint8`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvWeightQuant {
    scales: Vec<f32>,
    zero_points: Vec<i32>,
}

impl ConvWeightQuant {
    pub fn per_tensor(scale: f32, zero_point: i32) -> Result<ConvWeightQuant> {
        Self::per_channel(vec![scale], vec![zero_point])
    }

    /// One entry per output channel (or a single entry for per-tensor).
    pub fn per_channel(scales: Vec<f32>, zero_points: Vec<i32>) -> Result<ConvWeightQuant> {
        let q = QParams::per_channel(0, scales, zero_points, qtensor::DType::QInt8)?;
        Self::from_qparams(&q)
    }

    /// From qtensor parameters (per-channel parameters describe output channels).
    pub fn from_qparams(q: &QParams) -> Result<ConvWeightQuant> {
        match q {
            QParams::PerTensor { scale, zero_point } => {
                qtensor::qparams::check_scale(*scale)?;
                Ok(ConvWeightQuant {
                    scales: vec![*scale],
                    zero_points: vec![*zero_point],
                })
            }
            QParams::PerChannel {
                scales, zero_points, ..
            } => {
                for &s in scales {
                    qtensor::qparams::check_scale(s)?;
                }
                Ok(ConvWeightQuant {
                    scales: scales.clone(),
                    zero_points: zero_points.clone(),
                })
            }
        }
    }

    pub fn is_per_channel(&self) -> bool {
        self.scales.len() > 1
    }

    /// Checks the entry count against the output channels.
    pub fn check_channels(&self, op: &'static str, c_out: usize) -> Result<()> {
        if self.scales.len() == 1 || self.scales.len() == c_out {
            Ok(())
        } else {
            Err(KernelError::Shape {
                op,
                detail: format!(
                    "{} weight scales for {c_out} output channels; give one per tensor or one per output channel",
                    self.scales.len()
                ),
            })
        }
    }

    #[inline]
    pub fn scale(&self, c: usize) -> f32 {
        self.scales[if self.scales.len() == 1 { 0 } else { c }]
    }

    #[inline]
    pub fn zero_point(&self, c: usize) -> i32 {
        self.zero_points[if self.zero_points.len() == 1 { 0 } else { c }]
    }

    /// True when every zero point is 0 (symmetric weights, the usual case).
    pub fn is_symmetric(&self) -> bool {
        self.zero_points.iter().all(|&z| z == 0)
    }
}

/// Per-output-channel requantization: see the module docs for the formula.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvRequant {
    pub bias_term: Vec<f32>,
    pub multiplier: Vec<f32>,
    pub zero_point: i32,
    pub lo: i32,
    pub hi: i32,
}

impl ConvRequant {
    /// Builds the epilogue for one call from the operands' quantization parameters.
    pub fn new(
        op: &'static str,
        input: ActQuant,
        weights: &ConvWeightQuant,
        c_out: usize,
        bias: Option<&[f32]>,
        output: ActQuant,
        activation: FusedActivation,
    ) -> Result<ConvRequant> {
        weights.check_channels(op, c_out)?;
        if let Some(b) = bias {
            if b.len() != c_out {
                return Err(KernelError::Shape {
                    op,
                    detail: format!("bias has {} values for {c_out} output channels", b.len()),
                });
            }
            if let Some((i, v)) = qtensor::quantize::first_non_finite(b) {
                return Err(KernelError::Param {
                    op,
                    detail: format!("bias[{i}] = {v} is not finite; fix the float bias"),
                });
            }
        }
        let mut bias_term = Vec::with_capacity(c_out);
        let mut multiplier = Vec::with_capacity(c_out);
        for c in 0..c_out {
            let act_times_w = input.scale * weights.scale(c);
            bias_term.push(bias.map_or(0.0, |b| {
                if weights.is_per_channel() {
                    b[c] / act_times_w
                } else {
                    b[c] * (1.0 / act_times_w as f64) as f32
                }
            }));
            multiplier.push(act_times_w / output.scale);
        }
        let (lo, hi) = match activation {
            FusedActivation::None => (0, 255),
            FusedActivation::Relu => (output.zero_point, 255),
            FusedActivation::Relu6 => (output.zero_point, output.quantize(6.0) as i32),
        };
        Ok(ConvRequant {
            bias_term,
            multiplier,
            zero_point: output.zero_point,
            lo,
            hi,
        })
    }

    /// Requantizes the exact accumulator of output channel `c`.
    #[inline]
    pub fn apply(&self, c: usize, acc: i32) -> u8 {
        requantize(
            acc,
            self.bias_term[c],
            self.multiplier[c],
            self.zero_point,
            self.lo,
            self.hi,
        )
    }
}

/// `clamp(round_half_even((acc as f32 + bias_term) * multiplier) + zp, lo, hi)`.
#[inline]
pub fn requantize(acc: i32, bias_term: f32, multiplier: f32, zero_point: i32, lo: i32, hi: i32) -> u8 {
    let scaled = (acc as f32 + bias_term) * multiplier;
    let r = scaled.round_ties_even() as i64 + zero_point as i64;
    r.clamp(lo as i64, hi as i64) as u8
}

/// The requantization above, 16 output channels at a time, for the AVX-512 kernels.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// Products beyond this magnitude saturate anyway; clamping before the conversion keeps
    /// huge values from turning into `i32::MIN` (an integer bound, so it commutes with rounding).
    const CLAMP: f32 = (1u32 << 30) as f32;

    /// `round_half_even((f32(acc) + bias_term) * multiplier) + zero_point` for 16 lanes, not
    /// yet clamped to `[lo, hi]`: the operations of [`super::requantize`] in the same order.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn requant16(
        acc: __m512i,
        bias_term: __m512,
        multiplier: __m512,
        zero_point: __m512i,
    ) -> __m512i {
        let f = _mm512_mul_ps(_mm512_add_ps(_mm512_cvtepi32_ps(acc), bias_term), multiplier);
        let f = _mm512_min_ps(_mm512_max_ps(f, _mm512_set1_ps(-CLAMP)), _mm512_set1_ps(CLAMP));
        let r = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(f);
        _mm512_add_epi32(r, zero_point)
    }

    /// [`requant16`] when `|(f32(acc) + bias_term) * multiplier| <= 2^30` is known for every
    /// lane (see [`float_clamp_needed`]): its float clamp cannot act, so it is left out.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn requant16_in_range(
        acc: __m512i,
        bias_term: __m512,
        multiplier: __m512,
        zero_point: __m512i,
    ) -> __m512i {
        let f = _mm512_mul_ps(_mm512_add_ps(_mm512_cvtepi32_ps(acc), bias_term), multiplier);
        let r = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(f);
        _mm512_add_epi32(r, zero_point)
    }

    /// Whether `requant16`'s float clamp can act for sums bounded by `|acc| <= acc_bound`:
    /// false when `(acc_bound + |bias_term|) * |multiplier|`, with a margin far above the f32
    /// rounding of the three operations, stays below the clamp for every channel.
    pub(crate) fn float_clamp_needed(acc_bound: f64, bias_term: &[f32], multiplier: &[f32]) -> bool {
        bias_term
            .iter()
            .zip(multiplier)
            .map(|(&b, &m)| (acc_bound + b.abs() as f64) * m.abs() as f64 * 1.01)
            .any(|bound| !bound.is_finite() || bound >= CLAMP as f64)
    }
}
