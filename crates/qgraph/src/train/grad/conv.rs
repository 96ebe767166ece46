//! Conv2d backward (NCHW, groups, stride, padding, dilation). Per image and group, with
//! `cols = im2col(x_g)` as in the forward: `dW_g += dy_g cols^T`, `dcols = W_g^T dy_g`, then
//! `dx_g = col2im(dcols)` (every patch element adds back to the pixel it was read from);
//! depthwise layers use direct loops. `db[o] = sum of dy over batch and plane`. Images run in
//! parallel; their weight gradients are summed in image order (thread-count independent).

use crate::op::Conv2dAttrs;
use crate::ops::conv::im2col;
use crate::ops::gemm::{sgemm, MatRef};
use rayon::prelude::*;

/// Gradients of Conv2d for input shape `x_shape` and output shape `y_shape`. `dw` (and `db`)
/// accumulate. Returns `dx` when `need_dx`.
///
/// Images run in parallel (rayon); each computes its own weight gradient, and those are added
/// in image order, so the result does not depend on the thread count.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward(
    a: &Conv2dAttrs,
    x: &[f32],
    x_shape: &[usize],
    w: &[f32],
    dy: &[f32],
    y_shape: &[usize],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    need_dx: bool,
) -> Option<Vec<f32>> {
    let (n, c, h, wd) = (x_shape[0], x_shape[1], x_shape[2], x_shape[3]);
    let (o, oh, ow) = (y_shape[1], y_shape[2], y_shape[3]);
    let image_in = c * h * wd;
    let image_out = o * oh * ow;
    let per_image: Vec<(Vec<f32>, Vec<f32>)> = (0..n)
        .into_par_iter()
        .map(|b| {
            let mut dw_b = vec![0.0f32; dw.len()];
            let mut dx_b = if need_dx { vec![0.0f32; image_in] } else { Vec::new() };
            image_backward(
                a,
                &x[b * image_in..(b + 1) * image_in],
                [c, h, wd],
                w,
                &dy[b * image_out..(b + 1) * image_out],
                [o, oh, ow],
                &mut dw_b,
                need_dx.then_some(dx_b.as_mut_slice()),
            );
            (dw_b, dx_b)
        })
        .collect();
    let mut dx = if need_dx {
        Vec::with_capacity(n * image_in)
    } else {
        Vec::new()
    };
    for (dw_b, dx_b) in per_image {
        for (acc, v) in dw.iter_mut().zip(&dw_b) {
            *acc += v;
        }
        dx.extend_from_slice(&dx_b);
    }
    let plane_out = oh * ow;
    if let Some(db) = db {
        for (i, plane) in dy.chunks_exact(plane_out.max(1)).enumerate() {
            db[i % o] += plane.iter().sum::<f32>();
        }
    }
    need_dx.then_some(dx)
}

/// One image: `dw` accumulates, `dx` (when given, zeroed) receives the input gradient.
#[allow(clippy::too_many_arguments)]
fn image_backward(
    a: &Conv2dAttrs,
    x: &[f32],
    [c, h, wd]: [usize; 3],
    w: &[f32],
    dy: &[f32],
    [o, oh, ow]: [usize; 3],
    dw: &mut [f32],
    mut dx: Option<&mut [f32]>,
) {
    let g = a.groups;
    let (cg, og) = (c / g, o / g);
    let kk = a.kernel[0] * a.kernel[1];
    let plane_out = oh * ow;
    let pointwise = kk == 1 && a.stride == [1, 1] && a.padding == [0, 0];
    let depthwise = cg == 1 && og == 1;
    let mut col = if pointwise || depthwise {
        Vec::new()
    } else {
        vec![0.0f32; cg * kk * plane_out]
    };
    let mut dcol = if pointwise || depthwise || dx.is_none() {
        Vec::new()
    } else {
        vec![0.0f32; cg * kk * plane_out]
    };
    for grp in 0..g {
        let in_range = grp * cg * h * wd..(grp + 1) * cg * h * wd;
        let xin = &x[in_range.clone()];
        let dyg = &dy[grp * og * plane_out..(grp + 1) * og * plane_out];
        let wg = &w[grp * og * cg * kk..(grp + 1) * og * cg * kk];
        let dwg = &mut dw[grp * og * cg * kk..(grp + 1) * og * cg * kk];
        if depthwise {
            let dxg = dx.as_deref_mut().map(|d| &mut d[in_range]);
            depthwise_backward(a, xin, h, wd, wg, dyg, oh, ow, dwg, dxg);
            continue;
        }
        let cols: &[f32] = if pointwise {
            xin
        } else {
            im2col(a, xin, cg, h, wd, oh, ow, &mut col);
            &col
        };
        sgemm(
            MatRef::row_major(dyg, og, plane_out),
            MatRef::transposed(cols, plane_out, cg * kk),
            dwg,
            true,
        );
        let Some(dx) = dx.as_deref_mut() else { continue };
        let wt = MatRef::transposed(wg, cg * kk, og);
        if pointwise {
            sgemm(wt, MatRef::row_major(dyg, og, plane_out), &mut dx[in_range], false);
        } else {
            sgemm(wt, MatRef::row_major(dyg, og, plane_out), &mut dcol, false);
            col2im_add(a, &dcol, cg, h, wd, oh, ow, &mut dx[in_range]);
        }
    }
}

