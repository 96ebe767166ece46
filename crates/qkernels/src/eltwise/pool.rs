//! Max, average and adaptive-average pooling on NHWC `u8` tensors (PyTorch quantized
//! `max_pool2d`, `avg_pool2d`, `adaptive_avg_pool2d`; the output keeps the input's quantization
//! parameters, as in PyTorch).
//!
//! PyTorch rounds the averages differently for contiguous (NCHW) and channels-last tensors;
//! [`PoolRounding`] selects which one to reproduce. With `m` the multiplier, `zp` the zero
//! point, `size` the number of in-bounds taps and `div` the divisor:
//! - `ContiguousNchw` (`avg_pool2d_out_frame`): `m = f32(1 / div)`,
//!   `y = clamp(round_half_even((sum - size * zp) as f32 * m + zp), 0, 255)`; adaptive
//!   (`adaptive_avg_pool_single_out_frame`): `m = f32(1.0 / 1) / kh / kw` in f32 and
//!   `y = round_half_even(sum * m)` on the raw values.
//! - `ChannelsLast` (`_qavg_pool_nhwc_kernel`, `_qadaptive_avg_pool_kernel`, AVX-512 build):
//!   `m = 1.0 / div` in f32, `y = clamp(zp + round_half_even((sum - size * zp) as f32 * m))`;
//!   channels past the last multiple of 16 go through PyTorch's scalar code, which multiplies by
//!   `1 / (1 / m)` instead.
//!
//! Outputs are split by rows across threads; each output is computed independently.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::EltwisePath;
use crate::conv::NhwcShape;
use crate::{KernelError, Result};

/// Which PyTorch memory-format branch the averages reproduce (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PoolRounding {
    ContiguousNchw,
    /// What a quantized model sees after a quantized conv (PyTorch's conv outputs are
    /// channels-last).
    #[default]
    ChannelsLast,
}

/// Window of a 2-D pooling (PyTorch arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pool2d {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub ceil_mode: bool,
}

impl Pool2d {
    /// `kernel` with stride = kernel, no padding, dilation 1, floor mode (PyTorch defaults).
    pub fn new(kh: usize, kw: usize) -> Pool2d {
        Pool2d {
            kernel: (kh, kw),
            stride: (kh, kw),
            padding: (0, 0),
            dilation: (1, 1),
            ceil_mode: false,
        }
    }

    pub fn with_stride(mut self, sh: usize, sw: usize) -> Self {
        self.stride = (sh, sw);
        self
    }

    pub fn with_padding(mut self, ph: usize, pw: usize) -> Self {
        self.padding = (ph, pw);
        self
    }

    pub fn with_dilation(mut self, dh: usize, dw: usize) -> Self {
        self.dilation = (dh, dw);
        self
    }

    pub fn with_ceil_mode(mut self, ceil_mode: bool) -> Self {
        self.ceil_mode = ceil_mode;
        self
    }

    /// PyTorch `pooling_output_shape`, both axes.
    pub fn output_hw(&self, op: &'static str, h: usize, w: usize) -> Result<(usize, usize)> {
        let bad = |d: String| Err(KernelError::Param { op, detail: d });
        if self.kernel.0 == 0 || self.kernel.1 == 0 || self.stride.0 == 0 || self.stride.1 == 0 {
            return bad(format!(
                "kernel {:?} and stride {:?} must be positive",
                self.kernel, self.stride
            ));
        }
        if self.dilation.0 == 0 || self.dilation.1 == 0 {
            return bad(format!("dilation {:?} must be positive", self.dilation));
        }
        if self.padding.0 * 2 > self.kernel.0 || self.padding.1 * 2 > self.kernel.1 {
            return bad(format!(
                "padding {:?} must be at most half the kernel {:?}",
                self.padding, self.kernel
            ));
        }
        let len = |i: usize, k: usize, p: usize, s: usize, d: usize| -> Option<usize> {
            let span = (d * (k - 1) + 1) as i64;
            let num = i as i64 + 2 * p as i64 - span + if self.ceil_mode { s as i64 - 1 } else { 0 };
            if num < 0 {
                return None;
            }
            let mut out = num / s as i64 + 1;
            if self.ceil_mode && (out - 1) * s as i64 >= i as i64 + p as i64 {
                out -= 1;
            }
            (out > 0).then_some(out as usize)
        };
        match (
            len(h, self.kernel.0, self.padding.0, self.stride.0, self.dilation.0),
            len(w, self.kernel.1, self.padding.1, self.stride.1, self.dilation.1),
        ) {
            (Some(oh), Some(ow)) => Ok((oh, ow)),
            _ => Err(KernelError::Shape {
                op,
                detail: format!("input {h}x{w} is smaller than the pooling window {:?}", self.kernel),
            }),
        }
    }
}

