//! Pooling and resizing (NCHW): MaxPool2d (padding reads as -inf), AvgPool2d (PyTorch's
//! `count_include_pad`), AdaptiveAvgPool2d (windows `[floor(i H / O), ceil((i + 1) H / O))`),
//! Upsample (nearest: `src = floor(dst / s)`; bilinear: `src = (dst + 0.5) / s - 0.5` clamped at
//! 0, or `dst (in - 1) / (out - 1)` with `align_corners`).

use qtensor::Tensor;
use rayon::prelude::*;

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

/// The window scan's update rule: `v` replaces the running maximum when it is greater or NaN, so
/// the result is the first maximal element in scan order, or the last NaN (NaN propagates, as in
/// PyTorch).
#[inline(always)]
fn pick(m: f32, v: f32) -> f32 {
    // `|` rather than `||`: both comparisons, no branch.
    if (v > m) | v.is_nan() {
        v
    } else {
        m
    }
}

/// Max pooling, separable: each input row's maxima over the column windows of every output
/// column, then each output row the maxima of its window's rows. Both passes apply `pick` in
/// scan order (left to right, then top to bottom), which keeps the row-major window scan's
/// first maximal element (or last NaN), bit for bit. The column pass computes the window that
/// starts at every input column (tap by tap, over contiguous runs, as vector loops) and keeps
/// every `stride`-th; padding taps are skipped (`-inf` never replaces a maximum). Planes run in
/// parallel.
pub fn max_pool2d(a: &Pool2dAttrs, x: &Tensor, out_shape: Vec<usize>) -> Tensor {
    let (h, w) = (x.shape()[2], x.shape()[3]);
    let (oh, ow) = (out_shape[2], out_shape[3]);
    let mut y = vec![f32::NEG_INFINITY; out_shape.iter().product()];
    if oh * ow == 0 {
        return Tensor::new(out_shape, y).expect("shape from pool2d_shape");
    }
    let (s, p) = (a.stride[1], a.padding[1]);
    // Window `x` (starting at padded column `x`) for x in 0..span; output column `ox` is window
    // `ox * s`. Tap `t` of window `x` reads input column `x + t - p`, inside the row for
    // `x` in `taps[t]`.
    let span = (ow - 1) * s + 1;
    let taps: Vec<std::ops::Range<usize>> = (0..a.kernel[1])
        .map(|t| {
            let first = p.saturating_sub(t).min(span);
            let last = (w + p).saturating_sub(t).min(span);
            first..last.max(first)
        })
        .collect();
    y.par_chunks_mut(oh * ow)
        .zip(x.data().par_chunks(h * w))
        .for_each(|(out, plane)| {
            // Row `r` of `rows`: input row `r`'s maxima over each output column's window.
            let mut rows = vec![f32::NEG_INFINITY; h * ow];
            let mut windows = vec![f32::NEG_INFINITY; span];
            for (row, input) in rows.chunks_exact_mut(ow).zip(plane.chunks_exact(w)) {
                windows.fill(f32::NEG_INFINITY);
                for (t, xs) in taps.iter().enumerate().filter(|(_, xs)| !xs.is_empty()) {
                    let src = &input[xs.start + t - p..xs.end + t - p];
                    for (m, &v) in windows[xs.clone()].iter_mut().zip(src) {
                        *m = pick(*m, v);
                    }
                }
                for (m, &v) in row.iter_mut().zip(windows.iter().step_by(s)) {
                    *m = v;
                }
            }
            for (oy, out_row) in out.chunks_exact_mut(ow).enumerate() {
                let y0 = (oy * a.stride[0]) as isize - a.padding[0] as isize;
                let (ya, yb) = (
                    y0.max(0) as usize,
                    (y0 + a.kernel[0] as isize).clamp(0, h as isize) as usize,
                );
                for row in rows[ya * ow..yb.max(ya) * ow].chunks_exact(ow) {
                    for (m, &v) in out_row.iter_mut().zip(row) {
                        *m = pick(*m, v);
                    }
                }
            }
        });
    Tensor::new(out_shape, y).expect("shape from pool2d_shape")
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
