//! `ConvTranspose2d` on NHWC `u8` activations: per-tensor or per-output-channel `qint8`
//! weights (PyTorch refuses per-channel here; the arithmetic is the same), stride, padding,
//! output padding, dilation and groups. Same requantization as every convolution
//! ([`super::requant`]); the reference is [`super::reference::conv_transpose2d_reference`].
//!
//! Non-overlapping layers (kernel = stride, no padding, dilation 1, one group: UNet's 2x2
//! stride-2 upsampling) run on the shared GEMM: every input pixel contributes to exactly one
//! tap of `kh * kw` output pixels, so `[n*h*w, c_in] x [kh*kw*c_out, c_in]^T` with the fused
//! requantization gives every output value, which is then scattered to its pixel; output
//! padding rows and columns receive no contribution and hold the requantized bias. On the
//! direct kernel, layers without output padding whose `kw * c_out` is a multiple of 16 write
//! each tap run straight to its output pixels instead.

use rayon::prelude::*;

use super::call_cache::{get_or_try_init, CallCache, CallKey, TransposeCall};
use super::geometry::ConvTranspose2dGeometry;
use super::requant::{ActQuant, ConvRequant, ConvWeightQuant, FusedActivation};
use super::{reference, NhwcShape};
use crate::gemm::{self, ActivationQuant, GemmConfig, KernelPath, PackedWeights, RequantStage, Requantize};
use crate::{KernelError, Result};

/// A `ConvTranspose2d` with validated weights `[c_in, c_out / groups, kh, kw]`.
#[derive(Debug, Clone)]
pub struct PackedConvTranspose2d {
    geometry: ConvTranspose2dGeometry,
    weights: Vec<i8>,
    weight_quant: ConvWeightQuant,
    bias: Option<Vec<f32>>,
    /// GEMM weights `[kh*kw*c_out, c_in]` and the bias repeated per tap, for non-overlapping
    /// layers.
    gemm: Option<(PackedWeights, Option<Vec<f32>>)>,
    /// The same `[kh*kw*c_out, c_in]` product on the direct kernel (a 1x1 convolution with
    /// `kh*kw*c_out` output channels), with its per-column weight quantization and bias.
    direct: Option<(super::direct::DirectConv, ConvWeightQuant, Option<Vec<f32>>)>,
    /// The constants of recent calls' parameters (see `call_cache`).
    calls: CallCache<CallKey, TransposeCall>,
}

impl PackedConvTranspose2d {
    /// `weight_quant` holds one entry, or one per output channel.
    pub fn new(
        geometry: ConvTranspose2dGeometry,
        weights: &[i8],
        weight_quant: ConvWeightQuant,
        bias: Option<Vec<f32>>,
    ) -> Result<PackedConvTranspose2d> {
        geometry.validate()?;
        let expected = geometry.c_in * (geometry.c_out / geometry.groups) * geometry.taps();
        if weights.len() != expected {
            return Err(KernelError::Shape {
                op: "conv_transpose2d",
                detail: format!(
                    "weights have {} values, expected c_in * c_out/groups * kh * kw = {expected}",
                    weights.len()
                ),
            });
        }
        weight_quant.check_channels("conv_transpose2d", geometry.c_out)?;
        let g = &geometry;
        let mut direct = None;
        let non_overlapping = g.kernel == g.stride && g.padding == (0, 0) && g.dilation == (1, 1) && g.groups == 1;
        let gemm = if non_overlapping {
            let (taps, c_out, c_in) = (g.taps(), g.c_out, g.c_in);
            let mut w = vec![0i8; taps * c_out * c_in];
            for t in 0..taps {
                for oc in 0..c_out {
                    for ic in 0..c_in {
                        w[(t * c_out + oc) * c_in + ic] = weights[(ic * c_out + oc) * taps + t];
                    }
                }
            }
            let quant = if weight_quant.is_per_channel() {
                gemm::WeightQuant::PerChannel {
                    scales: (0..taps * c_out).map(|j| weight_quant.scale(j % c_out)).collect(),
                    zero_points: (0..taps * c_out).map(|j| weight_quant.zero_point(j % c_out)).collect(),
                }
            } else {
                gemm::WeightQuant::PerTensor {
                    scale: weight_quant.scale(0),
                    zero_point: weight_quant.zero_point(0),
                }
            };
            let packed = PackedWeights::new(&w, taps * c_out, c_in, quant)?;
            let bias: Option<Vec<f32>> = bias.as_ref().map(|b| (0..taps * c_out).map(|j| b[j % c_out]).collect());
            // Per-tensor stays per-tensor (its bias term uses the f64 reciprocal).
            let column_quant = if weight_quant.is_per_channel() {
                ConvWeightQuant::per_channel(
                    (0..taps * c_out).map(|j| weight_quant.scale(j % c_out)).collect(),
                    (0..taps * c_out).map(|j| weight_quant.zero_point(j % c_out)).collect(),
                )?
            } else {
                weight_quant.clone()
            };
            let as_conv = super::Conv2dGeometry::new(c_in, taps * c_out, (1, 1));
            direct =
                super::direct::DirectConv::new(&as_conv, &w, &column_quant).map(|d| (d, column_quant, bias.clone()));
            Some((packed, bias))
        } else {
            None
        };
        Ok(PackedConvTranspose2d {
            geometry,
            weights: weights.to_vec(),
            weight_quant,
            bias,
            gemm,
            direct,
            calls: CallCache::new(),
        })
    }