/// Max pooling; padded positions never win (PyTorch `_qmaxpool_2d_nhwc_kernel`). The max of
/// bytes is exact, so every path gives the same output.
pub fn max_pool2d(x: &[u8], xs: NhwcShape, pool: &Pool2d) -> Result<(Vec<u8>, NhwcShape)> {
    max_pool2d_on(EltwisePath::best(), x, xs, pool)
}

/// Output bytes per task when the rows are split across threads (a few rows of a large
/// pooling, many of a small one).
const TASK_BYTES: usize = 16 << 10;

/// [`max_pool2d`] on a chosen path: the portable loop (the oracle), the channel-blocked loop
/// compiled for AVX2 (see `max_pool_row_blocked`), or the AVX-512 rows of
/// `max_pool_avx512` (a dedicated 2x2 stride-2 kernel, masked channel blocks otherwise).
pub fn max_pool2d_on(path: EltwisePath, x: &[u8], xs: NhwcShape, pool: &Pool2d) -> Result<(Vec<u8>, NhwcShape)> {
    xs.check("max_pool2d", "input", x.len())?;
    path.check("max_pool2d")?;
    let (oh_n, ow_n) = pool.output_hw("max_pool2d", xs.h, xs.w)?;
    let ys = NhwcShape::new(xs.n, oh_n, ow_n, xs.c);
    if ys.is_empty() {
        return Ok((Vec::new(), ys));
    }
    let row_len = ow_n * xs.c;
    let band = (TASK_BYTES / row_len).clamp(1, oh_n);
    // The output is written once, without being zeroed first.
    let mut y: Vec<u8> = Vec::with_capacity(ys.len());
    let bands: Vec<(usize, usize, &mut [MaybeUninit<u8>])> = y.spare_capacity_mut()[..ys.len()]
        .chunks_mut(oh_n * row_len)
        .enumerate()
        .flat_map(|(n, image)| {
            image
                .chunks_mut(band * row_len)
                .enumerate()
                .map(move |(b, rows)| (n, b * band, rows))
        })
        .collect();
    crate::team::for_each_item(rayon::current_num_threads(), bands, &|(n, first, rows)| {
        for (i, out) in rows.chunks_exact_mut(row_len).enumerate() {
            max_pool_row_on(path, x, xs, pool, n, first + i, out);
        }
    });
    // SAFETY: the bands cover the first `ys.len()` bytes in whole rows, and every row kernel
    // stores each byte of its row (every pixel, every channel).
    unsafe { y.set_len(ys.len()) };
    Ok((y, ys))
}

/// Output row `(n, oh)` of a max pooling on `path` (checked by the caller), every byte stored.
fn max_pool_row_on(
    path: EltwisePath,
    x: &[u8],
    xs: NhwcShape,
    pool: &Pool2d,
    n: usize,
    oh: usize,
    out: &mut [MaybeUninit<u8>],
) {
    match path {
        EltwisePath::Portable => max_pool_row_portable(x, xs, pool, n, oh, out),
        // SAFETY: the caller's `path.check` confirmed the CPU features; `x` holds `xs`, and `out`
        // is output row `(n, oh)` of the pooling, both as the kernels require.
        #[cfg(target_arch = "x86_64")]
        EltwisePath::Avx2 => unsafe { max_pool_row_avx2(x, xs, pool, n, oh, out) },
        #[cfg(target_arch = "x86_64")]
        EltwisePath::Avx512 | EltwisePath::Avx512Vbmi => unsafe {
            super::max_pool_avx512::max_pool_row(x, xs, pool, n, oh, out)
        },
        #[cfg(not(target_arch = "x86_64"))]
        _ => max_pool_row_portable(x, xs, pool, n, oh, out),
    }
}

