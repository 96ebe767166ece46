//! Conv2d (im2col + GEMM, direct loops for depthwise) and ConvTranspose2d (GEMM + col2im), NCHW
//! as PyTorch: `out[n, o, y, x] = b[o] + sum_{c, i, j} w[o, c, i, j] *
//! in[n, g*Cg + c, y*s - p + i*d, x*s - p + j*d]`.

use qtensor::Tensor;
use rayon::prelude::*;

use super::gemm::{sgemm, MatRef};
use crate::error::shape_err;
use crate::graph::Node;
use crate::op::{Conv2dAttrs, ConvTranspose2dAttrs};
use crate::Result;

fn out_size(input: usize, k: usize, s: usize, p: usize, d: usize) -> Option<usize> {
    let span = d * (k - 1) + 1;
    (input + 2 * p).checked_sub(span).map(|v| v / s + 1)
}

fn check_groups(node: &str, cin: usize, cout: usize, groups: usize) -> Result<()> {
    if cin.checked_rem(groups) != Some(0) || cout.checked_rem(groups) != Some(0) {
        return Err(shape_err(
            node,
            format!("groups {groups} must divide in_channels {cin} and out_channels {cout}"),
        ));
    }
    Ok(())
}

pub fn conv2d_shape(node: &str, a: &Conv2dAttrs, x: &[usize]) -> Result<Vec<usize>> {
    check_groups(node, a.in_channels, a.out_channels, a.groups)?;
    if a.stride.contains(&0) || a.dilation.contains(&0) || a.kernel.contains(&0) {
        return Err(shape_err(node, "kernel, stride and dilation must be at least 1"));
    }
    if x.len() != 4 || x[1] != a.in_channels {
        return Err(shape_err(
            node,
            format!("Conv2d expects input [N, {}, H, W], got {x:?}", a.in_channels),
        ));
    }
    let oh = out_size(x[2], a.kernel[0], a.stride[0], a.padding[0], a.dilation[0]);
    let ow = out_size(x[3], a.kernel[1], a.stride[1], a.padding[1], a.dilation[1]);
    match (oh, ow) {
        (Some(oh), Some(ow)) => Ok(vec![x[0], a.out_channels, oh, ow]),
        _ => Err(shape_err(
            node,
            format!("input {x:?} is smaller than the (dilated) kernel {:?}", a.kernel),
        )),
    }
}

/// Conv2d forward.
pub fn conv2d(node: &Node, a: &Conv2dAttrs, x: &Tensor, out_shape: Vec<usize>) -> Result<Tensor> {
    let w = node.param("weight")?.data();
    let bias = if a.bias { Some(node.param("bias")?.data()) } else { None };
    let (n, c, h, wd) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let (o, oh, ow) = (out_shape[1], out_shape[2], out_shape[3]);
    let g = a.groups;
    let (cg, og) = (c / g, o / g);
    let kk = a.kernel[0] * a.kernel[1];
    let mut y = vec![0.0f32; n * o * oh * ow];
    let pointwise = kk == 1 && a.stride == [1, 1] && a.padding == [0, 0];
    let depthwise = cg == 1 && og == 1;
    let image_in = c * h * wd;
    // Images are independent: one task each, with its own im2col buffer.
    y.par_chunks_mut(o * oh * ow).enumerate().for_each(|(b, image)| {
        let mut col = if pointwise || depthwise {
            Vec::new()
        } else {
            vec![0.0f32; cg * kk * oh * ow]
        };
        let x_b = &x.data()[b * image_in..(b + 1) * image_in];
        for grp in 0..g {
            let xin = &x_b[grp * cg * h * wd..(grp + 1) * cg * h * wd];
            let out = &mut image[grp * og * oh * ow..(grp + 1) * og * oh * ow];
            if let Some(bias) = bias {
                for (oc, plane) in out.chunks_exact_mut(oh * ow).enumerate() {
                    plane.fill(bias[grp * og + oc]);
                }
            }
            let wg = &w[grp * og * cg * kk..(grp + 1) * og * cg * kk];
            if depthwise {
                depthwise_plane(a, xin, h, wd, wg, out, oh, ow);
                continue;
            }
            let cols = if pointwise {
                xin
            } else {
                im2col(a, xin, cg, h, wd, oh, ow, &mut col);
                &col
            };
            sgemm(
                MatRef::row_major(wg, og, cg * kk),
                MatRef::row_major(cols, cg * kk, oh * ow),
                out,
                true,
            );
        }
    });
    a.activation.apply(&mut y);
    Ok(Tensor::new(out_shape, y)?)
}

/// Unfolds input patches into rows `(c, i, j)` and columns `(y, x)`; padding reads as 0.
#[allow(clippy::too_many_arguments)]
pub(crate) fn im2col(a: &Conv2dAttrs, x: &[f32], c: usize, h: usize, w: usize, oh: usize, ow: usize, col: &mut [f32]) {
    let [kh, kw] = a.kernel;
    let mut row = 0;
    for ch in 0..c {
        for i in 0..kh {
            for j in 0..kw {
                let dst = &mut col[row * oh * ow..(row + 1) * oh * ow];
                for oy in 0..oh {
                    let iy = (oy * a.stride[0] + i * a.dilation[0]) as isize - a.padding[0] as isize;
                    let line = &mut dst[oy * ow..(oy + 1) * ow];
                    if iy < 0 || iy >= h as isize {
                        line.fill(0.0);
                        continue;
                    }
                    let src = &x[(ch * h + iy as usize) * w..(ch * h + iy as usize + 1) * w];
                    for (ox, v) in line.iter_mut().enumerate() {
                        let ix = (ox * a.stride[1] + j * a.dilation[1]) as isize - a.padding[1] as isize;
                        *v = if ix < 0 || ix >= w as isize {
                            0.0
                        } else {
                            src[ix as usize]
                        };
                    }
                }
                row += 1;
            }
        }
    }
}

