//! Data movement: Cat, Flatten, Reshape, Permute (PyTorch semantics, negative dims count from the
//! end).

use qtensor::Tensor;

use crate::error::shape_err;
use crate::Result;

/// Maps a possibly negative `dim` into `0..rank`.
pub fn normalize_dim(node: &str, dim: isize, rank: usize) -> Result<usize> {
    let d = if dim < 0 { dim + rank as isize } else { dim };
    if d < 0 || d >= rank as isize {
        return Err(shape_err(node, format!("dim {dim} is out of range for rank {rank}")));
    }
    Ok(d as usize)
}

pub fn cat_shape(node: &str, dim: isize, ins: &[&[usize]]) -> Result<Vec<usize>> {
    let first = ins
        .first()
        .ok_or_else(|| shape_err(node, "Cat needs at least one input"))?;
    let d = normalize_dim(node, dim, first.len())?;
    let mut out = first.to_vec();
    for s in &ins[1..] {
        let same_rest = s.len() == first.len() && (0..s.len()).all(|i| i == d || s[i] == first[i]);
        if !same_rest {
            return Err(shape_err(
                node,
                format!("Cat along dim {dim}: {s:?} does not match {first:?} outside that dim"),
            ));
        }
        out[d] += s[d];
    }
    Ok(out)
}

pub fn cat(xs: &[&Tensor], dim: usize, out_shape: Vec<usize>) -> Tensor {
    let outer: usize = out_shape[..dim].iter().product();
    let mut y = Vec::with_capacity(out_shape.iter().product());
    for o in 0..outer {
        for x in xs {
            let block: usize = x.shape()[dim..].iter().product();
            y.extend_from_slice(&x.data()[o * block..(o + 1) * block]);
        }
    }
    Tensor::new(out_shape, y).expect("shape from cat_shape")
}

pub fn flatten_shape(node: &str, start: isize, end: isize, x: &[usize]) -> Result<Vec<usize>> {
    if x.is_empty() {
        return Ok(vec![1]);
    }
    let (s, e) = (normalize_dim(node, start, x.len())?, normalize_dim(node, end, x.len())?);
    if s > e {
        return Err(shape_err(
            node,
            format!("Flatten start_dim {start} comes after end_dim {end}"),
        ));
    }
    let mut out = x[..s].to_vec();
    out.push(x[s..=e].iter().product());
    out.extend_from_slice(&x[e + 1..]);
    Ok(out)
}

pub fn reshape_shape(node: &str, shape: &[isize], x: &[usize]) -> Result<Vec<usize>> {
    let n: usize = x.iter().product();
    let infer: Vec<usize> = (0..shape.len()).filter(|&i| shape[i] == -1).collect();
    if infer.len() > 1 || shape.iter().any(|&d| d < -1) {
        return Err(shape_err(
            node,
            format!("Reshape target {shape:?}: at most one -1 and no other negatives"),
        ));
    }
    let known: usize = shape.iter().filter(|&&d| d >= 0).map(|&d| d as usize).product();
    let mut out: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    if let Some(&i) = infer.first() {
        if n.checked_rem(known) != Some(0) {
            return Err(shape_err(node, format!("cannot reshape {x:?} into {shape:?}")));
        }
        out[i] = n / known;
    }
    if out.iter().product::<usize>() != n {
        return Err(shape_err(
            node,
            format!("cannot reshape {x:?} ({n} elements) into {shape:?}"),
        ));
    }
    Ok(out)
}

pub fn permute_shape(node: &str, dims: &[usize], x: &[usize]) -> Result<Vec<usize>> {
    let mut seen = vec![false; x.len()];
    if dims.len() != x.len()
        || dims
            .iter()
            .any(|&d| d >= x.len() || std::mem::replace(&mut seen[d], true))
    {
        return Err(shape_err(
            node,
            format!("Permute {dims:?} is not a permutation of the {} dims of {x:?}", x.len()),
        ));
    }
    Ok(dims.iter().map(|&d| x[d]).collect())
}

pub fn permute(x: &Tensor, dims: &[usize]) -> Tensor {
    let shape: Vec<usize> = dims.iter().map(|&d| x.shape()[d]).collect();
    let src_strides = x.strides();
    let strides: Vec<usize> = dims.iter().map(|&d| src_strides[d]).collect();
    let n = x.numel();
    let mut y = Vec::with_capacity(n);
    let mut idx = vec![0usize; shape.len()];
    let mut off = 0usize;
    for _ in 0..n {
        y.push(x.data()[off]);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            off += strides[d];
            if idx[d] < shape[d] {
                break;
            }
            off -= strides[d] * shape[d];
            idx[d] = 0;
        }
    }
    Tensor::new(shape, y).expect("permuted shape has the same element count")
}
