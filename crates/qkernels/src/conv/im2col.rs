//! Convolutions through the shared u8 x s8 GEMM ([`crate::gemm`]): weights are reordered once
//! to `[c_out/g][kh][kw][c_in/g]` and packed per group as GEMM weights; a 1x1 stride-1 unpadded
//! convolution multiplies the NHWC input in place (`[n*h*w, c_in]` is already the A matrix);
//! every other geometry gathers blocks of output pixels into im2col rows (taps outside the input
//! hold the input zero point, so their corrected products are 0) and multiplies them block by
//! block, the block sized to stay in L2. Blocks run as tasks of the thread team, each with a
//! single-threaded GEMM; when there are fewer blocks than threads they run in turn with a threaded GEMM. The
//! GEMM computes the exact `sum (x - x_zp) * (w - w_zp)` and the same requantization as
//! [`super::requant`] for every path and thread count.

use super::geometry::Conv2dGeometry;
use super::requant::{ActQuant, ConvWeightQuant, FusedActivation};
use super::NhwcShape;
use crate::gemm::{self, ActivationQuant, GemmConfig, KernelPath, PackedWeights, RequantStage, Requantize};
use crate::Result;

/// Target bytes of one im2col block.
const BLOCK_BYTES: usize = 256 * 1024;

/// Per-group GEMM weights of a convolution.
#[derive(Debug, Clone)]
pub(crate) struct GemmConv {
    groups: Vec<PackedWeights>,
}

impl GemmConv {
    /// Reorders PyTorch `[c_out, c_in/g, kh, kw]` weights to `[c_out/g][kh][kw][c_in/g]` per
    /// group and packs them.
    pub(crate) fn new(g: &Conv2dGeometry, w: &[i8], wq: &ConvWeightQuant) -> Result<GemmConv> {
        let (cig, cog, taps) = (g.c_in_per_group(), g.c_out_per_group(), g.taps());
        let k = taps * cig;
        let mut groups = Vec::with_capacity(g.groups);
        for grp in 0..g.groups {
            let mut wg = vec![0i8; cog * k];
            for o in 0..cog {
                let oc = grp * cog + o;
                for ic in 0..cig {
                    for t in 0..taps {
                        wg[o * k + t * cig + ic] = w[(oc * cig + ic) * taps + t];
                    }
                }
            }
            let quant = if wq.is_per_channel() {
                gemm::WeightQuant::PerChannel {
                    scales: (grp * cog..(grp + 1) * cog).map(|c| wq.scale(c)).collect(),
                    zero_points: (grp * cog..(grp + 1) * cog).map(|c| wq.zero_point(c)).collect(),
                }
            } else {
                gemm::WeightQuant::PerTensor {
                    scale: wq.scale(0),
                    zero_point: wq.zero_point(0),
                }
            };
            groups.push(PackedWeights::new(&wg, cog, k, quant)?);
        }
        Ok(GemmConv { groups })
    }

    /// The GEMM requantization of every group for one call's parameters (the
    /// [`super::requant`] formula, which is the GEMM's `Requantize` epilogue), kept by the caller
    /// between calls.
    pub(crate) fn requant_stages(
        &self,
        g: &Conv2dGeometry,
        x_q: ActQuant,
        y_q: ActQuant,
        activation: FusedActivation,
        bias: Option<&[f32]>,
    ) -> Result<Vec<RequantStage>> {
        let clamp = match activation {
            FusedActivation::Relu6 => Some((y_q.zero_point, y_q.quantize(6.0) as i32)),
            _ => None,
        };
        let cog = g.c_out_per_group();
        (0..g.groups)
            .map(|grp| {
                let r = Requantize {
                    bias: bias.map(|b| &b[grp * cog..(grp + 1) * cog]),
                    out_scale: y_q.scale,
                    out_zero_point: y_q.zero_point,
                    relu: activation != FusedActivation::None,
                    clamp,
                };
                RequantStage::new(x_q.scale, &self.groups[grp], &r, true)
            })
            .collect()
    }

