//! Portable reference convolutions: the oracle every fast path must reproduce bit for bit.
//! Written for clarity: one output value at a time, the exact integer accumulator
//! `sum (x - x_zp) * (w - w_zp)` over the taps that fall inside the input (a padded tap holds
//! the input zero point, so it contributes 0), then [`ConvRequant::apply`].

use super::geometry::{Conv2dGeometry, ConvTranspose2dGeometry};
use super::requant::{ConvRequant, ConvWeightQuant};
use super::NhwcShape;

/// Reference `Conv2d` on NHWC `u8` input with PyTorch-layout weights `[c_out, c_in/g, kh, kw]`.
/// The caller has checked the shapes; `y` is `[n, oh, ow, c_out]`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_reference(
    g: &Conv2dGeometry,
    x: &[u8],
    xs: NhwcShape,
    x_zp: i32,
    w: &[i8],
    wq: &ConvWeightQuant,
    rq: &ConvRequant,
    y: &mut [u8],
) {
    let (oh_n, ow_n) = g.output_hw(xs.h, xs.w).expect("shape checked by the caller");
    let (kh_n, kw_n) = g.kernel;
    let cig = g.c_in_per_group();
    let cog = g.c_out_per_group();
    for n in 0..xs.n {
        for oh in 0..oh_n {
            for ow in 0..ow_n {
                for oc in 0..g.c_out {
                    let group = oc / cog;
                    let w_zp = wq.zero_point(oc);
                    let mut acc = 0i32;
                    for kh in 0..kh_n {
                        let ih = (oh * g.stride.0 + kh * g.dilation.0) as i64 - g.padding.0 as i64;
                        if ih < 0 || ih >= xs.h as i64 {
                            continue;
                        }
                        for kw in 0..kw_n {
                            let iw = (ow * g.stride.1 + kw * g.dilation.1) as i64 - g.padding.1 as i64;
                            if iw < 0 || iw >= xs.w as i64 {
                                continue;
                            }
                            let pixel = xs.offset(n, ih as usize, iw as usize);
                            for ic in 0..cig {
                                let xv = x[pixel + group * cig + ic] as i32 - x_zp;
                                let wv = w[((oc * cig + ic) * kh_n + kh) * kw_n + kw] as i32 - w_zp;
                                acc += xv * wv;
                            }
                        }
                    }
                    y[((n * oh_n + oh) * ow_n + ow) * g.c_out + oc] = rq.apply(oc, acc);
                }
            }
        }
    }
}

/// Reference `ConvTranspose2d` on NHWC `u8` input with PyTorch-layout weights
/// `[c_in, c_out/g, kh, kw]`: output pixel `o` gathers every input pixel `i` and tap `k` with
/// `o = i * stride - padding + k * dilation`. `y` is `[n, oh, ow, c_out]`.
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose2d_reference(
    g: &ConvTranspose2dGeometry,
    x: &[u8],
    xs: NhwcShape,
    x_zp: i32,
    w: &[i8],
    wq: &ConvWeightQuant,
    rq: &ConvRequant,
    y: &mut [u8],
) {
    let (oh_n, ow_n) = g.output_hw(xs.h, xs.w).expect("shape checked by the caller");
    let (kh_n, kw_n) = g.kernel;
    let cig = g.c_in / g.groups;
    let cog = g.c_out / g.groups;
    for n in 0..xs.n {
        for oh in 0..oh_n {
            for ow in 0..ow_n {
                for oc in 0..g.c_out {
                    let group = oc / cog;
                    let ocg = oc % cog;
                    let w_zp = wq.zero_point(oc);
                    let mut acc = 0i32;
                    for kh in 0..kh_n {
                        let num_h = (oh + g.padding.0) as i64 - (kh * g.dilation.0) as i64;
                        if num_h < 0 || num_h % g.stride.0 as i64 != 0 {
                            continue;
                        }
                        let ih = (num_h / g.stride.0 as i64) as usize;
                        if ih >= xs.h {
                            continue;
                        }
                        for kw in 0..kw_n {
                            let num_w = (ow + g.padding.1) as i64 - (kw * g.dilation.1) as i64;
                            if num_w < 0 || num_w % g.stride.1 as i64 != 0 {
                                continue;
                            }
                            let iw = (num_w / g.stride.1 as i64) as usize;
                            if iw >= xs.w {
                                continue;
                            }
                            let pixel = xs.offset(n, ih, iw);
                            for icg in 0..cig {
                                let ic = group * cig + icg;
                                let xv = x[pixel + ic] as i32 - x_zp;
                                let wv = w[((ic * cog + ocg) * kh_n + kh) * kw_n + kw] as i32 - w_zp;
                                acc += xv * wv;
                            }
                        }
                    }
                    y[((n * oh_n + oh) * ow_n + ow) * g.c_out + oc] = rq.apply(oc, acc);
                }
            }
        }
    }
}

/// Reference of fbgemm's depthwise arithmetic ([`super::ConvArithmetic::FbgemmParity`] on the
/// geometries where PyTorch runs that kernel): per channel, the raw products `x * w` of taps
/// `(0, 1), (2, 3), ...` (row-major over the window; a padded tap reads `x_zp`) are summed in
/// pairs and each pair sum saturates to i16; then `- x_zp * sum w - w_zp * sum x + taps * x_zp * w_zp`.
#[allow(clippy::too_many_arguments)]
pub fn depthwise_fbgemm_reference(
    g: &Conv2dGeometry,
    x: &[u8],
    xs: NhwcShape,
    x_zp: i32,
    w: &[i8],
    wq: &ConvWeightQuant,
    rq: &ConvRequant,
    y: &mut [u8],
) {
    let (oh_n, ow_n) = g.output_hw(xs.h, xs.w).expect("shape checked by the caller");
    let taps = g.taps();
    let c_n = g.c_out;
    let mut xv = vec![0i32; taps];
    for n in 0..xs.n {
        for oh in 0..oh_n {
            for ow in 0..ow_n {
                for c in 0..c_n {
                    for kh in 0..g.kernel.0 {
                        for kw in 0..g.kernel.1 {
                            let ih = (oh * g.stride.0 + kh * g.dilation.0) as i64 - g.padding.0 as i64;
                            let iw = (ow * g.stride.1 + kw * g.dilation.1) as i64 - g.padding.1 as i64;
                            let inside = ih >= 0 && iw >= 0 && ih < xs.h as i64 && iw < xs.w as i64;
                            xv[kh * g.kernel.1 + kw] = if inside {
                                x[xs.offset(n, ih as usize, iw as usize) + c] as i32
                            } else {
                                x_zp
                            };
                        }
                    }
                    let wc = &w[c * taps..(c + 1) * taps];
                    let mut acc = 0i32;
                    for p in (0..taps).step_by(2) {
                        let mut pair = xv[p] * wc[p] as i32;
                        if p + 1 < taps {
                            pair += xv[p + 1] * wc[p + 1] as i32;
                        }
                        acc += pair.clamp(i16::MIN as i32, i16::MAX as i32);
                    }
                    let w_sum: i32 = wc.iter().map(|&v| v as i32).sum();
                    let x_sum: i32 = xv.iter().sum();
                    let w_zp = wq.zero_point(c);
                    acc += -x_zp * w_sum - w_zp * x_sum + taps as i32 * x_zp * w_zp;
                    y[((n * oh_n + oh) * ow_n + ow) * c_n + c] = rq.apply(c, acc);
                }
            }
        }
    }
}
