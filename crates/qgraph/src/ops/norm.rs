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
    let (alpha, beta) = batch_norm_affine(node, a)?;
    let c = a.num_features;
    let inner: usize = x.shape()[2..].iter().product();
    let mut y = x.clone();
    for (i, plane) in y.data_mut().chunks_exact_mut(inner.max(1)).enumerate() {
        let ch = i % c;
        for v in plane.iter_mut() {
            *v = *v * alpha[ch] + beta[ch];
        }
        a.activation.apply(plane);
    }
    Ok(y)
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
    for row in y.data_mut().chunks_exact_mut(d) {
        let mean = lane_sum(row, |v| v) / d as f32;
        let var = lane_sum(row, |v| (v - mean) * (v - mean)) / d as f32;
        let inv = 1.0 / (var + a.eps).sqrt();
        match (w, b) {
            (Some(w), Some(b)) => {
                for ((v, &wi), &bi) in row.iter_mut().zip(w).zip(b) {
                    *v = (*v - mean) * inv * wi + bi;
                }
            }
            _ => row.iter_mut().for_each(|v| *v = (*v - mean) * inv),
        }
    }
    Ok(())
}

/// `sum f(x_i)` in 16 independent f32 partial sums (vectorizes without reassociation flags and
/// keeps the rounding error near that of a pairwise sum).
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
