//! Activations on `u8` tensors as 256-entry lookup tables: each table entry is the PyTorch
//! per-value float computation `quantize(f(dequantize(q)))`, so applying the table gives the
//! integers PyTorch's kernel gives (PyTorch `qhardswish_kernel`, `qsigmoid`, `qtanh`, ... in
//! `QuantizedOpKernels.cpp`; ReLU6 is PyTorch's integer clamp `clamp(q, zp, q(6.0))`).
//!
//! Rounding: dequantize under the [`FloatRule`]; quantize with `inv_scale`, which PyTorch's
//! vector loop computes as `f32(1.0 / scale)` from its f64 output scale. [`ActivationLut::new`]
//! takes that reciprocal from the f32 scale (exact whenever the scale came from an observer);
//! [`ActivationLut::with_inverse`] takes it explicitly for scales that are not f32 values.

use super::{quantize_u8, EltwisePath, FloatRule};
use crate::conv::ActQuant;
use crate::{KernelError, Result};

/// A `u8 -> u8` activation table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivationLut {
    table: [u8; 256],
}

impl ActivationLut {
    /// `table[q] = clamp(zp_out + round_half_even(f(dq(q)) * f32(1.0 / f64(s_out))), 0, 255)`.
    pub fn new(input: ActQuant, output: ActQuant, rule: FloatRule, f: impl Fn(f32) -> f32) -> Result<ActivationLut> {
        Self::with_inverse(input, output.zero_point, (1.0 / output.scale as f64) as f32, rule, f)
    }

    /// [`ActivationLut::new`] with the output reciprocal scale given.
    pub fn with_inverse(
        input: ActQuant,
        out_zero_point: i32,
        out_inv_scale: f32,
        rule: FloatRule,
        f: impl Fn(f32) -> f32,
    ) -> Result<ActivationLut> {
        if !(out_inv_scale.is_finite() && out_inv_scale > 0.0) {
            return Err(KernelError::Param {
                op: "activation table",
                detail: format!("output reciprocal scale {out_inv_scale} must be finite and positive"),
            });
        }
        let mut table = [0u8; 256];
        for (q, t) in table.iter_mut().enumerate() {
            let x = rule.dequantize(q as i32, input.scale, input.zero_point);
            *t = quantize_u8(f(x), out_inv_scale, out_zero_point);
        }
        Ok(ActivationLut { table })
    }

    /// From an explicit table.
    pub fn from_table(table: [u8; 256]) -> ActivationLut {
        ActivationLut { table }
    }

    /// PyTorch quantized ReLU6 / `hardtanh(0, 6)`: output parameters equal the input's,
    /// `y = min(max(q, zp), q(6.0))` with `q(6.0) = quantize_val(scale, zp, 6.0)`.
    pub fn relu6(input: ActQuant) -> ActivationLut {
        let six = input.quantize(6.0) as i32;
        Self::from_fn_int(|q| q.max(input.zero_point).min(six))
    }

    /// `hardswish(x) = x * min(max(x + 3, 0), 6) / 6` (PyTorch `qhardswish_kernel`).
    pub fn hardswish(input: ActQuant, output: ActQuant, rule: FloatRule) -> Result<ActivationLut> {
        Self::new(input, output, rule, |x| x * (x + 3.0).clamp(0.0, 6.0) / 6.0)
    }

    /// `1 / (1 + exp(-x))`.
    pub fn sigmoid(input: ActQuant, output: ActQuant, rule: FloatRule) -> Result<ActivationLut> {
        Self::new(input, output, rule, |x| 1.0 / (1.0 + (-x).exp()))
    }

    pub fn tanh(input: ActQuant, output: ActQuant, rule: FloatRule) -> Result<ActivationLut> {
        Self::new(input, output, rule, f32::tanh)
    }

    /// `x * sigmoid(x)`.
    pub fn silu(input: ActQuant, output: ActQuant, rule: FloatRule) -> Result<ActivationLut> {
        Self::new(input, output, rule, |x| x / (1.0 + (-x).exp()))
    }

