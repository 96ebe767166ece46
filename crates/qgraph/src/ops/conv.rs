//! Conv2d and ConvTranspose2d, NCHW as PyTorch: `out[n, o, y, x] = b[o] + sum_{c, i, j}
//! w[o, c, i, j] * in[n, g*Cg + c, y*s - p + i*d, x*s - p + j*d]`.
//!
//! Conv2d runs as a product of the weight `[o, c*kh*kw]` with the input's columns: stride-1
//! layers read shifted rows of zero-padded input planes in place (`conv2d_shifted`), other
//! layers build im2col columns per block of output pixels, 1x1 layers read the input as it is,
//! and depthwise layers use direct loops. ConvTranspose2d multiplies by `W^T` and places the
//! columns: by blocks of input rows when kernel = stride (each output value has one source),
//! by a scatter-add otherwise. Thread-local scratch buffers (im2col columns, product tiles,
//! padded planes) are kept between calls.

use qtensor::Tensor;
use rayon::prelude::*;

use super::gemm::{sgemm, sgemm_shifted, MatRef, SgemmPath};
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
    // Stride 1 with little waste (see `conv2d_shifted`): no im2col at all.
    let wp = wd + 2 * a.padding[1];
    if a.stride == [1, 1] && !pointwise && (wp - ow) * 10 <= wp && SgemmPath::best() == SgemmPath::Avx512 {
        conv2d_shifted(a, w, bias, x, o, (oh, ow), &mut y);
        return Ok(Tensor::new(out_shape, y)?);
    }
    // Each task owns a block of output pixels of one (image, group): its im2col columns and
    // product tile stay in cache, the tile goes straight to the task's slices of the output
    // planes (with bias and activation), and a batch-1 convolution still spreads over every
    // thread.
    let depth = cg * kk;
    let block = block_pixels(depth, pixels);
    let tasks = ConvTask::split(&mut y, (n, o, g), pixels, block, block);
    tasks.into_par_iter().for_each(|task| {
        let (b, grp, start) = (task.image, task.group, task.start);
        let len = block.min(pixels - start);
        let xin = &x.data()[(b * c + grp * cg) * plane_in..(b * c + (grp + 1) * cg) * plane_in];
        let wg = MatRef::row_major(&w[grp * og * depth..(grp + 1) * og * depth], og, depth);
        let cols_len = if pointwise { 0 } else { depth * len };
        with_scratch(cols_len + og * len, |scratch| {
            let (cols, tile) = scratch.split_at_mut(cols_len);
            if pointwise {
                let cols = MatRef {
                    data: &xin[start..],
                    rows: cg,
                    cols: len,
                    row_stride: plane_in,
                    col_stride: 1,
                };
                sgemm(wg, cols, tile, false);
            } else {
                im2col_block(a, xin, cg, (h, wd), ow, start..start + len, cols);
                sgemm(wg, MatRef::row_major(cols, depth, len), tile, false);
            }
            for (oc, (dst, row)) in task.rows.into_iter().zip(tile.chunks_exact(len)).enumerate() {
                let shift = bias.map_or(0.0, |bias| bias[grp * og + oc]);
                for (d, &v) in dst.iter_mut().zip(row) {
                    *d = v + shift;
                }
                a.activation.apply(dst);
            }
        });
    });
    Ok(Tensor::new(out_shape, y)?)
}

