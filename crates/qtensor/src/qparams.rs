//! Quantization parameters (scale, zero point) and the rules that derive them from an observed
//! range, written to reproduce PyTorch's arithmetic operation for operation.
//!
//! Two rules exist in PyTorch and both are here:
//! - [`QuantSpec::qparams_from_range`]: the observer rule (`torch.ao.quantization` observers'
//!   `_calculate_qparams`), used by static quantization and QAT.
//! - [`choose_dynamic_qparams`]: fbgemm's `ChooseQuantizationParams`, used by dynamic Linear to
//!   quantize activations on every call.

use crate::{DType, QError, Result};

/// `torch.finfo(torch.float32).eps`, PyTorch observers' default lower bound for a scale.
pub const F32_EPS: f32 = f32::EPSILON;

/// Smallest scale fbgemm's `ChooseQuantizationParams` returns (`SMALL_SCALE_THRESHOLD`).
pub const SMALL_SCALE_THRESHOLD: f32 = 6.1e-5;

/// How the quantized range is placed around zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Any zero point: the range [min, max] (widened to include 0) maps onto [qmin, qmax].
    Affine,
    /// Zero point fixed at the middle of the range (0 for signed types, 128 for quint8).
    Symmetric,
}

/// The parameters that map integers to reals: `real = (q - zero_point) * scale`.
#[derive(Debug, Clone, PartialEq)]
pub enum QParams {
    /// One scale and zero point for the whole tensor.
    PerTensor { scale: f32, zero_point: i32 },
    /// One scale and zero point per slice along `axis`.
    PerChannel {
        axis: usize,
        scales: Vec<f32>,
        zero_points: Vec<i32>,
    },
}

impl QParams {
    /// Per-tensor parameters, checked against `dtype`.
    pub fn per_tensor(scale: f32, zero_point: i32, dtype: DType) -> Result<QParams> {
        check_scale(scale)?;
        check_zero_point(zero_point, dtype)?;
        Ok(QParams::PerTensor { scale, zero_point })
    }

    /// Per-channel parameters, checked against `dtype`.
    pub fn per_channel(axis: usize, scales: Vec<f32>, zero_points: Vec<i32>, dtype: DType) -> Result<QParams> {
        if scales.len() != zero_points.len() {
            return Err(QError::LengthMismatch {
                what: "per-channel zero points",
                expected: scales.len(),
                got: zero_points.len(),
            });
        }
        if scales.is_empty() {
            return Err(QError::Empty {
                what: "per-channel scales",
            });
        }
        for &s in &scales {
            check_scale(s)?;
        }
        for &z in &zero_points {
            check_zero_point(z, dtype)?;
        }
        Ok(QParams::PerChannel {
            axis,
            scales,
            zero_points,
        })
    }

    /// Number of (scale, zero point) pairs.
    pub fn channels(&self) -> usize {
        match self {
            QParams::PerTensor { .. } => 1,
            QParams::PerChannel { scales, .. } => scales.len(),
        }
    }

    /// The (scale, zero point) pair of channel `c` (any `c` for per-tensor parameters).
    pub fn get(&self, c: usize) -> (f32, i32) {
        match self {
            QParams::PerTensor { scale, zero_point } => (*scale, *zero_point),
            QParams::PerChannel {
                scales, zero_points, ..
            } => (scales[c], zero_points[c]),
        }
    }

    /// Checks the parameters against a dtype and a tensor shape.
    pub fn validate(&self, dtype: DType, shape: &[usize]) -> Result<()> {
        match self {
            QParams::PerTensor { scale, zero_point } => {
                check_scale(*scale)?;
                check_zero_point(*zero_point, dtype)
            }
            QParams::PerChannel {
                axis,
                scales,
                zero_points,
            } => {
                if *axis >= shape.len() {
                    return Err(QError::AxisOutOfRange {
                        axis: *axis,
                        rank: shape.len(),
                    });
                }
                for (what, len) in [
                    ("per-channel scales", scales.len()),
                    ("per-channel zero points", zero_points.len()),
                ] {
                    if len != shape[*axis] {
                        return Err(QError::LengthMismatch {
                            what,
                            expected: shape[*axis],
                            got: len,
                        });
                    }
                }
                scales.iter().try_for_each(|&s| check_scale(s))?;
                zero_points.iter().try_for_each(|&z| check_zero_point(z, dtype))
            }
        }
    }
}

/// A scale must be finite and positive.
pub fn check_scale(scale: f32) -> Result<()> {
    if scale.is_finite() && scale > 0.0 {
        Ok(())
    } else {
        Err(QError::InvalidScale { scale })
    }
}

