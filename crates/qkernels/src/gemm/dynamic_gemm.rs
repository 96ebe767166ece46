//! Dynamic GEMM from f32 activations: `out = dequantize(quantize(x) x W^T) + bias`, the whole of
//! PyTorch's dynamic Linear (fbgemm `fbgemm_linear_dynamic`) in one call.
//!
//! Per call the activations are quantized to u8 with parameters chosen from their range by
//! fbgemm `ChooseQuantizationParams` (qmin 0, qmax 255, optional reduce_range): one range for
//! the whole input ([`DynamicGranularity::PerTensor`], PyTorch parity) or one per row
//! ([`DynamicGranularity::PerRow`], per token). Then [`super::gemm_u8s8`] runs with the
//! [`Dequantize`] epilogue. The range scan and the quantization are split over the threads the
//! GEMM uses (min and max are exact whatever the order, each element is quantized alone), so
//! the result has the same bits as the serial [`super::quantize_dynamic_per_tensor`] followed
//! by the GEMM, for every thread count. The caller keeps a [`DynamicScratch`] to reuse the
//! quantized activations between calls and passes the f32 output it wants written.

use super::dynamic::{finite_min_max, finite_min_max_parallel};
use super::{gemm_u8s8, ActivationQuant, Dequantize, Epilogue, GemmConfig, GemmOutput, KernelPath, PackedWeights};
use crate::{KernelError, Result};
use qtensor::quantize::{quantize_into, Affine};
use qtensor::DType;

/// Elements below which splitting the quantization over threads costs more than it saves
/// (about 1 us of work per task).
pub(crate) const MIN_ELEMENTS_PER_TASK: usize = 1 << 14;

/// Tasks worth using for an element-wise pass over `len` values.
pub(crate) fn element_tasks(len: usize, threads: usize) -> usize {
    threads.clamp(1, (len / MIN_ELEMENTS_PER_TASK).max(1))
}

/// Which activation values share quantization parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DynamicGranularity {
    /// One `(scale, zero_point)` from the min and max of the whole input (PyTorch dynamic Linear).
    #[default]
    PerTensor,
    /// One `(scale, zero_point)` per row from that row's min and max.
    PerRow,
}

/// Buffers a dynamic GEMM needs besides its output, kept by the caller across calls so no call
/// allocates once they have grown to the largest input.
#[derive(Debug, Default, Clone)]
pub struct DynamicScratch {
    quantized: Vec<u8>,
    scales: Vec<f32>,
    zero_points: Vec<i32>,
}

impl DynamicScratch {
    /// Empty buffers; the first call sizes them.
    pub fn new() -> DynamicScratch {
        DynamicScratch::default()
    }

    /// The u8 activations of the last call, `[M, K]` row-major.
    pub fn quantized(&self) -> &[u8] {
        &self.quantized
    }
}

/// `out[M, N] = fma(f32(c), a_scale * w_scale[j], bias[j])` (then ReLU if asked) where `c` is
/// the zero-point-corrected i32 product of `x` (`[m, K]` f32, row-major) quantized per call as
/// `granularity` says, and the packed weights. PyTorch fbgemm dynamic Linear for
/// [`DynamicGranularity::PerTensor`] with `reduce_range = true`. Returns the path that ran.
///
/// Errors on shape mismatches, non-finite input (naming the first bad index) and invalid
/// parameters, as [`gemm_u8s8`] does.
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32_dynamic(
    x: &[f32],
    m: usize,
    granularity: DynamicGranularity,
    reduce_range: bool,
    weights: &PackedWeights,
    epilogue: &Dequantize<'_>,
    out: &mut [f32],
    scratch: &mut DynamicScratch,
    config: &GemmConfig,
) -> Result<KernelPath> {
    dynamic_into(
        x,
        m,
        granularity,
        reduce_range,
        weights,
        epilogue,
        GemmOutput::F32(out),
        scratch,
        config,
    )
}

/// [`gemm_f32_dynamic`] into a new `[m, N]` vector, which is never zeroed first (the GEMM
/// writes every element once). The values are those [`gemm_f32_dynamic`] writes.
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32_dynamic_vec(
    x: &[f32],
    m: usize,
    granularity: DynamicGranularity,
    reduce_range: bool,
    weights: &PackedWeights,
    epilogue: &Dequantize<'_>,
    scratch: &mut DynamicScratch,
    config: &GemmConfig,
) -> Result<(Vec<f32>, KernelPath)> {
    let len = m * weights.n();
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let path = dynamic_into(
        x,
        m,
        granularity,
        reduce_range,
        weights,
        epilogue,
        GemmOutput::F32Uninit(&mut out.spare_capacity_mut()[..len]),
        scratch,
        config,
    )?;
    // SAFETY: the call succeeded, and a successful GEMM writes every one of the `len` = M x N
    // output elements (each is finished by exactly one tile of the grid, which covers the whole
    // output; the reference path visits every element).
    unsafe { out.set_len(len) };
    Ok((out, path))
}

