//! u8 x s8 GEMM with i32 accumulation and fused epilogues (the fbgemm / VNNI convention).
//!
//! `C[M, N] = epilogue(A[M, K] (u8, row-major) x W[N, K]^T (i8, PyTorch Linear layout))`.
//! Weights are packed once into [`PackedWeights`]; activations are read in place. Every path
//! (portable reference, AVX2, AVX-512 VNNI, AVX-VNNI, AMX-INT8) computes the same i32 sums and
//! applies the same [`Epilogue`] with the same f32 operations, so all of them write identical
//! bits for every thread count. The path is chosen at run time: [`GemmConfig::path`], else the
//! `QFORGE_KERNEL` environment variable (`reference|avx2|avx512vnni|avxvnni|amx`), else the
//! fastest one this CPU has ([`available_paths`] lists them, best last).
//!
//! Dynamic quantization (PyTorch dynamic Linear) starts from f32 activations:
//! [`gemm_f32_dynamic`] scans their range, quantizes them per tensor or per row and runs the
//! GEMM with the [`Dequantize`] epilogue, splitting every step over the same threads and
//! reusing the caller's [`DynamicScratch`] and output buffers.
//!
//! Overflow bound: each corrected product `(a - a_zp) * (w - w_zp)` has magnitude at most
//! `255 * 255 = 65025`, so K up to [`MAX_K`] `= floor((2^31 - 1) / 65025) = 33025` can never
//! overflow the i32 accumulator, zero-point corrections included (intermediate sums wrap, the
//! final value is exact). Larger K is rejected with [`KernelError::AccumulatorOverflow`].
//!
//! ```
//! use qkernels::gemm::{gemm_u8s8, ActivationQuant, Epilogue, GemmConfig, GemmOutput, PackedWeights, Requantize, WeightQuant};
//!
//! // y = x W^T + b for a 2 x 3 input and 4 output channels.
//! let x: Vec<u8> = vec![130, 128, 126, 140, 120, 128];
//! let w: Vec<i8> = vec![1, 2, 3, -1, -2, -3, 10, 0, -10, 127, -128, 5];
//! let packed = PackedWeights::new(&w, 4, 3, WeightQuant::PerTensor { scale: 0.01, zero_point: 0 }).unwrap();
//! let bias = [0.1f32, 0.0, -0.1, 0.05];
//! let mut y = vec![0u8; 2 * 4];
//! let epilogue = Epilogue::Requantize(Requantize { bias: Some(&bias), out_scale: 0.02, out_zero_point: 128, relu: false, clamp: None });
//! let act = ActivationQuant::PerTensor { scale: 0.05, zero_point: 128 };
//! gemm_u8s8(&x, 2, &act, &packed, &epilogue, GemmOutput::U8(&mut y), &GemmConfig::default()).unwrap();
//! // Row 0 of x is (2, 0, -2) around its zero point: channel 0 gives (2 - 6) * 0.05 * 0.01 + 0.1.
//! let expected = ((2.0 - 6.0) * 0.05 * 0.01 + 0.1f32) / 0.02 + 128.0;
//! assert_eq!(y[0], expected.round() as u8);
//! ```

mod dispatch;
mod driver;
mod dynamic;
mod dynamic_gemm;
mod epilogue;
mod pack;
mod reference;

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512_vnni;
#[cfg(target_arch = "x86_64")]
mod avxvnni;

pub use dispatch::{available_paths, best_path, KernelPath};
#[cfg(target_arch = "x86_64")]
pub(crate) use driver::row_tiles;
pub use dynamic::{finite_min_max, quantize_dynamic_per_tensor};
pub use dynamic_gemm::{gemm_f32_dynamic, gemm_f32_dynamic_vec, DynamicGranularity, DynamicScratch};
pub(crate) use epilogue::RequantStage;
pub use epilogue::{ActivationQuant, Dequantize, Epilogue, GemmOutput, Requantize};
pub use pack::{PackedWeights, WeightQuant, K_GROUP, PANEL_COLS};

use crate::{KernelError, Result};

/// Largest K whose zero-point-corrected sums always fit in i32 (see the module docs).
pub const MAX_K: usize = (i32::MAX as usize) / (255 * 255);

/// Options of one GEMM call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GemmConfig {
    /// Force a path (tests use this instead of the process-wide `QFORGE_KERNEL`).
    pub path: Option<KernelPath>,
    /// Upper bound on parallel tasks; `None` uses every thread of the current rayon pool.
    pub threads: Option<usize>,
}

impl GemmConfig {
    /// A config that forces `path`.
    pub fn with_path(path: KernelPath) -> GemmConfig {
        GemmConfig {
            path: Some(path),
            threads: None,
        }
    }
}