/// The adjoint of `im2col`: adds every column entry back to the input pixel it was read from.
#[allow(clippy::too_many_arguments)]
fn col2im_add(a: &Conv2dAttrs, col: &[f32], c: usize, h: usize, w: usize, oh: usize, ow: usize, dx: &mut [f32]) {
    let [kh, kw] = a.kernel;
    let mut row = 0;
    for ch in 0..c {
        for i in 0..kh {
            for j in 0..kw {
                let src = &col[row * oh * ow..(row + 1) * oh * ow];
                for oy in 0..oh {
                    let iy = (oy * a.stride[0] + i * a.dilation[0]) as isize - a.padding[0] as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let dst = &mut dx[(ch * h + iy as usize) * w..(ch * h + iy as usize + 1) * w];
                    for ox in 0..ow {
                        let ix = (ox * a.stride[1] + j * a.dilation[1]) as isize - a.padding[1] as isize;
                        if ix >= 0 && ix < w as isize {
                            dst[ix as usize] += src[oy * ow + ox];
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

/// One channel of a depthwise convolution: `dk[i, j] += sum dy * x_shifted`,
/// `dx_shifted += k[i, j] * dy`.
#[allow(clippy::too_many_arguments)]
fn depthwise_backward(
    a: &Conv2dAttrs,
    x: &[f32],
    h: usize,
    w: usize,
    k: &[f32],
    dy: &[f32],
    oh: usize,
    ow: usize,
    dk: &mut [f32],
    mut dx: Option<&mut [f32]>,
) {
    let [kh, kw] = a.kernel;
    for i in 0..kh {
        for j in 0..kw {
            let kv = k[i * kw + j];
            let mut acc = 0.0f32;
            for oy in 0..oh {
                let iy = (oy * a.stride[0] + i * a.dilation[0]) as isize - a.padding[0] as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let row = iy as usize * w;
                let g = &dy[oy * ow..(oy + 1) * ow];
                // Output columns whose tap lands inside the row: ix = ox * s + j * d - p in [0, w).
                let offset = (j * a.dilation[1]) as isize - a.padding[1] as isize;
                let s = a.stride[1] as isize;
                let first = if offset >= 0 { 0 } else { ((-offset) + s - 1) / s } as usize;
                let span = w as isize - 1 - offset;
                let last = if span < 0 { 0 } else { (span / s + 1) as usize }.min(ow);
                if first >= last {
                    continue;
                }
                let taps = first..last;
                let start = (first as isize * s + offset) as usize;
                if s == 1 {
                    let src = &x[row + start..row + start + taps.len()];
                    acc += g[taps.clone()].iter().zip(src).map(|(a, b)| a * b).sum::<f32>();
                    if let Some(dx) = dx.as_deref_mut() {
                        for (d, &gv) in dx[row + start..row + start + taps.len()].iter_mut().zip(&g[taps]) {
                            *d += kv * gv;
                        }
                    }
                } else {
                    for (k, &gv) in g[taps].iter().enumerate() {
                        let ix = start + k * s as usize;
                        acc += gv * x[row + ix];
                        if let Some(dx) = dx.as_deref_mut() {
                            dx[row + ix] += kv * gv;
                        }
                    }
                }
            }
            dk[i * kw + j] += acc;
        }
    }
}
