//! BatchNorm in training mode (PyTorch `batch_norm` with `training=True`): per channel over the
//! batch and spatial positions, `mean`, biased `var`, `y = (x - mean) / sqrt(var + eps) * w + b`;
//! the running statistics move by `running = (1 - momentum) * running + momentum * batch`, with
//! the unbiased variance `var * n / (n - 1)` as PyTorch does.
//!
//! Backward, with `xhat = (x - mean) * invstd` and `g = dy * w`:
//! `dx = invstd / n * (n g - sum g - xhat sum(g xhat))`, `dw = sum dy xhat`, `db = sum dy`.

/// PyTorch's default BatchNorm momentum.
pub const BN_MOMENTUM: f32 = 0.1;

/// What the training forward keeps for backward.
#[derive(Debug, Clone)]
pub struct BatchNormSaved {
    pub xhat: Vec<f32>,
    pub invstd: Vec<f32>,
}

/// `(sum a, sum a * b)` over one plane in eight f32 lanes (vectorized), returned in f64: planes
/// are short, and channels add the planes up in f64.
fn plane_sums(a: &[f32], b: &[f32]) -> (f64, f64) {
    let mut s = [0.0f32; 8];
    let mut p = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            s[l] += x[l];
            p[l] += x[l] * y[l];
        }
    }
    let mut sum: f64 = s.iter().map(|&v| v as f64).sum();
    let mut prod: f64 = p.iter().map(|&v| v as f64).sum();
    for (&x, &y) in ar.iter().zip(br) {
        sum += x as f64;
        prod += x as f64 * y as f64;
    }
    (sum, prod)
}

/// Per-channel batch mean and biased variance of an `[N, C, ...]` tensor (f64 sums).
pub fn batch_stats(x: &[f32], c: usize, inner: usize) -> (Vec<f32>, Vec<f32>) {
    let mut sum = vec![0.0f64; c];
    let mut sq = vec![0.0f64; c];
    for (i, plane) in x.chunks_exact(inner.max(1)).enumerate() {
        let ch = i % c;
        let (s, q) = plane_sums(plane, plane);
        sum[ch] += s;
        sq[ch] += q;
    }
    let count = (x.len() / c.max(1)).max(1) as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();
    let var = sq
        .iter()
        .zip(&mean)
        .map(|(q, m)| (q / count - m * m).max(0.0) as f32)
        .collect();
    (mean.iter().map(|&m| m as f32).collect(), var)
}

/// Training-mode forward: normalizes with the batch statistics, updates `running_mean` and
/// `running_var`, returns the output and what backward needs.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train(
    x: &[f32],
    c: usize,
    inner: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    momentum: f32,
    running_mean: &mut [f32],
    running_var: &mut [f32],
) -> (Vec<f32>, BatchNormSaved) {
    let (mean, var) = batch_stats(x, c, inner);
    let count = x.len() / c.max(1);
    let unbias = if count > 1 {
        count as f32 / (count - 1) as f32
    } else {
        1.0
    };
    for ch in 0..c {
        running_mean[ch] = (1.0 - momentum) * running_mean[ch] + momentum * mean[ch];
        running_var[ch] = (1.0 - momentum) * running_var[ch] + momentum * var[ch] * unbias;
    }
    let invstd: Vec<f32> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let mut xhat = vec![0.0f32; x.len()];
    let mut y = vec![0.0f32; x.len()];
    for (i, (plane, (h, out))) in x
        .chunks_exact(inner.max(1))
        .zip(
            xhat.chunks_exact_mut(inner.max(1))
                .zip(y.chunks_exact_mut(inner.max(1))),
        )
        .enumerate()
    {
        let ch = i % c;
        for ((&v, hv), o) in plane.iter().zip(h.iter_mut()).zip(out.iter_mut()) {
            *hv = (v - mean[ch]) * invstd[ch];
            *o = *hv * gamma[ch] + beta[ch];
        }
    }
    (y, BatchNormSaved { xhat, invstd })
}

/// Training-mode backward; `dgamma` and `dbeta` accumulate.
pub fn batch_norm_train_backward(
    saved: &BatchNormSaved,
    dy: &[f32],
    c: usize,
    inner: usize,
    gamma: &[f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) -> Vec<f32> {
    let inner = inner.max(1);
    let mut sum_dy = vec![0.0f64; c];
    let mut sum_dy_xhat = vec![0.0f64; c];
    for (i, (g, h)) in dy.chunks_exact(inner).zip(saved.xhat.chunks_exact(inner)).enumerate() {
        let ch = i % c;
        let (s, p) = plane_sums(g, h);
        sum_dy[ch] += s;
        sum_dy_xhat[ch] += p;
    }
    for ch in 0..c {
        dgamma[ch] += sum_dy_xhat[ch] as f32;
        dbeta[ch] += sum_dy[ch] as f32;
    }
    let count = (dy.len() / c.max(1)).max(1) as f64;
    let mut dx = vec![0.0f32; dy.len()];
    for (i, ((g, h), out)) in dy
        .chunks_exact(inner)
        .zip(saved.xhat.chunks_exact(inner))
        .zip(dx.chunks_exact_mut(inner))
        .enumerate()
    {
        let ch = i % c;
        let k = gamma[ch] * saved.invstd[ch];
        let mean_dy = (sum_dy[ch] / count) as f32;
        let mean_dy_xhat = (sum_dy_xhat[ch] / count) as f32;
        for ((&gv, &hv), o) in g.iter().zip(h).zip(out.iter_mut()) {
            *o = k * (gv - mean_dy - hv * mean_dy_xhat);
        }
    }
    dx
}