/// A max pooling produced a row at a time: a convolution reading a pooled tensor fills its
/// padded input rows from it directly, so the pooled tensor is never stored (and the pooling's
/// reads of its input overlap the convolution's arithmetic instead of making a pass of their
/// own).
#[derive(Debug)]
pub(crate) struct PooledRows<'a> {
    path: EltwisePath,
    x: &'a [u8],
    xs: NhwcShape,
    pool: Pool2d,
}

impl<'a> PooledRows<'a> {
    /// Checks `x` against `xs` and the window against the input; returns the source and the
    /// pooled shape.
    pub(crate) fn new(
        path: EltwisePath,
        x: &'a [u8],
        xs: NhwcShape,
        pool: Pool2d,
    ) -> Result<(PooledRows<'a>, NhwcShape)> {
        xs.check("max_pool2d", "input", x.len())?;
        path.check("max_pool2d")?;
        let (oh, ow) = pool.output_hw("max_pool2d", xs.h, xs.w)?;
        Ok((PooledRows { path, x, xs, pool }, NhwcShape::new(xs.n, oh, ow, xs.c)))
    }

    /// Writes pooled row `oh` of image `n` into `out` (one row of the pooled shape).
    pub(crate) fn write_init(&self, n: usize, oh: usize, out: &mut [u8]) {
        // SAFETY: `MaybeUninit<u8>` has the layout of `u8`, and the row kernels store only
        // initialized bytes, so `out` stays initialized.
        let out = unsafe { &mut *(out as *mut [u8] as *mut [MaybeUninit<u8>]) };
        max_pool_row_on(self.path, self.x, self.xs, &self.pool, n, oh, out);
    }

    /// The input bytes pooled rows `rows` of image `n` read (empty when none are left).
    pub(crate) fn source(&self, n: usize, rows: std::ops::Range<usize>) -> &'a [u8] {
        if rows.is_empty() {
            return &[];
        }
        let (s, k) = (self.pool.stride.0, (self.pool.kernel.0 - 1) * self.pool.dilation.0 + 1);
        let first = (rows.start * s).saturating_sub(self.pool.padding.0).min(self.xs.h);
        let end = (rows.end.saturating_sub(1) * s + k)
            .saturating_sub(self.pool.padding.0)
            .clamp(first, self.xs.h);
        let row = self.xs.w * self.xs.c;
        let image = n * self.xs.h * row;
        &self.x[image + first * row..image + end * row]
    }
}

/// The window taps `k` in `0..kernel` whose input position `o * stride + k * dilation - padding`
/// lies inside `0..len`: a contiguous range, as the positions grow with `k`.
pub(super) fn taps_inside(
    o: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    padding: usize,
    len: usize,
) -> std::ops::Range<usize> {
    let start = o * stride;
    if len == 0 || start > len - 1 + padding {
        return 0..0;
    }
    // Dilation 1 (almost every pooling) without the divisions.
    let (first, end) = if dilation == 1 {
        (padding.saturating_sub(start), (len + padding - start).min(kernel))
    } else {
        (
            padding.saturating_sub(start).div_ceil(dilation),
            ((len - 1 + padding - start) / dilation + 1).min(kernel),
        )
    };
    first.min(end)..end
}

/// One output row of max pooling, one channel at a time from 0 (the reference).
fn max_pool_row_portable(x: &[u8], xs: NhwcShape, pool: &Pool2d, n: usize, oh: usize, out: &mut [MaybeUninit<u8>]) {
    let mut acc = vec![0u8; xs.c];
    for (ow, o) in out.chunks_exact_mut(xs.c).enumerate() {
        acc.fill(0);
        for at in window_offsets(xs, pool, n, oh, ow) {
            for (m, &v) in acc.iter_mut().zip(&x[at..at + xs.c]) {
                *m = (*m).max(v);
            }
        }
        store(o, &acc);
    }
}

/// `out[i] = src[i]` (the slices have the same length).
#[inline(always)]
fn store(out: &mut [MaybeUninit<u8>], src: &[u8]) {
    for (o, &v) in out.iter_mut().zip(src) {
        o.write(v);
    }
}

