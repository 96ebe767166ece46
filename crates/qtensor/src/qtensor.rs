//! `QTensor`: integer storage plus the parameters that give it meaning.

use crate::quantize::{dequantize_into, quantize_into, quantize_one, Affine, Overflow};
use crate::{DType, QError, QParams, Result, Tensor};

/// The integers of a quantized tensor, in the width of its dtype.
#[derive(Debug, Clone, PartialEq)]
pub enum QData {
    U8(Vec<u8>),
    I8(Vec<i8>),
    I32(Vec<i32>),
    /// Two 4-bit values per byte, element `2k` in the low nibble of byte `k`.
    U4x2(Vec<u8>),
}

/// A quantized tensor: `real[i] = (q[i] - zero_point[c(i)]) * scale[c(i)]`, where `c(i)` is the
/// index along the per-channel axis (or 0 per tensor).
#[derive(Debug, Clone, PartialEq)]
pub struct QTensor {
    shape: Vec<usize>,
    dtype: DType,
    qparams: QParams,
    data: QData,
}

/// Sizes of the (outer, channel, inner) view of `shape` around `axis`.
fn channel_view(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

impl QTensor {
    /// Quantizes `x` with the default [`Overflow::Saturate`] behaviour. NaN or infinite input
    /// is an error.
    pub fn quantize(x: &Tensor, dtype: DType, qparams: QParams) -> Result<QTensor> {
        x.check_finite("tensor to quantize")?;
        QTensor::quantize_with(x, dtype, qparams, Overflow::Saturate)
    }

    /// Quantizes `x` with a chosen overflow behaviour. [`Overflow::Fbgemm`] reproduces PyTorch's
    /// integers for every input, including non-finite ones.
    pub fn quantize_with(x: &Tensor, dtype: DType, qparams: QParams, overflow: Overflow) -> Result<QTensor> {
        qparams.validate(dtype, x.shape())?;
        let n = x.numel();
        let per_block = |c: usize| -> Affine {
            let (scale, zero_point) = qparams.get(c);
            Affine {
                scale,
                zero_point,
                qmin: dtype.qmin(),
                qmax: dtype.qmax(),
                overflow,
            }
        };
        let mut ints = vec![0i32; 0];
        let data = match dtype {
            DType::QUInt8 => QData::U8(fill(x, &qparams, per_block, vec![0u8; n])?),
            DType::QInt8 => QData::I8(fill(x, &qparams, per_block, vec![0i8; n])?),
            DType::QInt32 => QData::I32(fill(x, &qparams, per_block, vec![0i32; n])?),
            DType::QUInt4x2 => {
                ints.resize(n, 0);
                let ints = fill(x, &qparams, per_block, ints)?;
                QData::U4x2(pack_nibbles(&ints))
            }
        };
        Ok(QTensor {
            shape: x.shape().to_vec(),
            dtype,
            qparams,
            data,
        })
    }

    /// Builds from raw integers (e.g. loaded from a file), checking ranges and lengths.
    pub fn from_int_repr(
        shape: impl Into<Vec<usize>>,
        dtype: DType,
        qparams: QParams,
        values: &[i32],
    ) -> Result<QTensor> {
        let shape = shape.into();
        let n: usize = shape.iter().product();
        if values.len() != n {
            return Err(QError::ShapeMismatch {
                shape,
                expected: n,
                got: values.len(),
            });
        }
        qparams.validate(dtype, &shape)?;
        if let Some(&bad) = values.iter().find(|&&v| v < dtype.qmin() || v > dtype.qmax()) {
            return Err(QError::Unsupported(format!("integer {bad} does not fit {dtype}")));
        }
        let data = match dtype {
            DType::QUInt8 => QData::U8(values.iter().map(|&v| v as u8).collect()),
            DType::QInt8 => QData::I8(values.iter().map(|&v| v as i8).collect()),
            DType::QInt32 => QData::I32(values.to_vec()),
            DType::QUInt4x2 => QData::U4x2(pack_nibbles(values)),
        };
        Ok(QTensor {
            shape,
            dtype,
            qparams,
            data,
        })
    }

    /// Wraps integer storage directly (no per-element checks beyond the storage type, which
    /// guarantees the dtype's range for 8-bit types); lengths and parameters are validated.
    pub fn from_data(shape: impl Into<Vec<usize>>, dtype: DType, qparams: QParams, data: QData) -> Result<QTensor> {
        let shape = shape.into();
        let n: usize = shape.iter().product();
        let (len, ok) = match (&data, dtype) {
            (QData::U8(v), DType::QUInt8) => (v.len(), true),
            (QData::I8(v), DType::QInt8) => (v.len(), true),
            (QData::I32(v), DType::QInt32) => (v.len(), true),
            (QData::U4x2(v), DType::QUInt4x2) => (v.len(), v.len() == n.div_ceil(2)),
            _ => (0, false),
        };
        if !ok {
            return Err(QError::Unsupported(format!("storage does not match dtype {dtype}")));
        }
        if dtype != DType::QUInt4x2 && len != n {
            return Err(QError::ShapeMismatch {
                shape,
                expected: n,
                got: len,
            });
        }
        qparams.validate(dtype, &shape)?;
        Ok(QTensor {
            shape,
            dtype,
            qparams,
            data,
        })
    }

    /// The same integers and parameters under a new shape with the same element count.
    pub fn reshaped(mut self, shape: impl Into<Vec<usize>>) -> Result<QTensor> {
        let shape = shape.into();
        let n: usize = shape.iter().product();
        if n != self.numel() || matches!(self.qparams, QParams::PerChannel { .. }) {
            return Err(QError::ShapeMismatch {
                shape,
                expected: self.numel(),
                got: n,
            });
        }
        self.shape = shape;
        Ok(self)
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn qparams(&self) -> &QParams {
        &self.qparams
    }

    pub fn data(&self) -> &QData {
        &self.data
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes of integer storage.
    pub fn storage_bytes(&self) -> usize {
        self.dtype.storage_bytes(self.numel())
    }

    /// The integers, widened to i32 (PyTorch `int_repr`).
    pub fn int_repr(&self) -> Vec<i32> {
        match &self.data {
            QData::U8(v) => v.iter().map(|&q| q as i32).collect(),
            QData::I8(v) => v.iter().map(|&q| q as i32).collect(),
            QData::I32(v) => v.clone(),
            QData::U4x2(v) => unpack_nibbles(v, self.numel()),
        }
    }

    /// Back to f32: `(q - zero_point) * scale`.
    pub fn dequantize(&self) -> Result<Tensor> {
        let n = self.numel();
        let mut out = vec![0.0f32; n];
        match (&self.data, &self.qparams) {
            (QData::U8(v), QParams::PerTensor { scale, zero_point }) => {
                dequantize_into(v, &mut out, *scale, *zero_point)?
            }
            (QData::I8(v), QParams::PerTensor { scale, zero_point }) => {
                dequantize_into(v, &mut out, *scale, *zero_point)?
            }
            (QData::I32(v), QParams::PerTensor { scale, zero_point }) => {
                dequantize_into(v, &mut out, *scale, *zero_point)?
            }
            _ => {
                let ints = self.int_repr();
                self.for_each_block(|c, range| {
                    let (scale, zp) = self.qparams.get(c);
                    for i in range {
                        out[i] = crate::quantize::dequantize_one(ints[i], scale, zp);
                    }
                });
            }
        }
        Tensor::new(self.shape.clone(), out)
    }

    /// Requantizes to new parameters (and possibly a new dtype) without going through f32
    /// tensors: `q' = clamp(zp' + round_half_even((q - zp) as f32 * (scale / scale')), ...)`.
    /// Per-channel input needs per-channel output on the same axis, or per-tensor output.
    pub fn requantize(&self, dtype: DType, qparams: QParams) -> Result<QTensor> {
        qparams.validate(dtype, &self.shape)?;
        if let (QParams::PerChannel { axis: a, .. }, QParams::PerChannel { axis: b, .. }) = (&self.qparams, &qparams) {
            if a != b {
                return Err(QError::Unsupported(format!(
                    "requantize from per-channel axis {a} to per-channel axis {b}; dequantize and quantize instead"
                )));
            }
        }
        let axis = match (&self.qparams, &qparams) {
            (QParams::PerChannel { axis, .. }, _) | (_, QParams::PerChannel { axis, .. }) => Some(*axis),
            _ => None,
        };
        let ints = self.int_repr();
        let mut out = vec![0i32; ints.len()];
        let blocks = |f: &mut dyn FnMut(usize, std::ops::Range<usize>)| match axis {
            None => f(0, 0..ints.len()),
            Some(axis) => {
                let (outer, channels, inner) = channel_view(&self.shape, axis);
                for o in 0..outer {
                    for c in 0..channels {
                        let start = (o * channels + c) * inner;
                        f(c, start..start + inner);
                    }
                }
            }
        };
        blocks(&mut |c, range| {
            let (s_in, zp_in) = self.qparams.get(c);
            let (s_out, zp_out) = qparams.get(c);
            let m = s_in / s_out;
            for i in range {
                out[i] = quantize_one(
                    (ints[i] - zp_in) as f32,
                    m,
                    zp_out,
                    dtype.qmin(),
                    dtype.qmax(),
                    Overflow::Saturate,
                );
            }
        });
        QTensor::from_int_repr(self.shape.clone(), dtype, qparams, &out)
    }

    fn for_each_block(&self, mut f: impl FnMut(usize, std::ops::Range<usize>)) {
        match &self.qparams {
            QParams::PerTensor { .. } => f(0, 0..self.numel()),
            QParams::PerChannel { axis, .. } => {
                let (outer, channels, inner) = channel_view(&self.shape, *axis);
                for o in 0..outer {
                    for c in 0..channels {
                        let start = (o * channels + c) * inner;
                        f(c, start..start + inner);
                    }
                }
            }
        }
    }
}

/// Quantizes `x` block by block (one block per tensor, or one per (outer, channel) pair).
fn fill<T: crate::quantize::QStorage>(
    x: &Tensor,
    qparams: &QParams,
    params: impl Fn(usize) -> Affine,
    mut out: Vec<T>,
) -> Result<Vec<T>> {
    match qparams {
        QParams::PerTensor { .. } => quantize_into(x.data(), &mut out, &params(0))?,
        QParams::PerChannel { axis, .. } => {
            let (outer, channels, inner) = channel_view(x.shape(), *axis);
            let blocks: Vec<Affine> = (0..channels).map(&params).collect();
            for o in 0..outer {
                for (c, p) in blocks.iter().enumerate() {
                    let start = (o * channels + c) * inner;
                    let range = start..start + inner;
                    quantize_into(&x.data()[range.clone()], &mut out[range], p)?;
                }
            }
        }
    }
    Ok(out)
}

/// Packs values in [0, 15] two per byte, low nibble first.
pub fn pack_nibbles(values: &[i32]) -> Vec<u8> {
    values
        .chunks(2)
        .map(|pair| (pair[0] as u8 & 0xF) | ((pair.get(1).copied().unwrap_or(0) as u8 & 0xF) << 4))
        .collect()
}

/// Inverse of [`pack_nibbles`] for `n` values.
pub fn unpack_nibbles(bytes: &[u8], n: usize) -> Vec<i32> {
    (0..n).map(|i| ((bytes[i / 2] >> (4 * (i % 2))) & 0xF) as i32).collect()
}
