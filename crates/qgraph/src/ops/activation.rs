//! Element-wise activations and Softmax, with PyTorch's definitions:
//! ReLU6 `min(max(x, 0), 6)`, Hardswish `x * relu6(x + 3) / 6`, SiLU `x * sigmoid(x)`,
//! GELU `0.5 x (1 + erf(x / sqrt 2))` or its tanh form, Softmax `exp(x - max) / sum`.

use qtensor::Tensor;

use crate::op::GeluApprox;

/// Applies `f` to every element.
pub fn map(x: &Tensor, f: impl Fn(f32) -> f32) -> Tensor {
    let mut y = x.clone();
    y.data_mut().iter_mut().for_each(|v| *v = f(*v));
    y
}

pub fn relu(x: f32) -> f32 {
    x.max(0.0)
}

pub fn relu6(x: f32) -> f32 {
    x.clamp(0.0, 6.0)
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

pub fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

pub fn hardswish(x: f32) -> f32 {
    x * (x + 3.0).clamp(0.0, 6.0) / 6.0
}

/// Exact-erf GELU, one element at a time (`libm::erff`); the graph op uses the vectorized
/// [`super::vmath::gelu_erf`].
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

pub fn gelu_tanh(x: f32) -> f32 {
    let k = (2.0f32 / std::f32::consts::PI).sqrt();
    0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
}

pub fn gelu(x: &Tensor, approx: GeluApprox) -> Tensor {
    let mut y = x.clone();
    gelu_inplace(y.data_mut(), approx);
    y
}

/// Elements above which [`gelu_inplace`] splits its input over rayon tasks (each element is
/// computed alone, so the split does not change any value).
const PARALLEL_ELEMENTS: usize = 1 << 16;

/// [`gelu`] overwriting its input.
pub fn gelu_inplace(x: &mut [f32], approx: GeluApprox) {
    match approx {
        GeluApprox::Erf if x.len() >= PARALLEL_ELEMENTS => {
            use rayon::prelude::*;
            x.par_chunks_mut(PARALLEL_ELEMENTS / 4)
                .for_each(super::vmath::gelu_erf_inplace)
        }
        GeluApprox::Erf => super::vmath::gelu_erf_inplace(x),
        GeluApprox::Tanh => x.iter_mut().for_each(|v| *v = gelu_tanh(*v)),
    }
}

/// Softmax along axis `dim` (already normalized to `0..rank`).
pub fn softmax(x: &Tensor, dim: usize) -> Tensor {
    let shape = x.shape();
    let len = shape[dim];
    let inner: usize = shape[dim + 1..].iter().product();
    let outer: usize = shape[..dim].iter().product();
    let mut y = x.clone();
    if inner == 1 && len > 0 {
        y.data_mut().chunks_exact_mut(len).for_each(super::vmath::softmax_row);
        return y;
    }
    let data = y.data_mut();
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| (o * len + k) * inner + i;
            let max = (0..len).map(|k| data[at(k)]).fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f32;
            for k in 0..len {
                let e = (data[at(k)] - max).exp();
                data[at(k)] = e;
                sum += e;
            }
            for k in 0..len {
                data[at(k)] /= sum;
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_gelu_gives_the_same_bits_on_any_thread_count() {
        let x: Vec<f32> = (0..3 * PARALLEL_ELEMENTS + 5)
            .map(|i| ((i * 7919) % 2001) as f32 / 250.0 - 4.0)
            .collect();
        let want: Vec<f32> = x.iter().map(|&v| super::super::vmath::gelu_erf(v)).collect();
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut y = x.clone();
            pool.install(|| gelu_inplace(&mut y, GeluApprox::Erf));
            assert_eq!(y, want, "{threads} threads");
        }
    }
}