    /// Exact GELU `x / 2 * (1 + erf(x / sqrt(2)))` (erf evaluated in f64).
    pub fn gelu(input: ActQuant, output: ActQuant, rule: FloatRule) -> Result<ActivationLut> {
        Self::new(input, output, rule, |x| {
            (0.5 * x as f64 * (1.0 + erf(x as f64 / std::f64::consts::SQRT_2))) as f32
        })
    }

    /// `x` for `x > 0`, else `slope * x`.
    pub fn leaky_relu(input: ActQuant, output: ActQuant, slope: f32, rule: FloatRule) -> Result<ActivationLut> {
        Self::new(input, output, rule, move |x| if x > 0.0 { x } else { x * slope })
    }

    fn from_fn_int(f: impl Fn(i32) -> i32) -> ActivationLut {
        let mut table = [0u8; 256];
        for (q, t) in table.iter_mut().enumerate() {
            *t = f(q as i32).clamp(0, 255) as u8;
        }
        ActivationLut { table }
    }

    pub fn table(&self) -> &[u8; 256] {
        &self.table
    }

    /// `y[i] = table[x[i]]`, on the fastest path.
    pub fn apply(&self, x: &[u8], y: &mut [u8]) -> Result<()> {
        self.apply_on(EltwisePath::best(), x, y)
    }

    /// [`ActivationLut::apply`] on a chosen path: VBMI byte permutes 64 values at a time, or
    /// one value at a time on every other path.
    pub fn apply_on(&self, path: EltwisePath, x: &[u8], y: &mut [u8]) -> Result<()> {
        super::check_same_len("activation table", x.len(), y.len())?;
        path.check("activation table")?;
        match path {
            // SAFETY: `path.check` confirmed AVX-512 F/BW and VBMI; equal lengths.
            #[cfg(target_arch = "x86_64")]
            EltwisePath::Avx512Vbmi => unsafe {
                super::x86_vbmi::map(x, y, &super::x86_vbmi::ByteTable::load(&self.table))
            },
            _ => {
                for (o, &q) in y.iter_mut().zip(x) {
                    *o = self.table[q as usize];
                }
            }
        }
        Ok(())
    }

    /// `x[i] = table[x[i]]`, on the fastest path.
    pub fn apply_in_place(&self, x: &mut [u8]) {
        self.map_in_place(EltwisePath::best(), x);
    }

    /// [`ActivationLut::apply_in_place`] on a chosen path.
    pub fn apply_in_place_on(&self, path: EltwisePath, x: &mut [u8]) -> Result<()> {
        path.check("activation table")?;
        self.map_in_place(path, x);
        Ok(())
    }

    /// `x[i] = table[x[i]]` on `path`, which this CPU runs.
    fn map_in_place(&self, path: EltwisePath, x: &mut [u8]) {
        match path {
            // SAFETY: callers pass a path the CPU runs, so the VBMI path has its features.
            #[cfg(target_arch = "x86_64")]
            EltwisePath::Avx512Vbmi => unsafe {
                super::x86_vbmi::map_in_place(x, &super::x86_vbmi::ByteTable::load(&self.table))
            },
            _ => {
                for q in x {
                    *q = self.table[*q as usize];
                }
            }
        }
    }
}

/// erf with about 1e-15 relative accuracy (series for |x| < 3, continued fraction beyond).
fn erf(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 3.0 {
        // erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1))
        let mut term = a;
        let mut sum = a;
        let x2 = a * a;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -x2 / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc(x) = exp(-x^2) / sqrt(pi) * 1 / (x + 1/2 / (x + 1 / (x + 3/2 / (x + ...))))
        let mut f = a;
        for k in (1..60).rev() {
            f = a + (k as f64 / 2.0) / f;
        }
        1.0 - (-a * a).exp() / (std::f64::consts::PI.sqrt() * f)
    };
    r.copysign(x)
}