/// Offsets into the input of the in-bounds taps of output `(n, oh, ow)`.
fn window_offsets(xs: NhwcShape, pool: &Pool2d, n: usize, oh: usize, ow: usize) -> impl Iterator<Item = usize> {
    let pool = *pool;
    (0..pool.kernel.0)
        .filter_map(move |kh| {
            let ih = (oh * pool.stride.0 + kh * pool.dilation.0) as i64 - pool.padding.0 as i64;
            (ih >= 0 && ih < xs.h as i64).then_some(ih as usize)
        })
        .flat_map(move |ih| {
            (0..pool.kernel.1).filter_map(move |kw| {
                let iw = (ow * pool.stride.1 + kw * pool.dilation.1) as i64 - pool.padding.1 as i64;
                (iw >= 0 && iw < xs.w as i64).then(|| xs.offset(n, ih, iw as usize))
            })
        })
}

/// The in-bounds taps of output pixel `(oh, ow)`: rows and columns of the input.
#[derive(Clone)]
struct Window {
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
}

/// Max of channels `ch..ch + W` of one pixel over the in-bounds taps of its window (0 when
/// there is none).
#[inline(always)]
fn window_max<const W: usize>(
    x: &[u8],
    xs: NhwcShape,
    pool: &Pool2d,
    (n, oh, ow): (usize, usize, usize),
    window: &Window,
    ch: usize,
) -> [u8; W] {
    let mut acc = [0u8; W];
    for kh in window.rows.clone() {
        let ih = oh * pool.stride.0 + kh * pool.dilation.0 - pool.padding.0;
        for kw in window.cols.clone() {
            let iw = ow * pool.stride.1 + kw * pool.dilation.1 - pool.padding.1;
            let at = xs.offset(n, ih, iw) + ch;
            let src: &[u8; W] = x[at..at + W].try_into().expect("block inside the pixel");
            for (m, &v) in acc.iter_mut().zip(src) {
                *m = (*m).max(v);
            }
        }
    }
    acc
}

/// One output row of max pooling read straight from the input: per output pixel, the
/// in-bounds taps (a contiguous range on each axis, see [`taps_inside`]) reduced in blocks of
/// 64, 32 and 16 channels, then single channels, which the compiler turns into one vector max
/// per tap and block. Max is associative and commutative and the padded taps never win, so
/// this is the same byte as the tap-by-tap reference.
#[inline(always)]
fn max_pool_row_blocked(x: &[u8], xs: NhwcShape, pool: &Pool2d, n: usize, oh: usize, out: &mut [MaybeUninit<u8>]) {
    let c = xs.c;
    if is_whole_2x2(xs, pool, oh, out.len() / c) {
        return max_pool_row_2x2(x, xs, n, oh, out);
    }
    let rows = taps_inside(oh, pool.kernel.0, pool.stride.0, pool.dilation.0, pool.padding.0, xs.h);
    for (ow, o) in out.chunks_exact_mut(c).enumerate() {
        let window = Window {
            rows: rows.clone(),
            cols: taps_inside(ow, pool.kernel.1, pool.stride.1, pool.dilation.1, pool.padding.1, xs.w),
        };
        let at = (n, oh, ow);
        let mut ch = 0;
        while ch + 64 <= c {
            store(&mut o[ch..ch + 64], &window_max::<64>(x, xs, pool, at, &window, ch));
            ch += 64;
        }
        while ch + 32 <= c {
            store(&mut o[ch..ch + 32], &window_max::<32>(x, xs, pool, at, &window, ch));
            ch += 32;
        }
        while ch + 16 <= c {
            store(&mut o[ch..ch + 16], &window_max::<16>(x, xs, pool, at, &window, ch));
            ch += 16;
        }
        while ch < c {
            o[ch].write(window_max::<1>(x, xs, pool, at, &window, ch)[0]);
            ch += 1;
        }
    }
}

/// Whether output row `oh` of `ow_n` pixels is whole 2x2 windows at stride 2 (no padding or
/// dilation; ceil mode may add a half window, which this excludes).
pub(super) fn is_whole_2x2(xs: NhwcShape, pool: &Pool2d, oh: usize, ow_n: usize) -> bool {
    pool.kernel == (2, 2)
        && pool.stride == (2, 2)
        && pool.padding == (0, 0)
        && pool.dilation == (1, 1)
        && 2 * ow_n <= xs.w
        && 2 * oh + 1 < xs.h
}

