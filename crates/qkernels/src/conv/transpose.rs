//! `ConvTranspose2d` on NHWC `u8` activations: per-tensor or per-output-channel `qint8`
//! weights (PyTorch refuses per-channel here; the arithmetic is the same), stride, padding,
//! output padding, dilation and groups. Same requantization as every convolution
//! ([`super::requant`]); the reference is [`super::reference::conv_transpose2d_reference`].
//!
//! Non-overlapping layers (kernel = stride, no padding, dilation 1, one group: UNet's 2x2
//! stride-2 upsampling) run on the shared GEMM: every input pixel contributes to exactly one
//! tap of `kh * kw` output pixels, so `[n*h*w, c_in] x [kh*kw*c_out, c_in]^T` with the fused
//! requantization gives every output value, which is then scattered to its pixel; output
//! padding rows and columns receive no contribution and hold the requantized bias.

use rayon::prelude::*;

use super::geometry::ConvTranspose2dGeometry;
use super::requant::{ActQuant, ConvRequant, ConvWeightQuant, FusedActivation};
use super::{reference, NhwcShape};
use crate::gemm::{self, ActivationQuant, Epilogue, GemmConfig, GemmOutput, KernelPath, PackedWeights, Requantize};
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
            let bias = bias.as_ref().map(|b| (0..taps * c_out).map(|j| b[j % c_out]).collect());
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
        })
    }

    /// `"gemm"` for non-overlapping layers, else `"reference"`.
    pub fn path_name(&self) -> &'static str {
        if self.gemm.is_some() && !super::forced_reference() {
            "gemm"
        } else {
            "reference"
        }
    }

    pub fn geometry(&self) -> &ConvTranspose2dGeometry {
        &self.geometry
    }

    pub fn output_shape(&self, xs: NhwcShape) -> Result<NhwcShape> {
        let (oh, ow) = self.geometry.output_hw(xs.h, xs.w)?;
        Ok(NhwcShape::new(xs.n, oh, ow, self.geometry.c_out))
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
        let path = (self.path_name() == "gemm").then(gemm::best_path);
        self.run_with(path, x, xs, x_q, y_q, activation, y)
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
        if xs.c != g.c_in {
            return Err(KernelError::Shape {
                op: "conv_transpose2d",
                detail: format!("input has {} channels, the layer expects {}", xs.c, g.c_in),
            });
        }
        xs.check("conv_transpose2d", "input", x.len())?;
        let ys = self.output_shape(xs)?;
        ys.check("conv_transpose2d", "output", y.len())?;
        let rq = ConvRequant::new(
            "conv_transpose2d",
            x_q,
            &self.weight_quant,
            g.c_out,
            self.bias.as_deref(),
            y_q,
            activation,
        )?;
        match (gemm_path, &self.gemm) {
            (None, _) => {
                let (w, wq) = (&self.weights, &self.weight_quant);
                reference::conv_transpose2d_reference(g, x, xs, x_q.zero_point, w, wq, &rq, y);
                Ok(())
            }
            (Some(path), Some((packed, bias))) => {
                let m = xs.n * xs.h * xs.w;
                let cols = packed.n();
                let mut tmp = vec![0u8; m * cols];
                let epilogue = Epilogue::Requantize(Requantize {
                    bias: bias.as_deref(),
                    out_scale: y_q.scale,
                    out_zero_point: y_q.zero_point,
                    relu: activation != FusedActivation::None,
                    clamp: (activation == FusedActivation::Relu6).then(|| (y_q.zero_point, y_q.quantize(6.0) as i32)),
                });
                let act = ActivationQuant::PerTensor {
                    scale: x_q.scale,
                    zero_point: x_q.zero_point,
                };
                gemm::gemm_u8s8(
                    x,
                    m,
                    &act,
                    packed,
                    &epilogue,
                    GemmOutput::U8(&mut tmp),
                    &GemmConfig::with_path(path),
                )?;
                let empty: Vec<u8> = (0..g.c_out).map(|c| rq.apply(c, 0)).collect();
                let (kh_n, kw_n) = g.kernel;
                y.par_chunks_mut(ys.w * g.c_out).enumerate().for_each(|(row, out)| {
                    let (n, oh) = (row / ys.h, row % ys.h);
                    let (ih, kh) = (oh / g.stride.0, oh % g.stride.0);
                    for ow in 0..ys.w {
                        let (iw, kw) = (ow / g.stride.1, ow % g.stride.1);
                        let dst = &mut out[ow * g.c_out..(ow + 1) * g.c_out];
                        if ih < xs.h && iw < xs.w && kh < kh_n && kw < kw_n {
                            let src = ((n * xs.h + ih) * xs.w + iw) * cols + (kh * kw_n + kw) * g.c_out;
                            dst.copy_from_slice(&tmp[src..src + g.c_out]);
                        } else {
                            dst.copy_from_slice(&empty);
                        }
                    }
                });
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
