//! Concatenation along channels of NHWC `u8` tensors with different quantization parameters
//! (PyTorch `quantized::cat`): an input whose parameters equal the output's is copied; any
//! other value becomes `quantize_out((q - zp_in) as f32 * s_in)` (dequantize, then fbgemm
//! `Quantize` with the f32 reciprocal of the output scale), through a 256-entry table per input.

use rayon::prelude::*;

use super::quantize_u8;
use crate::conv::{ActQuant, NhwcShape};
use crate::{KernelError, Result};

/// Concatenates `inputs` (data, shape, parameters) along channels into parameters `y_q`.
pub fn cat_channels(inputs: &[(&[u8], NhwcShape, ActQuant)], y_q: ActQuant) -> Result<(Vec<u8>, NhwcShape)> {
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
    let inv = 1.0 / y_q.scale;
    let tables: Vec<Option<[u8; 256]>> = inputs
        .iter()
        .map(|&(_, _, q)| {
            (q != y_q).then(|| {
                std::array::from_fn(|v| {
                    quantize_u8(
                        qtensor::quantize::dequantize_one(v as i32, q.scale, q.zero_point),
                        inv,
                        y_q.zero_point,
                    )
                })
            })
        })
        .collect();
    let mut y = vec![0u8; ys.len()];
    y.par_chunks_mut(c).enumerate().for_each(|(p, out)| {
        let mut at = 0;
        for ((x, xs, _), table) in inputs.iter().zip(&tables) {
            let src = &x[p * xs.c..(p + 1) * xs.c];
            let dst = &mut out[at..at + xs.c];
            match table {
                None => dst.copy_from_slice(src),
                Some(t) => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = t[s as usize]),
            }
            at += xs.c;
        }
    });
    Ok((y, ys))
}
