//! Datasets held in memory and their mini-batches: a [`Dataset`] is a stacked input tensor
//! `[N, ...]` with one target per sample; [`Dataset::batches`] cuts it into batches in order or
//! in a seeded shuffled order (a fresh permutation per epoch, as a shuffling DataLoader does).

use qtensor::Tensor;

use super::loss::Targets;
use super::Rng;
use crate::error::shape_err;
use crate::Result;

/// Samples stacked along the first dimension, with their targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub inputs: Tensor,
    pub targets: Targets,
}

impl Dataset {
    /// Checks that inputs and targets hold the same number of samples.
    pub fn new(inputs: Tensor, targets: Targets) -> Result<Dataset> {
        let n = inputs.shape().first().copied().unwrap_or(0);
        let m = match &targets {
            Targets::Classes(c) => c.len(),
            Targets::Values(t) => t.shape().first().copied().unwrap_or(0),
        };
        if n != m || n == 0 {
            return Err(shape_err(
                "dataset",
                format!("{n} inputs and {m} targets; a dataset needs the same non-zero number of each"),
            ));
        }
        Ok(Dataset { inputs, targets })
    }

    pub fn len(&self) -> usize {
        self.inputs.shape()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The samples at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let per: usize = self.inputs.shape()[1..].iter().product();
        let mut data = Vec::with_capacity(indices.len() * per);
        for &i in indices {
            data.extend_from_slice(&self.inputs.data()[i * per..(i + 1) * per]);
        }
        let mut shape = self.inputs.shape().to_vec();
        shape[0] = indices.len();
        let inputs = Tensor::new(shape, data).expect("element count follows the shape");
        let targets = match &self.targets {
            Targets::Classes(c) => Targets::Classes(indices.iter().map(|&i| c[i]).collect()),
            Targets::Values(t) => {
                let per: usize = t.shape()[1..].iter().product();
                let mut v = Vec::with_capacity(indices.len() * per);
                for &i in indices {
                    v.extend_from_slice(&t.data()[i * per..(i + 1) * per]);
                }
                let mut shape = t.shape().to_vec();
                shape[0] = indices.len();
                Targets::Values(Tensor::new(shape, v).expect("element count follows the shape"))
            }
        };
        Dataset { inputs, targets }
    }

    /// Batches of `batch_size` (the last may be smaller). With `shuffle = Some(seed)` the order
    /// is a permutation drawn from `seed` and `epoch`, so every epoch differs and reruns agree.
    pub fn batches(&self, batch_size: usize, shuffle: Option<u64>, epoch: usize) -> Vec<Dataset> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        if let Some(seed) = shuffle {
            let mut rng = Rng::new(seed ^ (epoch as u64).wrapping_mul(0xA076_1D64_78BD_642F));
            rng.shuffle(&mut order);
        }
        order.chunks(batch_size.max(1)).map(|idx| self.select(idx)).collect()
    }

    /// Splits off the last `fraction` of the samples (e.g. a held-out test split).
    pub fn split(&self, fraction: f32) -> (Dataset, Dataset) {
        let n = self.len();
        let cut = n - ((n as f32 * fraction).round() as usize).min(n);
        let first: Vec<usize> = (0..cut).collect();
        let second: Vec<usize> = (cut..n).collect();
        (self.select(&first), self.select(&second))
    }
}