/// A zero point must be representable in the dtype.
pub fn check_zero_point(zero_point: i32, dtype: DType) -> Result<()> {
    if (dtype.qmin()..=dtype.qmax()).contains(&zero_point) {
        Ok(())
    } else {
        Err(QError::ZeroPointOutOfRange {
            zero_point,
            dtype,
            qmin: dtype.qmin(),
            qmax: dtype.qmax(),
        })
    }
}

/// What an observer is asked to produce: dtype, scheme, range options and the scale floor.
/// Mirrors the arguments of PyTorch's observers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantSpec {
    pub dtype: DType,
    pub scheme: Scheme,
    /// Halve the integer range (e.g. quint8 [0, 127]), PyTorch's guard for CPUs whose int8
    /// multiply-add saturates 16-bit intermediates.
    pub reduce_range: bool,
    /// A custom [quant_min, quant_max]; `None` uses the dtype's range.
    pub custom_range: Option<(i32, i32)>,
    /// Lower bound for the scale (PyTorch: `torch.finfo(torch.float32).eps`).
    pub eps: f32,
}

impl QuantSpec {
    /// Full range, default eps.
    pub const fn new(dtype: DType, scheme: Scheme) -> QuantSpec {
        QuantSpec {
            dtype,
            scheme,
            reduce_range: false,
            custom_range: None,
            eps: F32_EPS,
        }
    }

    /// PyTorch's default activation spec: quint8, affine.
    pub const fn activation_default() -> QuantSpec {
        QuantSpec::new(DType::QUInt8, Scheme::Affine)
    }

    /// PyTorch's default weight spec: qint8, symmetric.
    pub const fn weight_default() -> QuantSpec {
        QuantSpec::new(DType::QInt8, Scheme::Symmetric)
    }

    pub const fn with_reduce_range(mut self, reduce_range: bool) -> QuantSpec {
        self.reduce_range = reduce_range;
        self
    }

    pub const fn with_custom_range(mut self, qmin: i32, qmax: i32) -> QuantSpec {
        self.custom_range = Some((qmin, qmax));
        self
    }

    pub const fn with_eps(mut self, eps: f32) -> QuantSpec {
        self.eps = eps;
        self
    }

    /// The integer range [quant_min, quant_max] (PyTorch `calculate_qmin_qmax`): the custom
    /// range or the dtype's, halved with floor division when `reduce_range` is set.
    pub fn quant_range(&self) -> Result<(i32, i32)> {
        let (qmin, qmax) = match self.custom_range {
            Some((lo, hi)) => {
                let fits = lo >= self.dtype.qmin() && hi <= self.dtype.qmax();
                if !(fits && lo <= 0 && 0 <= hi && lo < hi) {
                    return Err(QError::InvalidQuantRange {
                        qmin: lo,
                        qmax: hi,
                        dtype: self.dtype,
                    });
                }
                (lo, hi)
            }
            None => (self.dtype.qmin(), self.dtype.qmax()),
        };
        if self.reduce_range {
            Ok((qmin.div_euclid(2), qmax.div_euclid(2)))
        } else {
            Ok((qmin, qmax))
        }
    }

    /// Scale and zero point for the observed range [min, max], exactly as PyTorch observers
    /// compute them (`_calculate_qparams`), all in f32:
    ///
    /// - the range is widened to include 0: `min_neg = min(min, 0)`, `max_pos = max(max, 0)`;
    /// - affine: `scale = max(eps, (max_pos - min_neg) / (qmax - qmin))`,
    ///   `zp = clamp(qmin - round_half_even(min_neg / scale), qmin, qmax)`;
    /// - symmetric: `scale = max(eps, max(-min_neg, max_pos) / ((qmax - qmin) / 2))`,
    ///   `zp = 0` for signed types, 128 for quint8 (the floored midpoint with a custom range).
    ///
    /// Errors on non-finite bounds, on `min > max`, and on a symmetric unsigned spec whose
    /// midpoint zero point falls outside the range (quint8 with `reduce_range`).
    pub fn qparams_from_range(&self, min: f32, max: f32) -> Result<(f32, i32)> {
        for (value, index) in [(min, 0), (max, 1)] {
            if !value.is_finite() {
                return Err(QError::NonFinite {
                    what: "observed range [min, max]",
                    index,
                    value,
                });
            }
        }
        if min > max {
            return Err(QError::InvalidRange { min, max });
        }
        let (qmin, qmax) = self.quant_range()?;
        let min_neg = min.min(0.0);
        let max_pos = max.max(0.0);
        match self.scheme {
            Scheme::Symmetric => {
                let amax = (-min_neg).max(max_pos);
                let scale = (amax / ((qmax - qmin) as f32 / 2.0)).max(self.eps);
                let zero_point = if self.dtype.is_signed() {
                    0
                } else if self.custom_range.is_some() {
                    (qmin + qmax).div_euclid(2)
                } else {
                    128
                };
                if !(qmin..=qmax).contains(&zero_point) {
                    return Err(QError::InvalidQuantRange {
                        qmin,
                        qmax,
                        dtype: self.dtype,
                    });
                }
                Ok((scale, zero_point))
            }
            Scheme::Affine => {
                let scale = ((max_pos - min_neg) / (qmax - qmin) as f32).max(self.eps);
                let shift = (min_neg / scale).round_ties_even() as i64;
                let zero_point = (qmin as i64 - shift).clamp(qmin as i64, qmax as i64) as i32;
                Ok((scale, zero_point))
            }
        }
    }