#[allow(clippy::too_many_arguments)]
fn dynamic_into(
    x: &[f32],
    m: usize,
    granularity: DynamicGranularity,
    reduce_range: bool,
    weights: &PackedWeights,
    epilogue: &Dequantize<'_>,
    out: GemmOutput<'_>,
    scratch: &mut DynamicScratch,
    config: &GemmConfig,
) -> Result<KernelPath> {
    let k = weights.k();
    if m == 0 || x.len() != m * k {
        return Err(KernelError::Shape {
            op: "gemm_f32_dynamic",
            detail: format!("activations [{m}, {k}] need {} values (M >= 1), got {}", m * k, x.len()),
        });
    }
    let threads = config.threads.unwrap_or_else(rayon::current_num_threads).max(1);
    scratch.quantized.resize(x.len(), 0);
    let xq = &mut scratch.quantized[..];
    let act = match granularity {
        DynamicGranularity::PerTensor => {
            let (lo, hi) = finite_min_max_parallel(x, threads)?;
            let (scale, zero_point) = qtensor::choose_dynamic_qparams(lo, hi, 0, 255, reduce_range)?;
            let affine = Affine::new(scale, zero_point, DType::QUInt8)?;
            let tasks = element_tasks(x.len(), threads);
            if tasks == 1 {
                quantize_into(x, xq, &affine)?;
            } else {
                // Whole 64-value vectors per task, each short enough that qtensor does not split
                // it again; each element is quantized on its own.
                let chunk = x
                    .len()
                    .div_ceil(tasks)
                    .next_multiple_of(64)
                    .min(qtensor::quantize::PARALLEL_THRESHOLD - 64);
                let parts = x.chunks(chunk).zip(xq.chunks_mut(chunk)).collect();
                crate::team::map_items(threads, parts, &|(src, dst)| quantize_into(src, dst, &affine))
                    .into_iter()
                    .collect::<std::result::Result<(), _>>()?;
            }
            ActivationQuant::PerTensor { scale, zero_point }
        }
        DynamicGranularity::PerRow => {
            scratch.scales.resize(m, 0.0);
            scratch.zero_points.resize(m, 0);
            // Eight rows at a time through each step (ranges, parameters, quantization): every
            // row gets the same values as on its own, but one row's serial steps (the range
            // reductions, the parameter arithmetic) overlap with the next rows' work.
            const ROWS: usize = 8;
            let quantize_rows = |src: &[f32], dst: &mut [u8], scales: &mut [f32], zps: &mut [i32]| -> Result<()> {
                let blocks = src
                    .chunks(ROWS * k)
                    .zip(dst.chunks_mut(ROWS * k))
                    .zip(scales.chunks_mut(ROWS))
                    .zip(zps.chunks_mut(ROWS));
                for (((src, dst), scales), zps) in blocks {
                    let mut ranges = [(0.0f32, 0.0f32); ROWS];
                    for (row, range) in src.chunks_exact(k).zip(&mut ranges) {
                        *range = finite_min_max(row)?;
                    }
                    for ((&(lo, hi), s), z) in ranges.iter().zip(scales.iter_mut()).zip(zps.iter_mut()) {
                        (*s, *z) = qtensor::choose_dynamic_qparams(lo, hi, 0, 255, reduce_range)?;
                    }
                    for (((row, qrow), &s), &z) in src
                        .chunks_exact(k)
                        .zip(dst.chunks_exact_mut(k))
                        .zip(&*scales)
                        .zip(&*zps)
                    {
                        quantize_into(row, qrow, &Affine::new(s, z, DType::QUInt8)?)?;
                    }
                }
                Ok(())
            };
            let tasks = element_tasks(x.len(), threads).min(m);
            let rows = m.div_ceil(tasks);
            let result = if tasks == 1 {
                quantize_rows(x, xq, &mut scratch.scales, &mut scratch.zero_points)
            } else {
                let parts = x
                    .chunks(rows * k)
                    .zip(xq.chunks_mut(rows * k))
                    .zip(scratch.scales.chunks_mut(rows))
                    .zip(scratch.zero_points.chunks_mut(rows))
                    .collect();
                crate::team::map_items(threads, parts, &|(((src, dst), s), z)| quantize_rows(src, dst, s, z))
                    .into_iter()
                    .collect::<Result<()>>()
            };
            if let Err(e) = result {
                // Name the first non-finite value of the whole input, not of one row.
                finite_min_max(x)?;
                return Err(e);
            }
            ActivationQuant::PerRow {
                scales: &scratch.scales,
                zero_points: &scratch.zero_points,
            }
        }
    };
    gemm_u8s8(
        &scratch.quantized,
        m,
        &act,
        weights,
        &Epilogue::Dequantize(*epilogue),
        out,
        config,
    )
}
