//! Concatenation along channels of NHWC `u8` tensors with different quantization parameters
//! (PyTorch `quantized::cat`): an input whose parameters equal the output's is copied; any
//! other value becomes `quantize_out((q - zp_in) as f32 * s_in)` (dequantize, then fbgemm
//! `Quantize` with the f32 reciprocal of the output scale, [`RequantParams::one`]).
//!
//! The portable path looks each value up in a 256-entry table of that formula; the vector paths
//! evaluate it on 8 or 16 lanes (the subtraction and the product of exact small integers are
//! exact in f32, the rounding is the same half-to-even conversion, the clamp in f32 equals the
//! integer clamp). Each input is written as a strided block of rows (one row per pixel) into
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
    let c: usize = inputs.iter().map(|i| i.1.c).sum();
    let ys = NhwcShape::new(n, h, w, c);
    if c == 0 || ys.is_empty() {
        return Ok((vec![0u8; ys.len()], ys));
    }
    let maps: Vec<Option<RequantParams>> = inputs
        .iter()
        .map(|&(_, _, q)| (q != y_q).then(|| RequantParams::new(q, y_q)))
        .collect();
    let tables: Vec<Option<[u8; 256]>> = match path {
        EltwisePath::Portable => maps
            .iter()
            .map(|m| m.map(|m| std::array::from_fn(|v| m.one(v as u8))))
            .collect(),
        _ => vec![None; inputs.len()],
    };
    let pixels_per_task = (TASK_BYTES / c).max(1);
    // The output is written without being zeroed first (it is the size of all the inputs
    // together, so zeroing would cost a third of the memory traffic).
    let mut y: Vec<u8> = Vec::with_capacity(ys.len());
    y.spare_capacity_mut()[..ys.len()]
        .par_chunks_mut(pixels_per_task * c)
        .enumerate()
        .for_each(|(task, out)| {
            let p0 = task * pixels_per_task;
            let rows = out.len() / c;
            let mut at = 0;
            for (i, (x, xs, _)) in inputs.iter().enumerate() {
                let src = &x[p0 * xs.c..(p0 + rows) * xs.c];
                let dst = &mut out[at..];
                match path {
                    EltwisePath::Portable => portable_rows(src, xs.c, dst, c, tables[i].as_ref()),
                    // SAFETY: `path.check` passed; `dst` starts at the input's channel offset
                    // and holds `(rows - 1) * c + xs.c` bytes at least, `src` `rows * xs.c`.
                    #[cfg(target_arch = "x86_64")]
                    EltwisePath::Avx2 => unsafe { super::x86_avx2::cat_rows(src, xs.c, dst, c, maps[i].as_ref()) },
                    #[cfg(target_arch = "x86_64")]
                    EltwisePath::Avx512 => unsafe { super::x86_avx512::cat_rows(src, xs.c, dst, c, maps[i].as_ref()) },
                    #[cfg(not(target_arch = "x86_64"))]
                    _ => portable_rows(src, xs.c, dst, c, tables[i].as_ref()),
                }
                at += xs.c;
            }
        });
    // SAFETY: every chunk holds whole pixels of `c` bytes, and for each pixel the inputs wrote
    // channels `at..at + xs.c` for consecutive `at` from 0 with widths summing to `c`: every
    // byte of the first `ys.len()` is initialized.
    unsafe { y.set_len(ys.len()) };
    Ok((y, ys))
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
