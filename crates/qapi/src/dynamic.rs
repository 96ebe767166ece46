//! Dynamic quantization: weights quantized once ahead of time, activations quantized on every
//! call from their own range, int8 GEMM, f32 out. For transformers and RNNs, whose activation
//! ranges vary too much from input to input for fixed parameters.
//!
//! Two configurations matter:
//! - [`DynamicConfig::qforge`] (the default): per-channel symmetric weights and per-row
//!   (per-token) activations over the full 8-bit range. Each token gets its own scale, so one
//!   token with large values does not flatten the resolution of the others. The full range is
//!   safe because every kernel path accumulates u8 x s8 products without 16-bit saturation.
//! - [`DynamicConfig::pytorch_fbgemm`]: PyTorch's `quantize_dynamic` on x86: per-tensor
//!   symmetric weights, one activation range for the whole input with `reduce_range` (7-bit
//!   activations), chosen by fbgemm's `ChooseQuantizationParams`. Reproduces PyTorch's outputs.

use qgraph::ops::gemm::{sgemm, MatRef};
use qkernels::gemm::{gemm_f32_dynamic_vec, Dequantize, DynamicGranularity, DynamicScratch, GemmConfig, PackedWeights};
use qtensor::{DType, QParams, QTensor, QuantSpec, Scheme, Tensor};
use std::cell::RefCell;

use crate::{ApiError, Result};

/// How the weights are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum WeightGranularity {
    /// One scale per output channel (row of the weight).
    PerChannel,
    /// One scale for the whole weight.
    PerTensor,
}

/// How the activations are quantized on each call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ActivationGranularity {
    /// One (scale, zero point) per row (per token).
    PerRow,
    /// One (scale, zero point) for the whole input.
    PerTensor,
}

/// The stored weight type of dynamically quantized layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DynamicDType {
    /// int8 weights, int8 GEMM.
    QInt8,
    /// Weight-only float16: weights stored in half precision, computed in f32.
    Float16,
}

/// Configuration of dynamic quantization. See the module docs for the presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct DynamicConfig {
    pub dtype: DynamicDType,
    pub weights: WeightGranularity,
    pub activations: ActivationGranularity,
    /// 7-bit activations ([0, 127]), PyTorch's guard for CPUs that saturate 16-bit sums.
    pub reduce_range: bool,
}

impl Default for DynamicConfig {
    fn default() -> DynamicConfig {
        DynamicConfig::qforge()
    }
}

impl DynamicConfig {
    /// The most accurate int8 setting: per-channel weights, per-row activations, full range.
    pub const fn qforge() -> DynamicConfig {
        DynamicConfig {
            dtype: DynamicDType::QInt8,
            weights: WeightGranularity::PerChannel,
            activations: ActivationGranularity::PerRow,
            reduce_range: false,
        }
    }

    /// PyTorch's x86 (fbgemm) dynamic quantization, output for output.
    pub const fn pytorch_fbgemm() -> DynamicConfig {
        DynamicConfig {
            dtype: DynamicDType::QInt8,
            weights: WeightGranularity::PerTensor,
            activations: ActivationGranularity::PerTensor,
            reduce_range: true,
        }
    }

    /// Weight-only float16.
    pub const fn float16() -> DynamicConfig {
        DynamicConfig {
            dtype: DynamicDType::Float16,
            weights: WeightGranularity::PerTensor,
            activations: ActivationGranularity::PerTensor,
            reduce_range: false,
        }
    }
}

/// Quantizes a `[N, K]` weight as PyTorch's dynamic weight observers do: symmetric qint8 from
/// the min/max (`MinMaxObserver` per tensor, `PerChannelMinMaxObserver` on axis 0 per channel).
pub fn quantize_weight(weight: &Tensor, granularity: WeightGranularity) -> Result<QTensor> {
    let [n, k] = weight.shape() else {
        return Err(ApiError::BadTensor {
            name: "weight".into(),
            detail: format!("expected a 2-d [out, in] weight, got shape {:?}", weight.shape()),
        });
    };
    let (n, k) = (*n, *k);
    weight.check_finite("weight")?;
    let spec = QuantSpec::new(DType::QInt8, Scheme::Symmetric);
    let qparams = match granularity {
        WeightGranularity::PerTensor => {
            let (lo, hi) = weight.min_max()?;
            let (scale, zp) = spec.qparams_from_range(lo, hi)?;
            QParams::per_tensor(scale, zp, DType::QInt8)?
        }
        WeightGranularity::PerChannel => {
            let (mins, maxs): (Vec<f32>, Vec<f32>) =
                weight.data().chunks(k.max(1)).take(n).map(qtensor::min_max).unzip();
            let (scales, zps) = spec.qparams_from_ranges(&mins, &maxs)?;
            QParams::per_channel(0, scales, zps, DType::QInt8)?
        }
    };
    Ok(QTensor::quantize(weight, DType::QInt8, qparams)?)
}