/// The rate of a bare `vpdpbusd zmm` stream on the calling thread's core, in GOP/s (2 x 64
/// products per instruction), best of three runs of about 30 million instructions; `None`
/// without AVX-512 VNNI. No u8 x s8 kernel can beat it, so a kernel's GOP/s over this figure,
/// measured right next to it, is its efficiency with the host's current clock factored out.
pub fn vnni_chain_gops() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if KernelPath::Avx512Vnni.is_available() {
        const STEPS: u64 = 2_000_000;
        let best = (0..3)
            .map(|_| {
                let t = std::time::Instant::now();
                // SAFETY: AVX-512 VNNI was detected above.
                unsafe { avx512_vnni::dot_chain(STEPS) };
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        return Some(STEPS as f64 * 16.0 * 128.0 / best / 1e9);
    }
    None
}

pub(crate) fn check_k(op: &'static str, k: usize) -> Result<()> {
    if k > MAX_K {
        return Err(KernelError::AccumulatorOverflow { op, k, max: MAX_K });
    }
    Ok(())
}

/// `out = epilogue(A x W^T)` for u8 activations `a` (`[m, K]` row-major, K = `weights.k()`).
/// Returns the path that ran. Errors on shape mismatches, invalid parameters, or a forced path
/// this CPU lacks; see [`Epilogue`] for the formulas.
pub fn gemm_u8s8(
    a: &[u8],
    m: usize,
    act: &ActivationQuant<'_>,
    weights: &PackedWeights,
    epilogue: &Epilogue<'_>,
    out: GemmOutput<'_>,
    config: &GemmConfig,
) -> Result<KernelPath> {
    run_u8s8(a, m, act, weights, epilogue, None, out, config)
}

/// [`gemm_u8s8`] with a [`Requantize`] epilogue whose constants were built earlier for the
/// same activation scale (the convolutions keep them between calls): the same bits.
pub(crate) fn gemm_u8s8_prepared(
    a: &[u8],
    m: usize,
    act: &ActivationQuant<'_>,
    weights: &PackedWeights,
    stage: &RequantStage,
    out: &mut [u8],
    config: &GemmConfig,
) -> Result<KernelPath> {
    run_u8s8(
        a,
        m,
        act,
        weights,
        &Epilogue::I32,
        Some(stage),
        GemmOutput::U8(out),
        config,
    )
}

/// [`gemm_u8s8`], with the requantize stage taken from `prepared` when given (then `epilogue`
/// is not read).
#[allow(clippy::too_many_arguments)]
fn run_u8s8(
    a: &[u8],
    m: usize,
    act: &ActivationQuant<'_>,
    weights: &PackedWeights,
    epilogue: &Epilogue<'_>,
    prepared: Option<&RequantStage>,
    mut out: GemmOutput<'_>,
    config: &GemmConfig,
) -> Result<KernelPath> {
    let k = weights.k();
    if m == 0 {
        return Err(KernelError::Shape {
            op: "gemm_u8s8",
            detail: "M = 0: the activation matrix has no rows".into(),
        });
    }
    if a.len() != m * k {
        return Err(KernelError::Shape {
            op: "gemm_u8s8",
            detail: format!("activations [{m}, {k}] need {} values, got {}", m * k, a.len()),
        });
    }
    check_k("gemm_u8s8", k)?;
    let path = dispatch::select(config.path)?;
    let plan = epilogue::EpiloguePlan::new(a, m, act, weights, epilogue, prepared, &mut out)?;
    tracing::debug!(path = path.name(), m, k, n = weights.n(), "gemm_u8s8");
    driver::run(path, &plan, a, m, weights, config.threads);
    Ok(path)
}

/// [`gemm_u8s8`] for s8 activations: `a + 128` is u8 and `a_zp + 128` its zero point, so the
/// corrected products (and therefore every output) are unchanged.
pub fn gemm_s8s8(
    a: &[i8],
    m: usize,
    act: &ActivationQuant<'_>,
    weights: &PackedWeights,
    epilogue: &Epilogue<'_>,
    out: GemmOutput<'_>,
    config: &GemmConfig,
) -> Result<KernelPath> {
    let shifted: Vec<u8> = a.iter().map(|&v| (v as u8) ^ 0x80).collect();
    let check = |z: i32| qtensor::qparams::check_zero_point(z, qtensor::DType::QInt8).map_err(KernelError::from);
    match *act {
        ActivationQuant::PerTensor { scale, zero_point } => {
            check(zero_point)?;
            let act = ActivationQuant::PerTensor {
                scale,
                zero_point: zero_point + 128,
            };
            gemm_u8s8(&shifted, m, &act, weights, epilogue, out, config)
        }
        ActivationQuant::PerRow { scales, zero_points } => {
            zero_points.iter().try_for_each(|&z| check(z))?;
            let zps: Vec<i32> = zero_points.iter().map(|&z| z + 128).collect();
            let act = ActivationQuant::PerRow {
                scales,
                zero_points: &zps,
            };
            gemm_u8s8(&shifted, m, &act, weights, epilogue, out, config)
        }
    }
}
