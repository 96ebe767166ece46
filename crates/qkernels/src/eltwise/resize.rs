//! Upsampling of NHWC `u8` tensors (PyTorch quantized `upsample_nearest2d` and
//! `upsample_bilinear2d`, output parameters equal to the input's).
//!
//! Nearest: `src = min(floor(dst * (in / out)), in - 1)` with the f32 ratio.
//! Bilinear (`align_corners = false`, PyTorch `qupsample_bilinear2d_nhwc_kernel`):
//! `r = in / out` (f32), `src = max(r * (dst + 0.5) - 0.5, 0)`, `i0 = floor(src)`,
//! `i1 = i0 + (i0 < in - 1)`, `l1 = src - i0`, `l0 = 1 - l1`, and per channel
//! `v = l0h * (l0w * x00 + l1w * x01) + l1h * (l0w * x10 + l1w * x11) - zp` (f32, in that
//! order), `y = clamp(zp + round_half_even(v), 0, 255)`.

use rayon::prelude::*;

use crate::conv::NhwcShape;
use crate::{KernelError, Result};

fn check(op: &'static str, x: &[u8], xs: NhwcShape, out: (usize, usize)) -> Result<NhwcShape> {
    xs.check(op, "input", x.len())?;
    if out.0 == 0 || out.1 == 0 {
        return Err(KernelError::Param {
            op,
            detail: format!("output size {out:?} must be positive"),
        });
    }
    Ok(NhwcShape::new(xs.n, out.0, out.1, xs.c))
}

/// Nearest-neighbour upsampling (or downsampling) to `out = (oh, ow)`.
pub fn upsample_nearest2d(x: &[u8], xs: NhwcShape, out: (usize, usize)) -> Result<(Vec<u8>, NhwcShape)> {
    let ys = check("upsample_nearest2d", x, xs, out)?;
    let src = |d: usize, i: usize, o: usize| ((d as f32 * (i as f32 / o as f32)).floor() as usize).min(i - 1);
    let mut y = vec![0u8; ys.len()];
    y.par_chunks_mut(ys.w * ys.c).enumerate().for_each(|(row, o)| {
        let (n, oh) = (row / ys.h, row % ys.h);
        let ih = src(oh, xs.h, ys.h);
        for ow in 0..ys.w {
            let at = xs.offset(n, ih, src(ow, xs.w, ys.w));
            o[ow * xs.c..(ow + 1) * xs.c].copy_from_slice(&x[at..at + xs.c]);
        }
    });
    Ok((y, ys))
}

/// Bilinear upsampling with `align_corners = false` to `out = (oh, ow)`. See the module docs.
pub fn upsample_bilinear2d(
    x: &[u8],
    xs: NhwcShape,
    zero_point: i32,
    out: (usize, usize),
) -> Result<(Vec<u8>, NhwcShape)> {
    let ys = check("upsample_bilinear2d", x, xs, out)?;
    let axis = |d: usize, i: usize, o: usize| {
        let r = i as f32 / o as f32;
        let s = (r * (d as f32 + 0.5) - 0.5).max(0.0);
        let i0 = s as usize;
        let step = usize::from(i0 < i - 1);
        let l1 = s - i0 as f32;
        (i0, i0 + step, 1.0 - l1, l1)
    };
    let mut y = vec![0u8; ys.len()];
    let zp = zero_point as f32;
    y.par_chunks_mut(ys.w * ys.c).enumerate().for_each(|(row, o)| {
        let (n, oh) = (row / ys.h, row % ys.h);
        let (h0, h1, l0h, l1h) = axis(oh, xs.h, ys.h);
        for ow in 0..ys.w {
            let (w0, w1, l0w, l1w) = axis(ow, xs.w, ys.w);
            let (p00, p01) = (xs.offset(n, h0, w0), xs.offset(n, h0, w1));
            let (p10, p11) = (xs.offset(n, h1, w0), xs.offset(n, h1, w1));
            for c in 0..xs.c {
                let v = l0h * (l0w * x[p00 + c] as f32 + l1w * x[p01 + c] as f32)
                    + l1h * (l0w * x[p10 + c] as f32 + l1w * x[p11 + c] as f32)
                    - zp;
                o[ow * xs.c + c] = super::quantize_u8(v, 1.0, zero_point);
            }
        }
    });
    Ok((y, ys))
}
