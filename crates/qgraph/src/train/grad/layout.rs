//! Backward of the data-movement and broadcasting ops: Add sums the output gradient over the
//! dimensions an input was broadcast along; Cat splits it along the concatenation dim.

/// Sums `dy` (of shape `out`) down to `shape`, which broadcasts to `out` (NumPy rules).
pub fn sum_to_shape(dy: &[f32], out: &[usize], shape: &[usize]) -> Vec<f32> {
    if out == shape {
        return dy.to_vec();
    }
    let own = qtensor::strides(shape);
    let pad = out.len() - shape.len();
    let strides: Vec<usize> = (0..out.len())
        .map(|i| {
            if i < pad || shape[i - pad] == 1 {
                0
            } else {
                own[i - pad]
            }
        })
        .collect();
    let mut dx = vec![0.0f32; shape.iter().product()];
    let mut idx = vec![0usize; out.len()];
    let mut off = 0usize;
    for &g in dy {
        dx[off] += g;
        for d in (0..out.len()).rev() {
            idx[d] += 1;
            off += strides[d];
            if idx[d] < out[d] {
                break;
            }
            off -= strides[d] * out[d];
            idx[d] = 0;
        }
    }
    dx
}

/// Splits the gradient of a concatenation along `dim` back into its inputs' shapes.
pub fn cat_backward(dy: &[f32], out: &[usize], dim: usize, input_shapes: &[&[usize]]) -> Vec<Vec<f32>> {
    let outer: usize = out[..dim].iter().product();
    let mut grads: Vec<Vec<f32>> = input_shapes
        .iter()
        .map(|s| Vec::with_capacity(s.iter().product()))
        .collect();
    let mut at = 0;
    for _ in 0..outer {
        for (g, s) in grads.iter_mut().zip(input_shapes) {
            let block: usize = s[dim..].iter().product();
            g.extend_from_slice(&dy[at..at + block]);
            at += block;
        }
    }
    grads
}