thread_local! {
    /// The quantized activations of the last dynamic Linear run on this thread, kept so the
    /// next call reuses the buffer.
    static SCRATCH: RefCell<DynamicScratch> = RefCell::new(DynamicScratch::new());
}

/// A dynamically quantized `Linear`: `y = dequant(quant(x) x W_q^T) + b`, f32 in and out.
#[derive(Debug, Clone)]
pub struct DynamicLinear {
    weights: LinearWeights,
    bias: Option<Vec<f32>>,
    in_features: usize,
    out_features: usize,
    config: DynamicConfig,
}

#[derive(Debug, Clone)]
enum LinearWeights {
    Int8 {
        packed: Box<PackedWeights>,
        stored: QTensor,
    },
    Float16 {
        weight: Vec<half::f16>,
    },
}

impl DynamicLinear {
    /// Quantizes an fp32 Linear (`weight` `[out, in]`, optional `bias` `[out]`).
    pub fn new(weight: &Tensor, bias: Option<&Tensor>, config: DynamicConfig) -> Result<DynamicLinear> {
        match config.dtype {
            DynamicDType::QInt8 => {
                let q = quantize_weight(weight, config.weights)?;
                DynamicLinear::from_quantized(q, bias.map(|b| b.data().to_vec()), config)
            }
            DynamicDType::Float16 => {
                let [n, k] = weight.shape() else {
                    return Err(ApiError::BadTensor {
                        name: "weight".into(),
                        detail: format!("expected a 2-d [out, in] weight, got shape {:?}", weight.shape()),
                    });
                };
                weight.check_finite("weight")?;
                let linear = DynamicLinear {
                    weights: LinearWeights::Float16 {
                        weight: weight.to_f16(),
                    },
                    bias: bias.map(|b| b.data().to_vec()),
                    in_features: *k,
                    out_features: *n,
                    config,
                };
                linear.check_bias()?;
                Ok(linear)
            }
        }
    }

    /// Wraps an already quantized qint8 weight `[out, in]` (e.g. taken from PyTorch).
    pub fn from_quantized(weight: QTensor, bias: Option<Vec<f32>>, config: DynamicConfig) -> Result<DynamicLinear> {
        let [n, k] = weight.shape() else {
            return Err(ApiError::BadTensor {
                name: "weight".into(),
                detail: format!("expected a 2-d [out, in] weight, got shape {:?}", weight.shape()),
            });
        };
        let (n, k) = (*n, *k);
        if weight.dtype() != DType::QInt8 {
            return Err(ApiError::BadTensor {
                name: "weight".into(),
                detail: format!("dynamic Linear needs qint8 weights, got {}", weight.dtype()),
            });
        }
        let ints: Vec<i8> = weight.int_repr().into_iter().map(|v| v as i8).collect();
        let packed = PackedWeights::from_qparams(&ints, n, k, weight.qparams())?;
        let linear = DynamicLinear {
            weights: LinearWeights::Int8 {
                packed: Box::new(packed),
                stored: weight,
            },
            bias,
            in_features: k,
            out_features: n,
            config,
        };
        linear.check_bias()?;
        Ok(linear)
    }

    /// Rebuilds a float16 weight-only Linear from its stored parts (`weight` `[out, in]`
    /// row-major).
    pub fn from_f16(
        weight: Vec<half::f16>,
        out_features: usize,
        in_features: usize,
        bias: Option<Vec<f32>>,
        config: DynamicConfig,
    ) -> Result<DynamicLinear> {
        if weight.len() != out_features * in_features || config.dtype != DynamicDType::Float16 {
            return Err(ApiError::BadTensor {
                name: "weight".into(),
                detail: format!(
                    "float16 Linear [{out_features}, {in_features}] needs {} values and a float16 config, got {} values, {:?}",
                    out_features * in_features,
                    weight.len(),
                    config.dtype
                ),
            });
        }
        let linear = DynamicLinear {
            weights: LinearWeights::Float16 { weight },
            bias,
            in_features,
            out_features,
            config,
        };
        linear.check_bias()?;
        Ok(linear)
    }

