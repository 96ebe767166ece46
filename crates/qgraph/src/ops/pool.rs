//! Pooling and resizing (NCHW): MaxPool2d (padding reads as -inf), AvgPool2d (PyTorch's
//! `count_include_pad`), AdaptiveAvgPool2d (windows `[floor(i H / O), ceil((i + 1) H / O))`),
//! Upsample (nearest: `src = floor(dst / s)`; bilinear: `src = (dst + 0.5) / s - 0.5` clamped at
//! 0, or `dst (in - 1) / (out - 1)` with `align_corners`).

use qtensor::Tensor;

use crate::error::shape_err;
use crate::op::{Pool2dAttrs, UpsampleMode};
use crate::Result;

pub fn pool2d_shape(node: &str, a: &Pool2dAttrs, x: &[usize]) -> Result<Vec<usize>> {
    if x.len() != 4 {
        return Err(shape_err(node, format!("pooling expects [N, C, H, W], got {x:?}")));
    }
    if a.stride.contains(&0) || a.kernel.contains(&0) {
        return Err(shape_err(node, "pool kernel and stride must be at least 1"));
    }
    if a.padding[0] * 2 > a.kernel[0] || a.padding[1] * 2 > a.kernel[1] {
        return Err(shape_err(node, "pool padding must be at most half the kernel size"));
    }
    let mut out = vec![x[0], x[1]];
    for d in 0..2 {
        match (x[2 + d] + 2 * a.padding[d]).checked_sub(a.kernel[d]) {
            Some(v) => out.push(v / a.stride[d] + 1),
            None => {
                return Err(shape_err(
                    node,
                    format!("input {x:?} is smaller than the pool window {:?}", a.kernel),
                ))
            }
        }
    }
    Ok(out)
}

/// Visits every output position of every plane with its clipped window.
fn for_windows(
    a: &Pool2dAttrs,
    x: &Tensor,
    out_shape: &[usize],
    mut f: impl FnMut(&[f32], usize, [usize; 4]) -> f32,
) -> Tensor {
    let (h, w) = (x.shape()[2], x.shape()[3]);
    let (oh, ow) = (out_shape[2], out_shape[3]);
    let planes = out_shape[0] * out_shape[1];
    let mut y = Vec::with_capacity(planes * oh * ow);
    for p in 0..planes {
        let plane = &x.data()[p * h * w..(p + 1) * h * w];
        for oy in 0..oh {
            let y0 = (oy * a.stride[0]) as isize - a.padding[0] as isize;
            let y1 = y0 + a.kernel[0] as isize;
            for ox in 0..ow {
                let x0 = (ox * a.stride[1]) as isize - a.padding[1] as isize;
                let x1 = x0 + a.kernel[1] as isize;
                let clip = |lo: isize, hi: isize, n: usize| (lo.max(0) as usize, hi.min(n as isize) as usize);
                let (ya, yb) = clip(y0, y1, h);
                let (xa, xb) = clip(x0, x1, w);
                y.push(f(plane, w, [ya, yb, xa, xb]));
            }
        }
    }
    Tensor::new(out_shape.to_vec(), y).expect("shape from pool2d_shape")
}

pub fn max_pool2d(a: &Pool2dAttrs, x: &Tensor, out_shape: Vec<usize>) -> Tensor {
    for_windows(a, x, &out_shape, |plane, w, [ya, yb, xa, xb]| {
        let mut m = f32::NEG_INFINITY;
        for yy in ya..yb {
            for v in &plane[yy * w + xa..yy * w + xb] {
                // NaN propagates, as in PyTorch.
                if *v > m || v.is_nan() {
                    m = *v;
                }
            }
        }
        m
    })
}

pub fn avg_pool2d(a: &Pool2dAttrs, x: &Tensor, out_shape: Vec<usize>) -> Tensor {
    let (h, w) = (x.shape()[2], x.shape()[3]);
    let (oh, ow) = (out_shape[2], out_shape[3]);
    let planes = out_shape[0] * out_shape[1];
    let mut y = Vec::with_capacity(planes * oh * ow);
    for p in 0..planes {
        let plane = &x.data()[p * h * w..(p + 1) * h * w];
        for oy in 0..oh {
            let y0 = (oy * a.stride[0]) as isize - a.padding[0] as isize;
            let y1 = (y0 + a.kernel[0] as isize).min((h + a.padding[0]) as isize);
            for ox in 0..ow {
                let x0 = (ox * a.stride[1]) as isize - a.padding[1] as isize;
                let x1 = (x0 + a.kernel[1] as isize).min((w + a.padding[1]) as isize);
                let padded_count = ((y1 - y0) * (x1 - x0)) as usize;
                let (ya, yb) = (y0.max(0) as usize, y1.min(h as isize) as usize);
                let (xa, xb) = (x0.max(0) as usize, x1.min(w as isize) as usize);
                let mut s = 0.0f32;
                for yy in ya..yb {
                    s += plane[yy * w + xa..yy * w + xb].iter().sum::<f32>();
                }
                let count = if a.count_include_pad {
                    padded_count
                } else {
                    (yb - ya) * (xb - xa)
                };
                y.push(s / count as f32);
            }
        }
    }
    Tensor::new(out_shape, y).expect("shape from pool2d_shape")
}