/// A stride-1 convolution without im2col. With the input copied once into zero-padded planes
/// `wp = w + 2 * pad` wide, output pixel `(oy, ox)` reads tap `(c, i, j)` at
/// `c * plane + (oy + i * dh) * wp + ox + j * dw`: over the "virtual pixels" `v = oy * wp + ox`
/// each tap is one contiguous run, `offset(c, i, j) + v`. So the product `W x B` with row
/// `(c, i, j)` of `B` read in place at that offset ([`sgemm_shifted`]) gives every output
/// pixel, plus `wp - ow` columns per row that straddle the padding and are dropped (the caller
/// takes this path when they are at most a tenth). The products and their order are those of
/// the im2col path, so the results are the same bits.
#[allow(clippy::too_many_arguments)]
fn conv2d_shifted(
    a: &Conv2dAttrs,
    w: &[f32],
    bias: Option<&[f32]>,
    x: &Tensor,
    o: usize,
    (oh, ow): (usize, usize),
    y: &mut [f32],
) {
    let (n, c, h, wd) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let ([kh, kw], [ph, pw], [dh, dw]) = (a.kernel, a.padding, a.dilation);
    let (hp, wp) = (h + 2 * ph, wd + 2 * pw);
    let plane = hp * wp;
    let g = a.groups;
    let (cg, og) = (c / g, o / g);
    let depth = cg * kh * kw;
    // Reads of the dropped columns of the last rows run up to `(kw - 1) * dw` past the planes.
    let slack = (kw - 1) * dw;
    let padded_len = n * c * plane + slack;
    let mut padded = PADDED.take();
    if padded.len() < padded_len {
        padded.resize(padded_len, 0.0);
    }
    // Every element of the planes and the slack is written here (the buffer holds an earlier
    // call's values).
    let (planes, tail) = padded[..padded_len].split_at_mut(n * c * plane);
    tail.fill(0.0);
    planes.par_chunks_mut(plane).enumerate().for_each(|(p, dst)| {
        let src = &x.data()[p * h * wd..(p + 1) * h * wd];
        let (top, rest) = dst.split_at_mut(ph * wp);
        let (middle, bottom) = rest.split_at_mut(h * wp);
        top.fill(0.0);
        bottom.fill(0.0);
        for (row, dst_row) in src.chunks_exact(wd).zip(middle.chunks_exact_mut(wp)) {
            dst_row[..pw].fill(0.0);
            dst_row[pw..pw + wd].copy_from_slice(row);
            dst_row[pw + wd..].fill(0.0);
        }
    });
    let offsets: Vec<usize> = (0..cg)
        .flat_map(|ic| (0..kh).flat_map(move |i| (0..kw).map(move |j| ic * plane + i * dh * wp + j * dw)))
        .collect();
    // Output rows per task: about 512 virtual pixels of product width.
    let block_rows = 512usize.div_ceil(wp).min(oh);
    let tasks = ConvTask::split(y, (n, o, g), oh * ow, block_rows * ow, block_rows);
    let padded_ref = &padded[..];
    tasks.into_par_iter().for_each(|task| {
        let (b, grp, oy0) = (task.image, task.group, task.start);
        let len = block_rows.min(oh - oy0) * wp;
        let wg = MatRef::row_major(&w[grp * og * depth..(grp + 1) * og * depth], og, depth);
        let data = &padded_ref[(b * c + grp * cg) * plane + oy0 * wp..];
        with_scratch(og * len, |tile| {
            let done = sgemm_shifted(wg, data, &offsets, len, tile);
            assert!(done, "the caller checked that the AVX-512 product runs");
            for (oc, dst) in task.rows.into_iter().enumerate() {
                let shift = bias.map_or(0.0, |bias| bias[grp * og + oc]);
                let row = &tile[oc * len..(oc + 1) * len];
                for (out, virt) in dst.chunks_exact_mut(ow).zip(row.chunks(wp)) {
                    for (d, &v) in out.iter_mut().zip(virt) {
                        *d = v + shift;
                    }
                }
                a.activation.apply(dst);
            }
        });
    });
    PADDED.set(padded);
}

/// One block of output pixels of one (image, group) of a convolution, with the output rows it
/// writes: `rows[oc]` is pixels `start..` of the group's output channel `oc`.
struct ConvTask<'a> {
    image: usize,
    group: usize,
    start: usize,
    rows: Vec<&'a mut [f32]>,
}