    /// Per-channel version of [`QuantSpec::qparams_from_range`].
    pub fn qparams_from_ranges(&self, mins: &[f32], maxs: &[f32]) -> Result<(Vec<f32>, Vec<i32>)> {
        if mins.len() != maxs.len() {
            return Err(QError::LengthMismatch {
                what: "per-channel maxima",
                expected: mins.len(),
                got: maxs.len(),
            });
        }
        if mins.is_empty() {
            return Err(QError::Empty {
                what: "per-channel ranges",
            });
        }
        mins.iter()
            .zip(maxs)
            .map(|(&lo, &hi)| self.qparams_from_range(lo, hi))
            .collect::<Result<Vec<_>>>()
            .map(|pairs| pairs.into_iter().unzip())
    }
}

/// fbgemm's `ChooseQuantizationParams`, as PyTorch's dynamic Linear calls it to quantize its
/// activations on each call (affine, no sparsity preservation, no power-of-two scale):
///
/// 1. `reduce_range` halves qmin and qmax (truncating division);
/// 2. the range is widened to include 0;
/// 3. `scale = (max - min) / (qmax - qmin)` in f64; a scale that is 0 in f32, or whose f32
///    reciprocal is infinite, becomes 0.1;
/// 4. scales below [`SMALL_SCALE_THRESHOLD`] are raised to it, stretching min and max alike;
/// 5. the zero point comes from whichever of (min, qmin) and (max, qmax) carries the smaller
///    arithmetic error, rounded half to even and clamped to [qmin, qmax];
/// 6. the scale is returned rounded to f32.
pub fn choose_dynamic_qparams(min: f32, max: f32, qmin: i32, qmax: i32, reduce_range: bool) -> Result<(f32, i32)> {
    for (value, index) in [(min, 0), (max, 1)] {
        if !value.is_finite() {
            return Err(QError::NonFinite {
                what: "activation range [min, max]",
                index,
                value,
            });
        }
    }
    if min > max {
        return Err(QError::InvalidRange { min, max });
    }
    let (qmin, qmax) = if reduce_range {
        (qmin / 2, qmax / 2)
    } else {
        (qmin, qmax)
    };
    if qmin >= qmax {
        return Err(QError::InvalidQuantRange {
            qmin,
            qmax,
            dtype: DType::QInt32,
        });
    }
    let mut min = min.min(0.0);
    let mut max = max.max(0.0);
    let span = (qmax - qmin) as f64;
    let mut scale = (max as f64 - min as f64) / span;
    if scale as f32 == 0.0 || (1.0f32 / scale as f32).is_infinite() {
        scale = 0.1;
    }
    if scale < SMALL_SCALE_THRESHOLD as f64 {
        let original = scale as f32;
        scale = SMALL_SCALE_THRESHOLD as f64;
        if min == 0.0 {
            max = SMALL_SCALE_THRESHOLD * (qmax - qmin) as f32;
        } else if max == 0.0 {
            min = -SMALL_SCALE_THRESHOLD * (qmax - qmin) as f32;
        } else {
            let amplifier = SMALL_SCALE_THRESHOLD / original;
            min *= amplifier;
            max *= amplifier;
        }
    }
    let from_min = qmin as f64 - min as f64 / scale;
    let from_max = qmax as f64 - max as f64 / scale;
    let from_min_error = (qmin as f64).abs() - (min as f64 / scale).abs();
    let from_max_error = (qmax as f64).abs() - (max as f64 / scale).abs();
    let initial = if from_min_error < from_max_error {
        from_min
    } else {
        from_max
    };
    let zero_point = if initial < qmin as f64 {
        qmin
    } else if initial > qmax as f64 {
        qmax
    } else {
        initial.round_ties_even() as i32
    };
    Ok((scale as f32, zero_point))
}
