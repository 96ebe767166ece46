//! Losses with their gradients, as PyTorch's defaults (`reduction="mean"`):
//! cross-entropy from logits `[N, C]`, `loss = mean_n(logsumexp(z_n) - z_n[t_n])`,
//! `dz = (softmax(z) - onehot(t)) / N`; mean squared error `loss = mean((y - t)^2)`,
//! `dy = 2 (y - t) / numel`.

use qtensor::Tensor;

use crate::error::shape_err;
use crate::Result;

/// What a loss compares the model output with.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// Class indices, one per row (cross-entropy).
    Classes(Vec<usize>),
    /// Values of the output's shape (MSE).
    Values(Tensor),
}

/// The training objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    CrossEntropy,
    Mse,
}

impl Loss {
    /// The loss value and its gradient with respect to `output`.
    pub fn forward(&self, output: &Tensor, targets: &Targets) -> Result<(f32, Tensor)> {
        match (self, targets) {
            (Loss::CrossEntropy, Targets::Classes(t)) => cross_entropy(output, t),
            (Loss::Mse, Targets::Values(t)) => mse(output, t),
            _ => Err(shape_err(
                "loss",
                "cross-entropy needs class targets and MSE needs value targets",
            )),
        }
    }
}

pub fn cross_entropy(logits: &Tensor, targets: &[usize]) -> Result<(f32, Tensor)> {
    let shape = logits.shape();
    if shape.len() != 2 || shape[0] != targets.len() || shape[0] == 0 {
        return Err(shape_err(
            "cross_entropy",
            format!(
                "expects logits [N, C] with N = {} targets, got {shape:?}",
                targets.len()
            ),
        ));
    }
    let (n, c) = (shape[0], shape[1]);
    if let Some(&bad) = targets.iter().find(|&&t| t >= c) {
        return Err(shape_err(
            "cross_entropy",
            format!("target class {bad} is out of range for {c} classes"),
        ));
    }
    logits.check_finite("logits")?;
    let mut grad = vec![0.0f32; n * c];
    let mut total = 0.0f64;
    for (r, (row, g)) in logits.data().chunks_exact(c).zip(grad.chunks_exact_mut(c)).enumerate() {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = row.iter().map(|&z| ((z - max) as f64).exp()).sum();
        let lse = max as f64 + sum.ln();
        total += lse - row[targets[r]] as f64;
        for (k, (gv, &z)) in g.iter_mut().zip(row).enumerate() {
            let p = ((z as f64 - lse).exp()) as f32;
            *gv = (p - if k == targets[r] { 1.0 } else { 0.0 }) / n as f32;
        }
    }
    Ok(((total / n as f64) as f32, Tensor::new(shape.to_vec(), grad)?))
}

pub fn mse(output: &Tensor, target: &Tensor) -> Result<(f32, Tensor)> {
    if output.shape() != target.shape() || output.numel() == 0 {
        return Err(shape_err(
            "mse",
            format!(
                "output {:?} and target {:?} must have the same non-empty shape",
                output.shape(),
                target.shape()
            ),
        ));
    }
    let n = output.numel() as f32;
    let mut total = 0.0f64;
    let grad = output
        .data()
        .iter()
        .zip(target.data())
        .map(|(&y, &t)| {
            total += ((y - t) as f64).powi(2);
            2.0 * (y - t) / n
        })
        .collect();
    Ok(((total / n as f64) as f32, Tensor::new(output.shape().to_vec(), grad)?))
}

/// Share of rows whose largest logit is the target class.
pub fn accuracy(logits: &Tensor, targets: &[usize]) -> f32 {
    let c = logits.shape().last().copied().unwrap_or(1).max(1);
    let correct = logits
        .data()
        .chunks_exact(c)
        .zip(targets)
        .filter(|(row, &t)| argmax(row) == t)
        .count();
    correct as f32 / targets.len().max(1) as f32
}

/// Index of the first maximum.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}
