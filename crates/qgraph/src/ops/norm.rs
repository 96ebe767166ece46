//! BatchNorm (inference, running statistics) and LayerNorm.
//!
//! BatchNorm as PyTorch's CPU inference kernel: `alpha = w / sqrt(var + eps)`,
//! `y = x * alpha + (b - mean * alpha)` per channel. LayerNorm: biased variance over the
//! trailing `normalized_shape` (two passes in f32: mean, then mean squared deviation), `y = (x - mean) / sqrt(var + eps) * w + b`.

use qtensor::Tensor;

use crate::error::shape_err;
use crate::graph::Node;
use crate::op::{BatchNormAttrs, LayerNormAttrs};
use crate::Result;

pub fn batch_norm_shape(node: &str, a: &BatchNormAttrs, x: &[usize]) -> Result<Vec<usize>> {
    let ok = match a.dims {
        1 => (x.len() == 2 || x.len() == 3) && x[1] == a.num_features,
        _ => x.len() == 4 && x[1] == a.num_features,
    };
    if ok {
        Ok(x.to_vec())
    } else {
        let want = if a.dims == 1 {
            "[N, C] or [N, C, L]"
        } else {
            "[N, C, H, W]"
        };
        Err(shape_err(
            node,
            format!(
                "BatchNorm{}d expects {want} with C = {}, got {x:?}",
                a.dims, a.num_features
            ),
        ))
    }
}

/// Per-channel `(alpha, beta)` so that `y = x * alpha + beta`.
pub fn batch_norm_affine(node: &Node, a: &BatchNormAttrs) -> Result<(Vec<f32>, Vec<f32>)> {
    let (w, b) = (node.param("weight")?.data(), node.param("bias")?.data());
    let (mean, var) = (node.param("running_mean")?.data(), node.param("running_var")?.data());
    let alpha: Vec<f32> = (0..a.num_features).map(|c| w[c] / (var[c] + a.eps).sqrt()).collect();
    let beta = (0..a.num_features).map(|c| b[c] - mean[c] * alpha[c]).collect();
    Ok((alpha, beta))
}

pub fn batch_norm(node: &Node, a: &BatchNormAttrs, x: &Tensor) -> Result<Tensor> {
    let mut y = x.clone();
    batch_norm_inplace(node, a, &mut y)?;
    Ok(y)
}

/// [`batch_norm`] over the input's own buffer (shape checked by the caller).
pub fn batch_norm_inplace(node: &Node, a: &BatchNormAttrs, y: &mut Tensor) -> Result<()> {
    let (alpha, beta) = batch_norm_affine(node, a)?;
    let c = a.num_features;
    let inner: usize = y.shape()[2..].iter().product();
    for (i, plane) in y.data_mut().chunks_exact_mut(inner.max(1)).enumerate() {
        let ch = i % c;
        for v in plane.iter_mut() {
            *v = *v * alpha[ch] + beta[ch];
        }
        a.activation.apply(plane);
    }
    Ok(())
}

pub fn layer_norm_shape(node: &str, a: &LayerNormAttrs, x: &[usize]) -> Result<Vec<usize>> {
    let k = a.normalized_shape.len();
    if k == 0 || x.len() < k || x[x.len() - k..] != a.normalized_shape[..] {
        return Err(shape_err(
            node,
            format!(
                "LayerNorm over {:?} needs an input ending in those sizes, got {x:?}",
                a.normalized_shape
            ),
        ));
    }
    Ok(x.to_vec())
}

pub fn layer_norm(node: &Node, a: &LayerNormAttrs, x: &Tensor) -> Result<Tensor> {
    let mut y = x.clone();
    layer_norm_inplace(node, a, &mut y)?;
    Ok(y)
}

