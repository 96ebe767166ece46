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
    let pixels = oh * ow;
    let plane_in = h * wd;
    if cg == 1 && og == 1 {
        // Depthwise: one task per (image, channel) plane.
        y.par_chunks_mut(pixels).enumerate().for_each(|(plane, out)| {
            let ch = plane % o;
            if let Some(bias) = bias {
                out.fill(bias[ch]);
            }
            let xin = &x.data()[plane * plane_in..(plane + 1) * plane_in];
            depthwise_plane(a, xin, h, wd, &w[ch * kk..(ch + 1) * kk], out, oh, ow);
        });
        a.activation.apply(&mut y);
        return Ok(Tensor::new(out_shape, y)?);
    }
    // Each task owns a block of output pixels of one (image, group): its im2col columns stay
    // in cache, and a batch-1 convolution still spreads over every thread.
    let depth = cg * kk;
    let block = block_pixels(depth, pixels);
    let blocks_per_plane = pixels.div_ceil(block);
    let tasks: Vec<(usize, usize, usize)> = (0..n)
        .flat_map(|b| (0..g).flat_map(move |grp| (0..blocks_per_plane).map(move |k| (b, grp, k * block))))
        .collect();
    let results: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(b, grp, start)| {
            let len = block.min(pixels - start);
            let xin = &x.data()[(b * c + grp * cg) * plane_in..(b * c + (grp + 1) * cg) * plane_in];
            let wg = MatRef::row_major(&w[grp * og * depth..(grp + 1) * og * depth], og, depth);
            let mut tile = vec![0.0f32; og * len];
            if pointwise {
                let cols = MatRef {
                    data: &xin[start..],
                    rows: cg,
                    cols: len,
                    row_stride: plane_in,
                    col_stride: 1,
                };
                sgemm(wg, cols, &mut tile, false);
            } else {
                let mut cols = vec![0.0f32; depth * len];
                im2col_block(a, xin, cg, (h, wd), ow, start..start + len, &mut cols);
                sgemm(wg, MatRef::row_major(&cols, depth, len), &mut tile, false);
            }
            tile
        })
        .collect();
    for (&(b, grp, start), tile) in tasks.iter().zip(&results) {
        let len = block.min(pixels - start);
        for (oc, row) in tile.chunks_exact(len).enumerate() {
            let ch = grp * og + oc;
            let dst = &mut y[(b * o + ch) * pixels + start..][..len];
            let shift = bias.map_or(0.0, |bias| bias[ch]);
            for (d, &v) in dst.iter_mut().zip(row) {
                *d = v + shift;
            }
        }
    }
    a.activation.apply(&mut y);
    Ok(Tensor::new(out_shape, y)?)
}

/// Output pixels per im2col block: about 256 KiB of columns (`depth` values per pixel), a
/// multiple of 16, at least 64.
fn block_pixels(depth: usize, pixels: usize) -> usize {
    let budget = (256 * 1024 / 4 / depth.max(1)).max(64).next_multiple_of(16);
    budget.min(pixels).max(1)
}

/// Unfolds input patches into rows `(c, i, j)` and columns `(y, x)`; padding reads as 0.
#[allow(clippy::too_many_arguments)]
pub(crate) fn im2col(a: &Conv2dAttrs, x: &[f32], c: usize, h: usize, w: usize, oh: usize, ow: usize, col: &mut [f32]) {
    im2col_block(a, x, c, (h, w), ow, 0..oh * ow, col);
}

/// The columns of output pixels `pixels` (row-major over the `ow`-wide output) of the im2col
/// matrix: `col[(c, i, j), p - pixels.start]`.
fn im2col_block(
    a: &Conv2dAttrs,
    x: &[f32],
    c: usize,
    (h, w): (usize, usize),
    ow: usize,
    pixels: std::ops::Range<usize>,
    col: &mut [f32],
) {
    let [kh, kw] = a.kernel;
    let len = pixels.len();
    let mut row = 0;
    for ch in 0..c {
        for i in 0..kh {
            for j in 0..kw {
                let dst = &mut col[row * len..(row + 1) * len];
                let mut p = pixels.start;
                while p < pixels.end {
                    let (oy, ox0) = (p / ow, p % ow);
                    let run = (ow - ox0).min(pixels.end - p);
                    let line = &mut dst[p - pixels.start..p - pixels.start + run];
                    p += run;
                    let iy = (oy * a.stride[0] + i * a.dilation[0]) as isize - a.padding[0] as isize;
                    if iy < 0 || iy >= h as isize {
                        line.fill(0.0);
                        continue;
                    }
                    let src = &x[(ch * h + iy as usize) * w..(ch * h + iy as usize + 1) * w];
                    // Output column `ox0 + k` reads input column `(ox0 + k) * s + offset`: the
                    // columns inside the row form one range `first..last` of `k`.
                    let s = a.stride[1] as isize;
                    let offset = ox0 as isize * s + (j * a.dilation[1]) as isize - a.padding[1] as isize;
                    let first = if offset >= 0 { 0 } else { (-offset + s - 1) / s } as usize;
                    let last = if offset >= w as isize {
                        0
                    } else {
                        ((w as isize - 1 - offset) / s + 1) as usize
                    }
                    .clamp(first.min(run), run);
                    let first = first.min(last);
                    line[..first].fill(0.0);
                    line[last..].fill(0.0);
                    if first == last {
                        continue;
                    }
                    let start = (first as isize * s + offset) as usize;
                    if s == 1 {
                        line[first..last].copy_from_slice(&src[start..start + (last - first)]);
                    } else {
                        let taps = src[start..].iter().step_by(s as usize);
                        for (v, &t) in line[first..last].iter_mut().zip(taps) {
                            *v = t;
                        }
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