impl<'a> ConvTask<'a> {
    /// Cuts the output `y` (`n` images of `o` planes of `plane` floats, in `g` groups) into
    /// chunks of `chunk` floats per plane: task `(image, group, k)` holds chunk `k` of every
    /// plane of its group, and `start = k * step` (the chunk's first pixel or row).
    fn split(y: &'a mut [f32], (n, o, g): (usize, usize, usize), plane: usize, chunk: usize, step: usize) -> Vec<Self> {
        let blocks = plane.div_ceil(chunk);
        let og = o / g;
        let mut tasks: Vec<ConvTask<'a>> = (0..n * g * blocks)
            .map(|t| ConvTask {
                image: t / (g * blocks),
                group: t / blocks % g,
                start: t % blocks * step,
                rows: Vec::with_capacity(og),
            })
            .collect();
        for (p, y_plane) in y.chunks_mut(plane).enumerate() {
            let (b, ch) = (p / o, p % o);
            let first = (b * g + ch / og) * blocks;
            for (k, part) in y_plane.chunks_mut(chunk).enumerate() {
                tasks[first + k].rows.push(part);
            }
        }
        tasks
    }
}

thread_local! {
    /// Im2col columns and product tile of the convolution tasks run on this thread, kept
    /// between calls (a model's convolutions reuse one buffer instead of allocating per block).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The zero-padded input planes of the last stride-1 convolution run from this thread
    /// (`conv2d_shifted`), kept so that the next one reuses the allocation.
    static PADDED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` floats of this thread's scratch buffer (contents unspecified). The buffer
/// is taken out for the call, not borrowed: a thread waiting inside `f`'s parallel product may
/// run another convolution task, which then finds the slot empty and uses a buffer of its own.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = SCRATCH.take();
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    SCRATCH.set(buf);
    r
}

/// Output pixels per im2col block: about 256 KiB of columns (`depth` values per pixel), a
/// multiple of 16, at least 128 (the product's width: deep reductions such as UNet's
/// 128 x 3 x 3 `d2.0` ran 15-20 % faster on 128-pixel blocks than on 64-pixel ones).
fn block_pixels(depth: usize, pixels: usize) -> usize {
    let budget = (256 * 1024 / 4 / depth.max(1)).max(128).next_multiple_of(16);
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
                    } else if s == 2 {
                        // Every other input: pairs, a loop the compiler vectorizes (ResNet18's
                        // stem 3.97 -> 3.29 ms against `step_by`).
                        for (v, pair) in line[first..last].iter_mut().zip(src[start..].chunks(2)) {
                            *v = pair[0];
                        }
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
/// Non-overlapping layers (kernel = stride, no padding, dilation 1, no output padding: UNet's
/// 2x2 stride-2 upsampling) give each output value exactly one column entry, so they run block
/// by block of input rows and write their output rows directly (`conv_transpose2d_tiled`).
pub fn conv_transpose2d(node: &Node, a: &ConvTranspose2dAttrs, x: &Tensor, out_shape: Vec<usize>) -> Result<Tensor> {
    let w = node.param("weight")?.data();
    let bias = if a.bias { Some(node.param("bias")?.data()) } else { None };
    let (n, c, h, wd) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let (o, oh, ow) = (out_shape[1], out_shape[2], out_shape[3]);
    let g = a.groups;
    let (cg, og) = (c / g, o / g);
    let [kh, kw] = a.kernel;
    let rows = og * kh * kw;
    if a.stride == a.kernel && a.padding == [0, 0] && a.dilation == [1, 1] && (oh, ow) == (h * kh, wd * kw) {
        let weight = node.param("weight")?;
        let kept = weight.derived(|w| TransposedGroups::new(a, w.data(), c, o));
        // A weight read with other channel counts or groups (not this node's own) is transposed
        // for this call only.
        let y = if kept.layout == (c, o, g) {
            conv_transpose2d_tiled(a, &kept, bias, x, o)
        } else {
            conv_transpose2d_tiled(a, &TransposedGroups::new(a, w, c, o), bias, x, o)
        };
        return Ok(Tensor::new(out_shape, y)?);
    }
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

/// The weight of a ConvTranspose2d `[c, o / g, kh, kw]` as `W_g^T` per group (`[o/g * kh * kw,
/// c/g]` row-major, groups in order): rows the AVX-512 product reads in place. Kept with the
/// weight tensor ([`Tensor::derived`]), so it is built once, not per call.
struct TransposedGroups {
    /// `(c, o, groups)` it was built for.
    layout: (usize, usize, usize),
    data: Vec<f32>,
}

impl TransposedGroups {
    fn new(a: &ConvTranspose2dAttrs, w: &[f32], c: usize, o: usize) -> TransposedGroups {
        let g = a.groups;
        let (cg, rows) = (c / g, o / g * a.kernel[0] * a.kernel[1]);
        let data = (0..g)
            .flat_map(|grp| {
                let wg = &w[grp * cg * rows..(grp + 1) * cg * rows];
                (0..rows).flat_map(move |r| (0..cg).map(move |ic| wg[ic * rows + r]))
            })
            .collect();
        TransposedGroups {
            layout: (c, o, g),
            data,
        }
    }
}

/// The non-overlapping [`conv_transpose2d`]: input pixel `(iy, ix)` alone makes output pixels
/// `(iy * kh + i, ix * kw + j)`, so a task takes a block of input rows of one (image, group),
/// multiplies it by `W_g^T` (`wt`, see [`TransposedGroups`]) into a tile that stays in cache,
/// and writes the block's `kh` output rows per input row of every output channel, bias and
/// activation included.
fn conv_transpose2d_tiled(
    a: &ConvTranspose2dAttrs,
    wt: &TransposedGroups,
    bias: Option<&[f32]>,
    x: &Tensor,
    o: usize,
) -> Vec<f32> {
    let (n, c, h, wd) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let g = a.groups;
    let (cg, og) = (c / g, o / g);
    let [kh, kw] = a.kernel;
    let (taps, ow) = (kh * kw, wd * kw);
    let rows = og * taps;
    let wt = &wt.data;
    // Input rows per task: whole rows, at least 128 pixels, about 256 KiB of tile.
    let block_rows = (256 * 1024 / 4 / rows.max(1)).max(128).div_ceil(wd).min(h).max(1);
    let out_plane = h * kh * ow;
    let mut y = vec![0.0f32; n * o * out_plane];
    let tasks = ConvTask::split(&mut y, (n, o, g), out_plane, block_rows * kh * ow, block_rows);
    let plane_in = h * wd;
    tasks.into_par_iter().for_each(|task| {
        let (b, grp, iy0) = (task.image, task.group, task.start);
        let len = block_rows.min(h - iy0) * wd;
        let xin = &x.data()[(b * c + grp * cg) * plane_in..(b * c + (grp + 1) * cg) * plane_in];
        let cols = MatRef {
            data: &xin[iy0 * wd..],
            rows: cg,
            cols: len,
            row_stride: plane_in,
            col_stride: 1,
        };
        let wg = MatRef::row_major(&wt[grp * rows * cg..(grp + 1) * rows * cg], rows, cg);
        with_scratch(rows * len, |tile| {
            sgemm(wg, cols, tile, false);
            for (oc, dst) in task.rows.into_iter().enumerate() {
                let shift = bias.map_or(0.0, |bias| bias[grp * og + oc]);
                // Tile row `(oc, i, j)` holds tap `(i, j)` of every input pixel of the block.
                let tap = |i: usize, j: usize| &tile[((oc * kh + i) * kw + j) * len..][..len];
                for (r, out_row) in dst.chunks_exact_mut(ow).enumerate() {
                    let (iy, i) = (r / kh, r % kh);
                    if kw == 2 {
                        // Two taps interleaved: a loop the compiler vectorizes.
                        let (s0, s1) = (&tap(i, 0)[iy * wd..][..wd], &tap(i, 1)[iy * wd..][..wd]);
                        for ((pair, &t0), &t1) in out_row.chunks_exact_mut(2).zip(s0).zip(s1) {
                            pair[0] = t0 + shift;
                            pair[1] = t1 + shift;
                        }
                        continue;
                    }
                    for j in 0..kw {
                        let src = &tap(i, j)[iy * wd..][..wd];
                        for (v, &t) in out_row[j..].iter_mut().step_by(kw).zip(src) {
                            *v = t + shift;
                        }
                    }
                }
                a.activation.apply(dst);
            }
        });
    });
    y
}