/// [`layer_norm`] overwriting its input.
pub fn layer_norm_inplace(node: &Node, a: &LayerNormAttrs, y: &mut Tensor) -> Result<()> {
    let d: usize = a.normalized_shape.iter().product();
    let (w, b) = if a.affine {
        (Some(node.param("weight")?.data()), Some(node.param("bias")?.data()))
    } else {
        (None, None)
    };
    // Rows go eight at a time through each step (means, variances, normalization): each row's
    // arithmetic is unchanged, but the serial folds of one row's lane sums are followed by the
    // next row's independent work, which the CPU overlaps with them.
    const ROWS: usize = 8;
    let rows = y.data_mut();
    super::vmath::with_simd(
        #[inline(always)]
        || {
            for block in rows.chunks_mut(ROWS * d) {
                let mut mean = [0.0f32; ROWS];
                for (row, mean) in block.chunks_exact(d).zip(&mut mean) {
                    *mean = lane_sum(row, |v| v) / d as f32;
                }
                let mut inv = [0.0f32; ROWS];
                for ((row, inv), &mean) in block.chunks_exact(d).zip(&mut inv).zip(&mean) {
                    let var = lane_sum(row, |v| (v - mean) * (v - mean)) / d as f32;
                    *inv = 1.0 / (var + a.eps).sqrt();
                }
                for ((row, &mean), &inv) in block.chunks_exact_mut(d).zip(&mean).zip(&inv) {
                    match (w, b) {
                        (Some(w), Some(b)) => {
                            for ((v, &wi), &bi) in row.iter_mut().zip(w).zip(b) {
                                *v = (*v - mean) * inv * wi + bi;
                            }
                        }
                        _ => row.iter_mut().for_each(|v| *v = (*v - mean) * inv),
                    }
                }
            }
        },
    );
    Ok(())
}

/// `sum f(x_i)` in 16 independent f32 partial sums (vectorizes without reassociation flags and
/// keeps the rounding error near that of a pairwise sum).
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += f(c[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::Op;

    /// LayerNorm written out for the build's baseline instruction set, in the order the op
    /// computes (16 lane sums, tail, mean; the same for the variance).
    fn portable(x: &[f32], d: usize, w: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
        let sum = |row: &[f32], f: &dyn Fn(f32) -> f32| {
            let mut acc = [0.0f32; 16];
            let chunks = row.chunks_exact(16);
            let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
            for c in chunks {
                for l in 0..16 {
                    acc[l] += f(c[l]);
                }
            }
            acc.iter().sum::<f32>() + tail
        };
        let mut y = x.to_vec();
        for row in y.chunks_exact_mut(d) {
            let mean = sum(row, &|v| v) / d as f32;
            let var = sum(row, &|v| (v - mean) * (v - mean)) / d as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for (i, v) in row.iter_mut().enumerate() {
                *v = (*v - mean) * inv * w[i] + b[i];
            }
        }
        y
    }

    #[test]
    fn layer_norm_matches_the_portable_order_bit_for_bit() {
        let (rows, d) = (13, 53);
        let x: Vec<f32> = (0..rows * d).map(|i| ((i * 7919) % 997) as f32 / 40.0 - 12.0).collect();
        let w: Vec<f32> = (0..d).map(|i| 0.5 + (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..d).map(|i| (i % 5) as f32 * -0.2).collect();
        let attrs = LayerNormAttrs {
            normalized_shape: vec![d],
            eps: 1e-12,
            affine: true,
        };
        let mut node = Node {
            name: "norm".into(),
            op: Op::LayerNorm(attrs.clone()),
            inputs: vec![],
            params: Default::default(),
            qconfig: None,
        };
        node.params
            .insert("weight".into(), Tensor::new([d], w.clone()).unwrap());
        node.params.insert("bias".into(), Tensor::new([d], b.clone()).unwrap());
        let mut y = Tensor::new([rows, d], x.clone()).unwrap();
        layer_norm_inplace(&node, &attrs, &mut y).unwrap();
        assert_eq!(y.data(), &portable(&x, d, &w, &b, 1e-12)[..]);
    }
}