/// Max of channels `ch..ch + W` of the four pixels at `at`, `at + c`, `at + row`, `at + row + c`.
#[inline(always)]
fn quad_max<const W: usize>(x: &[u8], at: usize, c: usize, row: usize, ch: usize) -> [u8; W] {
    let mut acc = [0u8; W];
    for tap in [at, at + c, at + row, at + row + c] {
        let src: &[u8; W] = x[tap + ch..tap + ch + W].try_into().expect("block inside the pixel");
        for (m, &v) in acc.iter_mut().zip(src) {
            *m = (*m).max(v);
        }
    }
    acc
}

/// [`max_pool_row_blocked`] for whole 2x2 stride-2 windows ([`is_whole_2x2`]): the four taps at
/// fixed distances, without the window bookkeeping.
#[inline(always)]
fn max_pool_row_2x2(x: &[u8], xs: NhwcShape, n: usize, oh: usize, out: &mut [MaybeUninit<u8>]) {
    let (c, row) = (xs.c, xs.w * xs.c);
    for (ow, o) in out.chunks_exact_mut(c).enumerate() {
        let at = xs.offset(n, 2 * oh, 2 * ow);
        let mut ch = 0;
        while ch + 64 <= c {
            store(&mut o[ch..ch + 64], &quad_max::<64>(x, at, c, row, ch));
            ch += 64;
        }
        while ch + 32 <= c {
            store(&mut o[ch..ch + 32], &quad_max::<32>(x, at, c, row, ch));
            ch += 32;
        }
        while ch + 16 <= c {
            store(&mut o[ch..ch + 16], &quad_max::<16>(x, at, c, row, ch));
            ch += 16;
        }
        while ch < c {
            o[ch].write(quad_max::<1>(x, at, c, row, ch)[0]);
            ch += 1;
        }
    }
}

/// [`max_pool_row_blocked`] compiled for AVX2. Safety: the CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn max_pool_row_avx2(x: &[u8], xs: NhwcShape, pool: &Pool2d, n: usize, oh: usize, out: &mut [MaybeUninit<u8>]) {
    max_pool_row_blocked(x, xs, pool, n, oh, out)
}

/// Average pooling (dilation must be 1, as in PyTorch). `divisor_override` replaces the
/// divisor; `count_include_pad` counts padded taps in it. Rounding: see the module docs.
pub fn avg_pool2d(
    x: &[u8],
    xs: NhwcShape,
    zero_point: i32,
    pool: &Pool2d,
    count_include_pad: bool,
    divisor_override: Option<usize>,
    rounding: PoolRounding,
) -> Result<(Vec<u8>, NhwcShape)> {
    xs.check("avg_pool2d", "input", x.len())?;
    if pool.dilation != (1, 1) {
        return Err(KernelError::Param {
            op: "avg_pool2d",
            detail: "average pooling has no dilation; use dilation (1, 1)".into(),
        });
    }
    if divisor_override == Some(0) {
        return Err(KernelError::Param {
            op: "avg_pool2d",
            detail: "divisor_override must not be 0".into(),
        });
    }
    let (oh_n, ow_n) = pool.output_hw("avg_pool2d", xs.h, xs.w)?;
    let ys = NhwcShape::new(xs.n, oh_n, ow_n, xs.c);
    let mut y = vec![0u8; ys.len()];
    let (h, w) = (xs.h as i64, xs.w as i64);
    y.par_chunks_mut(ow_n * xs.c).enumerate().for_each(|(row, out)| {
        let (n, oh) = (row / oh_n, row % oh_n);
        let mut sums = vec![0i32; xs.c];
        for ow in 0..ow_n {
            let hs = (oh * pool.stride.0) as i64 - pool.padding.0 as i64;
            let ws = (ow * pool.stride.1) as i64 - pool.padding.1 as i64;
            let he = (hs + pool.kernel.0 as i64).min(h + pool.padding.0 as i64);
            let we = (ws + pool.kernel.1 as i64).min(w + pool.padding.1 as i64);
            let pool_size = (he - hs) * (we - ws);
            let (hs, ws, he, we) = (hs.max(0), ws.max(0), he.min(h), we.min(w));
            let size = ((he - hs) * (we - ws)) as i32;
            let div = divisor_override.map_or(if count_include_pad { pool_size } else { size as i64 }, |d| d as i64);
            sums.fill(0);
            for ih in hs..he {
                for iw in ws..we {
                    let at = xs.offset(n, ih as usize, iw as usize);
                    for (s, &v) in sums.iter_mut().zip(&x[at..at + xs.c]) {
                        *s += v as i32;
                    }
                }
            }
            let o = &mut out[ow * xs.c..(ow + 1) * xs.c];
            finish_average(&sums, size, div, zero_point, rounding, o);
        }
    });
    Ok((y, ys))
}