    fn check_bias(&self) -> Result<()> {
        match &self.bias {
            Some(b) if b.len() != self.out_features => Err(ApiError::BadTensor {
                name: "bias".into(),
                detail: format!("expected {} values, got {}", self.out_features, b.len()),
            }),
            _ => Ok(()),
        }
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn config(&self) -> &DynamicConfig {
        &self.config
    }

    pub fn bias(&self) -> Option<&[f32]> {
        self.bias.as_deref()
    }

    /// The stored int8 weight (`None` for float16 weights).
    pub fn quantized_weight(&self) -> Option<&QTensor> {
        match &self.weights {
            LinearWeights::Int8 { stored, .. } => Some(stored),
            LinearWeights::Float16 { .. } => None,
        }
    }

    /// The float16 weight (`None` for int8 weights).
    pub fn f16_weight(&self) -> Option<&[half::f16]> {
        match &self.weights {
            LinearWeights::Int8 { .. } => None,
            LinearWeights::Float16 { weight } => Some(weight),
        }
    }

    /// Bytes of stored parameters (weights, their scales and zero points, bias).
    pub fn size_bytes(&self) -> usize {
        let weights = match &self.weights {
            LinearWeights::Int8 { stored, .. } => stored.storage_bytes() + 8 * stored.qparams().channels(),
            LinearWeights::Float16 { weight } => 2 * weight.len(),
        };
        weights + 4 * self.bias.as_ref().map_or(0, Vec::len)
    }

    /// `x` `[..., in]` -> `[..., out]`. Errors on a wrong trailing dimension or non-finite input.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, false)
    }

    /// [`DynamicLinear::forward`] followed by `max(y, 0)` when `relu` (PyTorch's dynamic
    /// `LinearReLU`), fused into the GEMM epilogue.
    pub fn forward_with(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        let k = self.in_features;
        let shape = x.shape();
        if shape.last() != Some(&k) {
            return Err(ApiError::BadTensor {
                name: "input".into(),
                detail: format!("dynamic Linear expects [..., {k}], got {shape:?}"),
            });
        }
        let m = x.numel() / k;
        let mut out_shape = shape.to_vec();
        *out_shape.last_mut().expect("rank >= 1") = self.out_features;
        let y = match &self.weights {
            LinearWeights::Int8 { packed, .. } if m > 0 => self.forward_int8(x.data(), m, packed, relu)?,
            LinearWeights::Float16 { weight } if m > 0 => {
                x.check_finite("dynamic Linear input")?;
                let mut y = vec![0f32; m * self.out_features];
                self.forward_f16(x.data(), m, weight, relu, &mut y);
                y
            }
            _ => Vec::new(),
        };
        Ok(Tensor::new(out_shape, y)?)
    }

    /// Per call: activations quantized to u8 (per tensor, or per row: vectorized finite
    /// min/max, fbgemm `ChooseQuantizationParams`, quantize), then the int8 GEMM with a
    /// dequantizing epilogue, all in [`gemm_f32_dynamic_vec`], which splits the range scan and
    /// the quantization over the GEMM's threads with the same bits for every thread count. The
    /// quantized activations go to a buffer kept per thread, so repeated calls do not allocate
    /// it again.
    fn forward_int8(&self, x: &[f32], m: usize, packed: &PackedWeights, relu: bool) -> Result<Vec<f32>> {
        let granularity = match self.config.activations {
            ActivationGranularity::PerTensor => DynamicGranularity::PerTensor,
            ActivationGranularity::PerRow => DynamicGranularity::PerRow,
        };
        let epilogue = Dequantize {
            bias: self.bias.as_deref(),
            relu,
        };
        let run = |scratch: &mut DynamicScratch| {
            gemm_f32_dynamic_vec(
                x,
                m,
                granularity,
                self.config.reduce_range,
                packed,
                &epilogue,
                scratch,
                &GemmConfig::default(),
            )
        };
        let result = SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => run(&mut scratch),
            // A nested call on this thread (a rayon task run while waiting inside the GEMM)
            // while the buffer is in use: it gets its own.
            Err(_) => run(&mut DynamicScratch::new()),
        });
        let (y, _path) = result.map_err(input_error)?;
        Ok(y)
    }

    /// Weight-only float16: the weight is widened to f32 on each call (it stays 2 bytes per
    /// value at rest) and multiplied with qgraph's fp32 `sgemm`, bias added first.
    fn forward_f16(&self, x: &[f32], m: usize, weight: &[half::f16], relu: bool, y: &mut [f32]) {
        let (k, n) = (self.in_features, self.out_features);
        let mut w = vec![0f32; weight.len()];
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(weight, &mut w);
        if let Some(b) = &self.bias {
            y.chunks_exact_mut(n).for_each(|row| row.copy_from_slice(b));
        }
        sgemm(
            MatRef::row_major(x, m, k),
            MatRef::transposed(&w, k, n),
            y,
            self.bias.is_some(),
        );
        if relu {
            y.iter_mut().for_each(|v| *v = v.max(0.0));
        }
    }
}

/// A kernel error about the activations, named as the dynamic Linear's input.
fn input_error(e: qkernels::KernelError) -> ApiError {
    match e {
        qkernels::KernelError::Quant(qtensor::QError::NonFinite { index, value, .. }) => qtensor::QError::NonFinite {
            what: "dynamic Linear input",
            index,
            value,
        }
        .into(),
        other => other.into(),
    }
}
