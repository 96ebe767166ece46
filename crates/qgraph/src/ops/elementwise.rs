//! Binary element-wise ops (Add, Mul) with NumPy/PyTorch broadcasting: shapes are aligned at
//! the right and a size-1 dimension stretches to match.

use qtensor::Tensor;

use crate::error::shape_err;
use crate::Result;

pub fn broadcast_shape(node: &str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let r = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| if i + s.len() >= r { s[i + s.len() - r] } else { 1 };
    (0..r)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            _ => Err(shape_err(node, format!("shapes {a:?} and {b:?} do not broadcast"))),
        })
        .collect()
}

/// Strides of `shape` seen through the broadcast output shape (0 where it is stretched).
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let own = qtensor::strides(shape);
    let pad = out.len() - shape.len();
    (0..out.len())
        .map(|i| {
            if i < pad || shape[i - pad] == 1 {
                0
            } else {
                own[i - pad]
            }
        })
        .collect()
}

/// `a[i] = f(a[i], b[i])` for operands of one shape (the output of [`binary`] when the shapes
/// are equal, written over `a`).
pub fn binary_same_shape_inplace(a: &mut [f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    super::vmath::with_simd(
        #[inline(always)]
        || {
            for (x, &y) in a.iter_mut().zip(b) {
                *x = f(*x, y);
            }
        },
    );
}

pub fn binary(a: &Tensor, b: &Tensor, out_shape: Vec<usize>, f: impl Fn(f32, f32) -> f32) -> Tensor {
    if a.shape() == b.shape() {
        let y = a.data().iter().zip(b.data()).map(|(&x, &y)| f(x, y)).collect();
        return Tensor::new(out_shape, y).expect("same shape");
    }
    let n: usize = out_shape.iter().product();
    let (sa, sb) = (
        broadcast_strides(a.shape(), &out_shape),
        broadcast_strides(b.shape(), &out_shape),
    );
    let mut y = Vec::with_capacity(n);
    let mut idx = vec![0usize; out_shape.len()];
    let (mut ia, mut ib) = (0usize, 0usize);
    for _ in 0..n {
        y.push(f(a.data()[ia], b.data()[ib]));
        // Odometer increment over the output index, moving both input offsets.
        for d in (0..out_shape.len()).rev() {
            idx[d] += 1;
            ia += sa[d];
            ib += sb[d];
            if idx[d] < out_shape[d] {
                break;
            }
            ia -= sa[d] * out_shape[d];
            ib -= sb[d] * out_shape[d];
            idx[d] = 0;
        }
    }
    Tensor::new(out_shape, y).expect("shape from broadcast_shape")
}
