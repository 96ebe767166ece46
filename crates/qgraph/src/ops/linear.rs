//! Linear (`y = x W^T + b`, PyTorch `torch.nn.Linear`) and batched MatMul (`torch.matmul` for
//! operands of rank >= 2, batch dimensions broadcast).

use qtensor::Tensor;

use super::elementwise::broadcast_shape;
use super::gemm::{sgemm, sgemm_weight, MatRef};
use crate::error::shape_err;
use crate::graph::Node;
use crate::op::LinearAttrs;
use crate::Result;

pub fn linear_shape(node: &str, a: &LinearAttrs, x: &[usize]) -> Result<Vec<usize>> {
    match x.last() {
        Some(&k) if k == a.in_features => {
            let mut s = x.to_vec();
            *s.last_mut().expect("non-empty") = a.out_features;
            Ok(s)
        }
        _ => Err(shape_err(
            node,
            format!("Linear expects input [..., {}], got {x:?}", a.in_features),
        )),
    }
}

/// `y = x W^T + b`, then the fused activation.
pub fn linear(node: &Node, a: &LinearAttrs, x: &Tensor, out_shape: Vec<usize>) -> Result<Tensor> {
    let w = node.param("weight")?;
    let (k, n) = (a.in_features, a.out_features);
    let m = x.numel() / k.max(1);
    if w.numel() != n * k {
        return Err(shape_err(
            &node.name,
            format!(
                "Linear weight has shape {:?}, expected [out_features, in_features] = [{n}, {k}]",
                w.shape()
            ),
        ));
    }
    // The bias starts each output's sum (one write pass over `y` instead of zeroing and filling).
    let (mut y, accumulate) = if a.bias {
        let b = node.param("bias")?.data();
        if b.len() != n {
            return Err(shape_err(
                &node.name,
                format!("Linear bias has {} values, expected out_features = {n}", b.len()),
            ));
        }
        let mut y = Vec::with_capacity(m * n);
        for _ in 0..m {
            y.extend_from_slice(b);
        }
        (y, true)
    } else {
        (vec![0.0f32; m * n], false)
    };
    sgemm_weight(x.data(), m, w, n, k, &mut y, accumulate);
    a.activation.apply(&mut y);
    Ok(Tensor::new(out_shape, y)?)
}

pub fn matmul_shape(node: &str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    if a.len() < 2 || b.len() < 2 {
        return Err(shape_err(
            node,
            format!("MatMul needs operands of rank >= 2, got {a:?} and {b:?}"),
        ));
    }
    let (m, k) = (a[a.len() - 2], a[a.len() - 1]);
    let (k2, n) = (b[b.len() - 2], b[b.len() - 1]);
    if k != k2 {
        return Err(shape_err(
            node,
            format!("MatMul inner dimensions differ: {a:?} x {b:?}"),
        ));
    }
    let mut batch = broadcast_shape(node, &a[..a.len() - 2], &b[..b.len() - 2])?;
    batch.extend([m, n]);
    Ok(batch)
}

/// Batched `a @ b`; `out_shape` from [`matmul_shape`].
pub fn matmul(a: &Tensor, b: &Tensor, out_shape: Vec<usize>) -> Tensor {
    let r = out_shape.len();
    let (m, n) = (out_shape[r - 2], out_shape[r - 1]);
    let k = a.shape()[a.rank() - 1];
    let batch = &out_shape[..r - 2];
    let a_off = batch_offsets(batch, &a.shape()[..a.rank() - 2], m * k);
    let b_off = batch_offsets(batch, &b.shape()[..b.rank() - 2], k * n);
    let mut y = vec![0.0f32; out_shape.iter().product()];
    for (i, out) in y.chunks_exact_mut((m * n).max(1)).enumerate().take(a_off.len()) {
        sgemm(
            MatRef::row_major(&a.data()[a_off[i]..], m, k),
            MatRef::row_major(&b.data()[b_off[i]..], k, n),
            out,
            false,
        );
    }
    Tensor::new(out_shape, y).expect("shape from matmul_shape")
}

/// Element offset of each broadcast batch index into an operand with batch shape `own`.
fn batch_offsets(batch: &[usize], own: &[usize], matrix: usize) -> Vec<usize> {
    let total: usize = batch.iter().product();
    let pad = batch.len() - own.len();
    let own_strides = qtensor::strides(own);
    (0..total)
        .map(|mut flat| {
            let mut off = 0;
            for d in (0..batch.len()).rev() {
                let idx = flat % batch[d];
                flat /= batch[d];
                if d >= pad && own[d - pad] != 1 {
                    off += idx * own_strides[d - pad];
                }
            }
            off * matrix
        })
        .collect()
}
