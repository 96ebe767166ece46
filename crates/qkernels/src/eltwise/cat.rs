//! Concatenation along channels of NHWC `u8` tensors with different quantization parameters
//! (PyTorch `quantized::cat`): an input whose parameters equal the output's is copied; any
//! other value becomes `quantize_out((q - zp_in) as f32 * s_in)` (dequantize, then fbgemm
//! `Quantize` with the f32 reciprocal of the output scale, `RequantParams::one`).
//!
//! The portable path looks each value up in a 256-entry table of that formula; the AVX2 and
//! AVX-512 paths evaluate it on 8 or 16 lanes (the subtraction and the product of exact small
//! integers are exact in f32, the rounding is the same half-to-even conversion, the clamp in
//! f32 equals the integer clamp); the AVX-512 VBMI path builds the table with the AVX-512
//! evaluation (on the 256 byte values, once per concatenation) and looks values up 64 at a time
//! with byte permutes. Each input is written as a strided block of rows (one row per pixel) into
//! the output; pixels are split into chunks across rayon threads.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::{quantize_u8, EltwisePath};
use crate::conv::{ActQuant, NhwcShape};
use crate::{KernelError, Result};

/// Output bytes per rayon task (about).
const TASK_BYTES: usize = 1 << 16;

/// Requantization of one input's values to the output parameters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequantParams {
    pub in_scale: f32,
    pub in_zero_point: i32,
    /// `1 / s_out` in f32.
    pub inv_scale: f32,
    pub out_zero_point: i32,
}

impl RequantParams {
    pub fn new(from: ActQuant, to: ActQuant) -> RequantParams {
        RequantParams {
            in_scale: from.scale,
            in_zero_point: from.zero_point,
            inv_scale: 1.0 / to.scale,
            out_zero_point: to.zero_point,
        }
    }

    /// The reference: one value.
    #[inline]
    pub fn one(&self, q: u8) -> u8 {
        quantize_u8(
            qtensor::quantize::dequantize_one(q as i32, self.in_scale, self.in_zero_point),
            self.inv_scale,
            self.out_zero_point,
        )
    }
}

/// Concatenates `inputs` (data, shape, parameters) along channels into parameters `y_q`.
pub fn cat_channels(inputs: &[(&[u8], NhwcShape, ActQuant)], y_q: ActQuant) -> Result<(Vec<u8>, NhwcShape)> {
    cat_channels_on(EltwisePath::best(), inputs, y_q)
}

/// [`cat_channels`] on a chosen path (tests force each one the CPU supports).
pub fn cat_channels_on(
    path: EltwisePath,
    inputs: &[(&[u8], NhwcShape, ActQuant)],
    y_q: ActQuant,
) -> Result<(Vec<u8>, NhwcShape)> {
    let (rows, ys) = ConcatRows::new(path, inputs, y_q)?;
    let c = ys.c;
    if c == 0 || ys.is_empty() {
        return Ok((vec![0u8; ys.len()], ys));
    }
    let pixels_per_task = (TASK_BYTES / c).max(1);
    // The output is written without being zeroed first (it is the size of all the inputs
    // together, so zeroing would cost a third of the memory traffic).
    let mut y: Vec<u8> = Vec::with_capacity(ys.len());
    y.spare_capacity_mut()[..ys.len()]
        .par_chunks_mut(pixels_per_task * c)
        .enumerate()
        .for_each(|(task, out)| rows.write(task * pixels_per_task, out));
    // SAFETY: every chunk holds whole pixels of `c` bytes and `write` stored every channel of
    // each of them: every byte of the first `ys.len()` is initialized.
    unsafe { y.set_len(ys.len()) };
    Ok((y, ys))
}

/// One input of a [`ConcatRows`].
#[derive(Debug)]
struct Part<'a> {
    data: &'a [u8],
    channels: usize,
    /// `None` when the input already has the output's parameters (a plain copy).
    map: Option<RequantParams>,
    /// The 256-entry form of `map` on the paths that look values up (portable, VBMI).
    table: Option<[u8; 256]>,
}

/// The channel concatenation of NHWC inputs, requantized to one set of parameters, produced a
/// run of pixels at a time: [`cat_channels`] writes it out whole, and a convolution reading a
/// concatenation fills its padded input rows from it directly, so the concatenated tensor is
/// never stored.
#[derive(Debug)]
pub(crate) struct ConcatRows<'a> {
    path: EltwisePath,
    parts: Vec<Part<'a>>,
    channels: usize,
}