    /// `"direct"` or `"gemm"` for non-overlapping layers, else `"reference"`.
    pub fn path_name(&self) -> &'static str {
        if self.has_direct() && !super::forced_reference() {
            "direct"
        } else if self.gemm.is_some() && !super::forced_reference() {
            "gemm"
        } else {
            "reference"
        }
    }

    /// Whether [`PackedConvTranspose2d::run_direct`] runs on this CPU for this layer (one
    /// group, non-overlapping taps, symmetric weights, AVX-512 VNNI).
    pub fn has_direct(&self) -> bool {
        self.direct.is_some() && super::direct::supported()
    }

    pub fn geometry(&self) -> &ConvTranspose2dGeometry {
        &self.geometry
    }

    pub fn output_shape(&self, xs: NhwcShape) -> Result<NhwcShape> {
        let (oh, ow) = self.geometry.output_hw(xs.h, xs.w)?;
        Ok(NhwcShape::new(xs.n, oh, ow, self.geometry.c_out))
    }

    /// Allocating form of [`PackedConvTranspose2d::run`]: returns the output and its shape
    /// (written once, without a zero fill, where the direct kernel spreads its products
    /// straight to the output).
    pub fn forward(
        &self,
        x: &[u8],
        xs: NhwcShape,
        x_q: ActQuant,
        y_q: ActQuant,
        activation: FusedActivation,
    ) -> Result<(Vec<u8>, NhwcShape)> {
        let ys = self.output_shape(xs)?;
        let (kh, kw) = self.geometry.kernel;
        let spread = self.direct.as_ref().filter(|(d, _, _)| {
            self.path_name() == "direct" && ys.h == xs.h * kh && ys.w == xs.w * kw && d.can_spread(kh)
        });
        if let Some(parts) = spread {
            let (_, call) = self.check_len(x, xs, x_q, y_q, activation, ys.len())?;
            let epi = direct_epilogue(parts, &call, x_q, y_q, activation)?;
            return super::filled(ys, |y| parts.0.run_spread(x, xs, epi, kh, y));
        }
        let mut y = vec![0u8; ys.len()];
        self.run(x, xs, x_q, y_q, activation, &mut y)?;
        Ok((y, ys))
    }

    /// Transposed convolution of NHWC `x` into NHWC `y` (GEMM for non-overlapping layers,
    /// unless `QFORGE_KERNEL=reference`).
    pub fn run(
        &self,
        x: &[u8],
        xs: NhwcShape,
        x_q: ActQuant,
        y_q: ActQuant,
        activation: FusedActivation,
        y: &mut [u8],
    ) -> Result<()> {
        if self.path_name() == "direct" {
            return self.run_direct(x, xs, x_q, y_q, activation, y);
        }
        let path = (self.path_name() == "gemm").then(gemm::best_path);
        self.run_with(path, x, xs, x_q, y_q, activation, y)
    }

    /// Non-overlapping layers on the direct kernel (see [`PackedConvTranspose2d::has_direct`]);
    /// the same integers as every other path.
    pub fn run_direct(
        &self,
        x: &[u8],
        xs: NhwcShape,
        x_q: ActQuant,
        y_q: ActQuant,
        activation: FusedActivation,
        y: &mut [u8],
    ) -> Result<()> {
        let Some(parts) = self.direct.as_ref().filter(|_| super::direct::supported()) else {
            return Err(KernelError::Param {
                op: "conv_transpose2d",
                detail: format!(
                    "{:?} has no direct path on this CPU; use run or run_with",
                    self.geometry
                ),
            });
        };
        let (ys, call) = self.check(x, xs, x_q, y_q, activation, y)?;
        let epi = direct_epilogue(parts, &call, x_q, y_q, activation)?;
        let (direct, cols) = (&parts.0, parts.0.c_out());
        let (kh, kw) = self.geometry.kernel;
        if ys.h == xs.h * kh && ys.w == xs.w * kw && direct.can_spread(kh) {
            // No output padding: every output pixel is one tap of one input pixel.
            return direct.run_spread(x, xs, epi, kh, super::as_uninit(y));
        }
        let (tmp, _) = super::filled(NhwcShape::new(xs.n, xs.h, xs.w, cols), |tmp| {
            direct.run(super::direct::InputRows::Tensor(x), xs, x_q.zero_point, epi, tmp, None)
        })?;
        self.scatter(&tmp, xs, ys, &call, y);
        Ok(())
    }

    /// Validates the call; returns the output shape and the constants of the call's
    /// parameters, built only when they are not cached (see `call_cache`).
    fn check(
        &self,
        x: &[u8],
        xs: NhwcShape,
        x_q: ActQuant,
        y_q: ActQuant,
        activation: FusedActivation,
        y: &[u8],
    ) -> Result<(NhwcShape, std::sync::Arc<TransposeCall>)> {
        self.check_len(x, xs, x_q, y_q, activation, y.len())
    }

    /// [`PackedConvTranspose2d::check`] for an output of `y_len` bytes.
    fn check_len(
        &self,
        x: &[u8],
        xs: NhwcShape,
        x_q: ActQuant,
        y_q: ActQuant,
        activation: FusedActivation,
        y_len: usize,
    ) -> Result<(NhwcShape, std::sync::Arc<TransposeCall>)> {
        let g = &self.geometry;
        if xs.c != g.c_in {
            return Err(KernelError::Shape {
                op: "conv_transpose2d",
                detail: format!("input has {} channels, the layer expects {}", xs.c, g.c_in),
            });
        }
        xs.check("conv_transpose2d", "input", x.len())?;
        let ys = self.output_shape(xs)?;
        ys.check("conv_transpose2d", "output", y_len)?;
        let call = self.calls.get_or_try_insert(CallKey::new(x_q, y_q, activation), || {
            let rq = ConvRequant::new(
                "conv_transpose2d",
                x_q,
                &self.weight_quant,
                g.c_out,
                self.bias.as_deref(),
                y_q,
                activation,
            )?;
            Ok(TransposeCall::new(rq))
        })?;
        Ok((ys, call))
    }

    /// Moves the `[n*h*w, kh*kw*c_out]` products to their output pixels: with kernel = stride,
    /// the `kw * c_out` bytes of input pixel `iw` and kernel row `kh` are output pixels
    /// `iw * kw .. (iw + 1) * kw` of output row `ih * kh_n + kh`, one contiguous run. Output
    /// padding pixels receive no tap and hold the requantized bias.
    fn scatter(&self, tmp: &[u8], xs: NhwcShape, ys: NhwcShape, call: &TransposeCall, y: &mut [u8]) {
        let g = &self.geometry;
        let (kh_n, kw_n) = g.kernel;
        let cols = kh_n * kw_n * g.c_out;
        let run = kw_n * g.c_out;
        let empty = call
            .empty
            .get_or_init(|| (0..g.c_out).map(|c| call.rq.apply(c, 0)).collect());
        y.par_chunks_mut(ys.w * g.c_out).enumerate().for_each(|(row, out)| {
            let (n, oh) = (row / ys.h, row % ys.h);
            let (ih, kh) = (oh / g.stride.0, oh % g.stride.0);
            let covered = if ih < xs.h && kh < kh_n { xs.w } else { 0 };
            for iw in 0..covered {
                let src = ((n * xs.h + ih) * xs.w + iw) * cols + kh * run;
                out[iw * run..(iw + 1) * run].copy_from_slice(&tmp[src..src + run]);
            }
            for dst in out[covered * run..].chunks_exact_mut(g.c_out) {
                dst.copy_from_slice(empty);
            }
        });
    }

    /// [`PackedConvTranspose2d::run`] with the GEMM on `gemm_path`, or the reference for `None`.
    #[allow(clippy::too_many_arguments)]
    pub fn run_with(
        &self,
        gemm_path: Option<KernelPath>,
        x: &[u8],
        xs: NhwcShape,
        x_q: ActQuant,
        y_q: ActQuant,
        activation: FusedActivation,
        y: &mut [u8],
    ) -> Result<()> {
        let g = &self.geometry;
        let (ys, call) = self.check(x, xs, x_q, y_q, activation, y)?;
        match (gemm_path, &self.gemm) {
            (None, _) => {
                let (w, wq) = (&self.weights, &self.weight_quant);
                reference::conv_transpose2d_reference(g, x, xs, x_q.zero_point, w, wq, &call.rq, y);
                Ok(())
            }
            (Some(path), Some((packed, bias))) => {
                let m = xs.n * xs.h * xs.w;
                let cols = packed.n();
                let mut tmp = vec![0u8; m * cols];
                let stage = get_or_try_init(&call.gemm, || {
                    let r = Requantize {
                        bias: bias.as_deref(),
                        out_scale: y_q.scale,
                        out_zero_point: y_q.zero_point,
                        relu: activation != FusedActivation::None,
                        clamp: (activation == FusedActivation::Relu6)
                            .then(|| (y_q.zero_point, y_q.quantize(6.0) as i32)),
                    };
                    RequantStage::new(x_q.scale, packed, &r, true)
                })?;
                let act = ActivationQuant::PerTensor {
                    scale: x_q.scale,
                    zero_point: x_q.zero_point,
                };
                let config = GemmConfig::with_path(path);
                gemm::gemm_u8s8_prepared(x, m, &act, packed, stage, &mut tmp, &config)?;
                debug_assert_eq!(cols, g.taps() * g.c_out);
                self.scatter(&tmp, xs, ys, &call, y);
                Ok(())
            }
            (Some(_), None) => Err(KernelError::Param {
                op: "conv_transpose2d",
                detail: format!(
                    "{g:?} overlaps; only kernel = stride, no padding, dilation 1, one group runs on the GEMM"
                ),
            }),
        }
    }
}

/// The direct kernel's epilogue for a call's parameters: the per-column requantization of the
/// kernel's `kh * kw * c_out` columns, built once per parameter set and kept in `call`.
fn direct_epilogue<'c>(
    (direct, column_quant, bias): &(super::direct::DirectConv, ConvWeightQuant, Option<Vec<f32>>),
    call: &'c TransposeCall,
    x_q: ActQuant,
    y_q: ActQuant,
    activation: FusedActivation,
) -> Result<&'c super::direct::Epilogue> {
    let column_rq = get_or_try_init(&call.column_rq, || {
        ConvRequant::new(
            "conv_transpose2d",
            x_q,
            column_quant,
            direct.c_out(),
            bias.as_deref(),
            y_q,
            activation,
        )
    })?;
    Ok(call.direct.get_or_init(|| direct.epilogue(x_q.zero_point, column_rq)))
}