    /// Convolves NHWC `x` into NHWC `y` with the GEMM on `path`, requantizing group `grp` with
    /// `stages[grp]` (from [`GemmConv::requant_stages`] for `x_q`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run(
        &self,
        path: KernelPath,
        g: &Conv2dGeometry,
        x: &[u8],
        xs: NhwcShape,
        x_q: ActQuant,
        stages: &[RequantStage],
        y: &mut [u8],
    ) -> Result<()> {
        let (oh_n, ow_n) = g.output_hw(xs.h, xs.w)?;
        let act = ActivationQuant::PerTensor {
            scale: x_q.scale,
            zero_point: x_q.zero_point,
        };
        let cog = g.c_out_per_group();
        let pixels = xs.n * oh_n * ow_n;
        if g.is_pointwise() {
            let config = GemmConfig::with_path(path);
            gemm::gemm_u8s8_prepared(x, pixels, &act, &self.groups[0], &stages[0], y, &config)?;
            return Ok(());
        }
        let k = g.depth();
        let rows = (BLOCK_BYTES / k).clamp(16, 4096).min(pixels);
        let blocks = pixels.div_ceil(rows);
        let block = |(b, out): (usize, &mut [u8]), config: &GemmConfig| -> Result<()> {
            let first = b * rows;
            let count = out.len() / g.c_out;
            let mut a = vec![0u8; count * k];
            let mut tmp = if g.groups > 1 {
                vec![0u8; count * cog]
            } else {
                Vec::new()
            };
            for grp in 0..g.groups {
                gather(g, x, xs, x_q.zero_point as u8, (oh_n, ow_n), first, grp, &mut a);
                let (w, stage) = (&self.groups[grp], &stages[grp]);
                if g.groups == 1 {
                    gemm::gemm_u8s8_prepared(&a, count, &act, w, stage, out, config)?;
                } else {
                    gemm::gemm_u8s8_prepared(&a, count, &act, w, stage, &mut tmp, config)?;
                    for (dst, src) in out.chunks_exact_mut(g.c_out).zip(tmp.chunks_exact(cog)) {
                        dst[grp * cog..(grp + 1) * cog].copy_from_slice(src);
                    }
                }
            }
            Ok(())
        };
        let threads = rayon::current_num_threads();
        if blocks >= threads && blocks > 1 {
            let config = GemmConfig {
                path: Some(path),
                threads: Some(1),
            };
            let outputs = y.chunks_mut(rows * g.c_out).enumerate().collect();
            crate::team::map_items(threads, outputs, &|bo| block(bo, &config))
                .into_iter()
                .collect()
        } else {
            let config = GemmConfig::with_path(path);
            y.chunks_mut(rows * g.c_out)
                .enumerate()
                .try_for_each(|bo| block(bo, &config))
        }
    }
}

/// Writes the im2col rows of output pixels `first..first + a.len() / k` for group `grp`:
/// `a[p][(kh * kw_n + kw) * cig + ic] = x[n, ih, iw, grp * cig + ic]`, or `x_zp` outside.
#[allow(clippy::too_many_arguments)]
fn gather(
    g: &Conv2dGeometry,
    x: &[u8],
    xs: NhwcShape,
    x_zp: u8,
    (oh_n, ow_n): (usize, usize),
    first: usize,
    grp: usize,
    a: &mut [u8],
) {
    let cig = g.c_in_per_group();
    let k = g.depth();
    for (i, row) in a.chunks_exact_mut(k).enumerate() {
        let p = first + i;
        let (n, rem) = (p / (oh_n * ow_n), p % (oh_n * ow_n));
        let (oh, ow) = (rem / ow_n, rem % ow_n);
        for kh in 0..g.kernel.0 {
            let ih = (oh * g.stride.0 + kh * g.dilation.0) as i64 - g.padding.0 as i64;
            let dst_row = &mut row[kh * g.kernel.1 * cig..(kh + 1) * g.kernel.1 * cig];
            if ih < 0 || ih >= xs.h as i64 {
                dst_row.fill(x_zp);
                continue;
            }
            for kw in 0..g.kernel.1 {
                let iw = (ow * g.stride.1 + kw * g.dilation.1) as i64 - g.padding.1 as i64;
                let dst = &mut dst_row[kw * cig..(kw + 1) * cig];
                if iw < 0 || iw >= xs.w as i64 {
                    dst.fill(x_zp);
                } else {
                    let at = xs.offset(n, ih as usize, iw as usize) + grp * cig;
                    dst.copy_from_slice(&x[at..at + cig]);
                }
            }
        }
    }
}