impl<'a> ConcatRows<'a> {
    /// Checks that the inputs agree on `n, h, w` and hold their shapes' bytes; returns the
    /// source and the concatenation's shape.
    pub(crate) fn new(
        path: EltwisePath,
        inputs: &[(&'a [u8], NhwcShape, ActQuant)],
        y_q: ActQuant,
    ) -> Result<(ConcatRows<'a>, NhwcShape)> {
        path.check("cat")?;
        let first = inputs.first().ok_or(KernelError::Shape {
            op: "cat",
            detail: "no inputs to concatenate".into(),
        })?;
        let (n, h, w) = (first.1.n, first.1.h, first.1.w);
        for (i, (x, xs, _)) in inputs.iter().enumerate() {
            xs.check("cat", "input", x.len())?;
            if (xs.n, xs.h, xs.w) != (n, h, w) {
                return Err(KernelError::Shape {
                    op: "cat",
                    detail: format!("input {i} is {xs:?}; every input needs n, h, w = {n}, {h}, {w}"),
                });
            }
        }
        let parts: Vec<Part<'a>> = inputs
            .iter()
            .map(|&(data, xs, q)| {
                let map = (q != y_q).then(|| RequantParams::new(q, y_q));
                let table = map.and_then(|m| requant_table(path, &m));
                Part {
                    data,
                    channels: xs.c,
                    map,
                    table,
                }
            })
            .collect();
        let channels = parts.iter().map(|p| p.channels).sum();
        let rows = ConcatRows { path, parts, channels };
        Ok((rows, NhwcShape::new(n, h, w, channels)))
    }

    /// Writes the concatenation's pixels `p0..` into `out` (whole pixels of every channel).
    pub(crate) fn write(&self, p0: usize, out: &mut [MaybeUninit<u8>]) {
        let c = self.channels;
        if c == 0 {
            return;
        }
        let rows = out.len() / c;
        let mut at = 0;
        for part in &self.parts {
            let src = &part.data[p0 * part.channels..(p0 + rows) * part.channels];
            let dst = &mut out[at..];
            match self.path {
                EltwisePath::Portable => portable_rows(src, part.channels, dst, c, part.table.as_ref()),
                // SAFETY: `path.check` passed in `new`; `dst` starts at the input's channel
                // offset and holds `(rows - 1) * c + channels` bytes at least, `src`
                // `rows * channels`.
                #[cfg(target_arch = "x86_64")]
                EltwisePath::Avx2 => unsafe {
                    super::x86_avx2::cat_rows(src, part.channels, dst, c, part.map.as_ref())
                },
                #[cfg(target_arch = "x86_64")]
                EltwisePath::Avx512 => unsafe {
                    super::x86_avx512::cat_rows(src, part.channels, dst, c, part.map.as_ref())
                },
                // SAFETY: as above; `new` built the table of every requantized input.
                #[cfg(target_arch = "x86_64")]
                EltwisePath::Avx512Vbmi => unsafe {
                    match &part.table {
                        Some(t) => {
                            super::x86_vbmi::map_rows(src, part.channels, dst, c, &super::x86_vbmi::ByteTable::load(t))
                        }
                        None => super::x86_avx512::cat_rows(src, part.channels, dst, c, None),
                    }
                },
                #[cfg(not(target_arch = "x86_64"))]
                _ => portable_rows(src, part.channels, dst, c, part.table.as_ref()),
            }
            at += part.channels;
        }
    }

    /// Each input's bytes of pixels `p0..p0 + pixels` (what [`ConcatRows::write`] of those
    /// pixels reads), empty past an input's end.
    pub(crate) fn sources(&self, p0: usize, pixels: usize) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.parts.iter().map(move |part| {
            let data: &'a [u8] = part.data;
            data.get(p0 * part.channels..(p0 + pixels) * part.channels)
                .unwrap_or(&[])
        })
    }

    /// [`ConcatRows::write`] into initialized bytes.
    pub(crate) fn write_init(&self, p0: usize, out: &mut [u8]) {
        // SAFETY: `MaybeUninit<u8>` has the layout of `u8`, and `write` stores only initialized
        // bytes, so `out` stays initialized.
        let out = unsafe { &mut *(out as *mut [u8] as *mut [MaybeUninit<u8>]) };
        self.write(p0, out);
    }
}

/// The 256 values of `map` on the paths that look them up ([`RequantParams::one`] of every
/// byte), `None` on the others.
fn requant_table(path: EltwisePath, map: &RequantParams) -> Option<[u8; 256]> {
    match path {
        EltwisePath::Portable => Some(std::array::from_fn(|v| map.one(v as u8))),
        #[cfg(target_arch = "x86_64")]
        EltwisePath::Avx512Vbmi => {
            let bytes: [u8; 256] = std::array::from_fn(|v| v as u8);
            let mut table = [MaybeUninit::<u8>::uninit(); 256];
            // SAFETY: the VBMI path implies AVX-512 F/BW/VL + FMA (checked by the caller's
            // `path.check`); one row of 256 bytes into 256 bytes.
            unsafe { super::x86_avx512::cat_rows(&bytes, 256, &mut table, 256, Some(map)) };
            // `cat_rows` stored all 256 bytes.
            Some(table.map(|b| {
                // SAFETY: initialized by `cat_rows` above.
                unsafe { b.assume_init() }
            }))
        }
        _ => None,
    }
}

/// Writes rows of `width` values from `src` to `dst` every `stride` bytes, copied or mapped
/// through `table`.
fn portable_rows(src: &[u8], width: usize, dst: &mut [MaybeUninit<u8>], stride: usize, table: Option<&[u8; 256]>) {
    if width == 0 {
        return;
    }
    for (row, s) in src.chunks_exact(width).enumerate() {
        let d = &mut dst[row * stride..row * stride + width];
        match table {
            None => d.iter_mut().zip(s).for_each(|(d, &s)| {
                d.write(s);
            }),
            Some(t) => d.iter_mut().zip(s).for_each(|(d, &s)| {
                d.write(t[s as usize]);
            }),
        }
    }
}