/// One input channel to one output channel (depthwise): direct loops, accumulating into `out`.
#[allow(clippy::too_many_arguments)]
fn depthwise_plane(a: &Conv2dAttrs, x: &[f32], h: usize, w: usize, k: &[f32], out: &mut [f32], oh: usize, ow: usize) {
    let [kh, kw] = a.kernel;
    let s = a.stride[1] as isize;
    for i in 0..kh {
        for j in 0..kw {
            let wv = k[i * kw + j];
            // Output columns whose tap lands inside the row: ix = ox * s + offset in [0, w).
            let offset = (j * a.dilation[1]) as isize - a.padding[1] as isize;
            let first = if offset >= 0 { 0 } else { ((-offset) + s - 1) / s } as usize;
            let span = w as isize - 1 - offset;
            let last = if span < 0 { 0 } else { (span / s + 1) as usize }.min(ow);
            if first >= last {
                continue;
            }
            let start = (first as isize * s + offset) as usize;
            for oy in 0..oh {
                let iy = (oy * a.stride[0] + i * a.dilation[0]) as isize - a.padding[0] as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let src = &x[iy as usize * w..(iy as usize + 1) * w];
                let dst = &mut out[oy * ow + first..oy * ow + last];
                if s == 1 {
                    for (v, &xv) in dst.iter_mut().zip(&src[start..start + (last - first)]) {
                        *v += wv * xv;
                    }
                } else {
                    for (k, v) in dst.iter_mut().enumerate() {
                        *v += wv * src[start + k * s as usize];
                    }
                }
            }
        }
    }
}

pub fn conv_transpose2d_shape(node: &str, a: &ConvTranspose2dAttrs, x: &[usize]) -> Result<Vec<usize>> {
    check_groups(node, a.in_channels, a.out_channels, a.groups)?;
    if a.stride.contains(&0) || a.dilation.contains(&0) || a.kernel.contains(&0) {
        return Err(shape_err(node, "kernel, stride and dilation must be at least 1"));
    }
    if x.len() != 4 || x[1] != a.in_channels {
        return Err(shape_err(
            node,
            format!("ConvTranspose2d expects input [N, {}, H, W], got {x:?}", a.in_channels),
        ));
    }
    let mut out = vec![x[0], a.out_channels];
    for d in 0..2 {
        if a.output_padding[d] >= a.stride[d].max(a.dilation[d]) {
            return Err(shape_err(
                node,
                "output_padding must be smaller than stride or dilation",
            ));
        }
        let full = (x[2 + d] - 1) * a.stride[d] + a.dilation[d] * (a.kernel[d] - 1) + a.output_padding[d] + 1;
        match full.checked_sub(2 * a.padding[d]) {
            Some(v) if v > 0 => out.push(v),
            _ => {
                return Err(shape_err(
                    node,
                    format!("padding {:?} leaves no output for input {x:?}", a.padding),
                ))
            }
        }
    }
    Ok(out)
}

/// ConvTranspose2d forward: `cols = W_g^T x_g` then scatter-add the columns into the output.
pub fn conv_transpose2d(node: &Node, a: &ConvTranspose2dAttrs, x: &Tensor, out_shape: Vec<usize>) -> Result<Tensor> {
    let w = node.param("weight")?.data();
    let bias = if a.bias { Some(node.param("bias")?.data()) } else { None };
    let (n, c, h, wd) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let (o, oh, ow) = (out_shape[1], out_shape[2], out_shape[3]);
    let g = a.groups;
    let (cg, og) = (c / g, o / g);
    let [kh, kw] = a.kernel;
    let rows = og * kh * kw;
    let mut cols = vec![0.0f32; rows * h * wd];
    let mut y = vec![0.0f32; n * o * oh * ow];
    for b in 0..n {
        for grp in 0..g {
            let xin = &x.data()[(b * c + grp * cg) * h * wd..(b * c + (grp + 1) * cg) * h * wd];
            let wg = &w[grp * cg * rows..(grp + 1) * cg * rows];
            sgemm(
                MatRef::transposed(wg, rows, cg),
                MatRef::row_major(xin, cg, h * wd),
                &mut cols,
                false,
            );
            let out = &mut y[(b * o + grp * og) * oh * ow..(b * o + (grp + 1) * og) * oh * ow];
            for oc in 0..og {
                let plane = &mut out[oc * oh * ow..(oc + 1) * oh * ow];
                if let Some(bias) = bias {
                    plane.fill(bias[grp * og + oc]);
                }
                for i in 0..kh {
                    for j in 0..kw {
                        let src = &cols[((oc * kh + i) * kw + j) * h * wd..][..h * wd];
                        for iy in 0..h {
                            let oy = (iy * a.stride[0] + i * a.dilation[0]) as isize - a.padding[0] as isize;
                            if oy < 0 || oy >= oh as isize {
                                continue;
                            }
                            for ix in 0..wd {
                                let ox = (ix * a.stride[1] + j * a.dilation[1]) as isize - a.padding[1] as isize;
                                if ox >= 0 && ox < ow as isize {
                                    plane[oy as usize * ow + ox as usize] += src[iy * wd + ix];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    a.activation.apply(&mut y);
    Ok(Tensor::new(out_shape, y)?)
}