pub fn adaptive_shape(node: &str, output: [usize; 2], x: &[usize]) -> Result<Vec<usize>> {
    if x.len() != 4 || output.contains(&0) {
        return Err(shape_err(
            node,
            format!("AdaptiveAvgPool2d expects [N, C, H, W] and a non-zero output size, got {x:?} -> {output:?}"),
        ));
    }
    Ok(vec![x[0], x[1], output[0], output[1]])
}

pub fn adaptive_avg_pool2d(x: &Tensor, out_shape: Vec<usize>) -> Tensor {
    let (h, w) = (x.shape()[2], x.shape()[3]);
    let (oh, ow) = (out_shape[2], out_shape[3]);
    let planes = out_shape[0] * out_shape[1];
    let mut y = Vec::with_capacity(planes * oh * ow);
    for p in 0..planes {
        let plane = &x.data()[p * h * w..(p + 1) * h * w];
        for oy in 0..oh {
            let (ya, yb) = (oy * h / oh, ((oy + 1) * h).div_ceil(oh));
            for ox in 0..ow {
                let (xa, xb) = (ox * w / ow, ((ox + 1) * w).div_ceil(ow));
                let mut s = 0.0f32;
                for yy in ya..yb {
                    s += plane[yy * w + xa..yy * w + xb].iter().sum::<f32>();
                }
                y.push(s / ((yb - ya) * (xb - xa)) as f32);
            }
        }
    }
    Tensor::new(out_shape, y).expect("shape from adaptive_shape")
}

pub fn upsample_shape(node: &str, scale: [usize; 2], x: &[usize]) -> Result<Vec<usize>> {
    if x.len() != 4 || scale.contains(&0) {
        return Err(shape_err(
            node,
            format!("Upsample expects [N, C, H, W] and scale factors >= 1, got {x:?} x {scale:?}"),
        ));
    }
    Ok(vec![x[0], x[1], x[2] * scale[0], x[3] * scale[1]])
}

/// Source coordinate and weights along one axis: (i0, i1, weight of i1).
fn linear_taps(dst: usize, input: usize, output: usize, align_corners: bool) -> (usize, usize, f32) {
    let src = if align_corners {
        if output > 1 {
            dst as f32 * (input - 1) as f32 / (output - 1) as f32
        } else {
            0.0
        }
    } else {
        ((dst as f32 + 0.5) * (input as f32 / output as f32) - 0.5).max(0.0)
    };
    let i0 = (src.floor() as usize).min(input - 1);
    let i1 = (i0 + 1).min(input - 1);
    (i0, i1, src - i0 as f32)
}

pub fn upsample(mode: UpsampleMode, x: &Tensor, out_shape: Vec<usize>) -> Tensor {
    let (h, w) = (x.shape()[2], x.shape()[3]);
    let (oh, ow) = (out_shape[2], out_shape[3]);
    let planes = out_shape[0] * out_shape[1];
    let mut y = Vec::with_capacity(planes * oh * ow);
    for p in 0..planes {
        let plane = &x.data()[p * h * w..(p + 1) * h * w];
        match mode {
            UpsampleMode::Nearest => {
                for oy in 0..oh {
                    let iy = oy * h / oh;
                    for ox in 0..ow {
                        y.push(plane[iy * w + ox * w / ow]);
                    }
                }
            }
            UpsampleMode::Bilinear { align_corners } => {
                for oy in 0..oh {
                    let (y0, y1, ly) = linear_taps(oy, h, oh, align_corners);
                    for ox in 0..ow {
                        let (x0, x1, lx) = linear_taps(ox, w, ow, align_corners);
                        let top = plane[y0 * w + x0] * (1.0 - lx) + plane[y0 * w + x1] * lx;
                        let bottom = plane[y1 * w + x0] * (1.0 - lx) + plane[y1 * w + x1] * lx;
                        y.push(top * (1.0 - ly) + bottom * ly);
                    }
                }
            }
        }
    }
    Tensor::new(out_shape, y).expect("shape from upsample_shape")
}