/// Turns per-channel sums of `size` raw values into averages (avg_pool2d rules).
fn finish_average(sums: &[i32], size: i32, div: i64, zp: i32, rounding: PoolRounding, out: &mut [u8]) {
    match rounding {
        PoolRounding::ContiguousNchw => {
            let m = (1.0f64 / div as f64) as f32;
            for (o, &s) in out.iter_mut().zip(sums) {
                let v = ((s - size * zp) as f32 * m + zp as f32).round_ties_even();
                *o = v.clamp(0.0, 255.0) as u8;
            }
        }
        PoolRounding::ChannelsLast => channels_last(sums, size, 1.0 / div as f32, zp, out),
    }
}

/// PyTorch's channels-last rounding: vector channels multiply by `m`, the scalar tail by
/// `1 / (1 / m)`.
fn channels_last(sums: &[i32], size: i32, m: f32, zp: i32, out: &mut [u8]) {
    let vector_channels = sums.len() / 16 * 16;
    let m_tail = 1.0 / (1.0 / m);
    for (c, (o, &s)) in out.iter_mut().zip(sums).enumerate() {
        let mult = if c < vector_channels { m } else { m_tail };
        *o = super::quantize_u8((s - size * zp) as f32, mult, zp);
    }
}

/// Adaptive average pooling to `(oh, ow)` (global pooling is `(1, 1)`): output cell `o` of an
/// axis of length `i -> n` averages `floor(o * i / n) .. ceil((o + 1) * i / n)` (computed in f32
/// as PyTorch does). Rounding: see the module docs.
pub fn adaptive_avg_pool2d(
    x: &[u8],
    xs: NhwcShape,
    zero_point: i32,
    output: (usize, usize),
    rounding: PoolRounding,
) -> Result<(Vec<u8>, NhwcShape)> {
    xs.check("adaptive_avg_pool2d", "input", x.len())?;
    let (oh_n, ow_n) = output;
    if oh_n == 0 || ow_n == 0 {
        return Err(KernelError::Param {
            op: "adaptive_avg_pool2d",
            detail: format!("output size {output:?} must be positive"),
        });
    }
    let ys = NhwcShape::new(xs.n, oh_n, ow_n, xs.c);
    let start = |o: usize, out: usize, inp: usize| ((o * inp) as f32 / out as f32).floor() as usize;
    let end = |o: usize, out: usize, inp: usize| (((o + 1) * inp) as f32 / out as f32).ceil() as usize;
    let mut y = vec![0u8; ys.len()];
    y.par_chunks_mut(ow_n * xs.c).enumerate().for_each(|(row, out)| {
        let (n, oh) = (row / oh_n, row % oh_n);
        let (hs, he) = (start(oh, oh_n, xs.h), end(oh, oh_n, xs.h));
        let mut sums = vec![0i32; xs.c];
        for ow in 0..ow_n {
            let (ws, we) = (start(ow, ow_n, xs.w), end(ow, ow_n, xs.w));
            sums.fill(0);
            for ih in hs..he {
                for iw in ws..we {
                    let at = xs.offset(n, ih, iw);
                    for (s, &v) in sums.iter_mut().zip(&x[at..at + xs.c]) {
                        *s += v as i32;
                    }
                }
            }
            let (kh, kw) = ((he - hs) as f32, (we - ws) as f32);
            let o = &mut out[ow * xs.c..(ow + 1) * xs.c];
            match rounding {
                PoolRounding::ContiguousNchw => {
                    let m = 1.0f32 / kh / kw;
                    for (o, &s) in o.iter_mut().zip(&sums) {
                        *o = (s as f32 * m).round_ties_even().clamp(0.0, 255.0) as u8;
                    }
                }
                PoolRounding::ChannelsLast => {
                    let size = ((he - hs) * (we - ws)) as i32;
                    channels_last(&sums, size, 1.0 / size as f32, zero_point, o)
                }
            }
        }
    });
    Ok((y, ys))
}
