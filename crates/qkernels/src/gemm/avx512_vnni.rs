//! AVX-512 VNNI path: a register-blocked microkernel of 8 rows x 48 columns (24 zmm
//! accumulators). Per 4-element K group it loads three 64-byte packed weight rows (16 columns
//! x 4 bytes each), broadcasts 4 activation bytes per row and issues `vpdpbusd` (u8 x s8 ->
//! i32, 4 products per lane, non-saturating). The epilogue runs 16 lanes at a time with masks
//! for ragged edges, performing the reference epilogue's f32 operations in the same order; the
//! dequantizing epilogue (dynamic Linear) finishes a tile straight from its accumulator
//! registers when the whole reduction fits one pass, so its sums never go through memory.

use super::driver::{row_tiles, BlockKernel};
use super::epilogue::{EpiloguePlan, OutKind, Stage, ROUND_LIMIT};
use super::pack::{PackedWeights, K_GROUP, PANEL_COLS, PANEL_ROW_BYTES};
use crate::prefetch::Prefetch;
use std::arch::x86_64::*;
use std::ops::Range;

const MR: usize = 8;
const PANELS: usize = 3;
const NR: usize = PANELS * PANEL_COLS;

/// One register tile's i32 sums, row-major `MR x NR`.
#[repr(C, align(64))]
pub(crate) struct Tile(pub(crate) [[i32; NR]; MR]);

pub(crate) struct Avx512Vnni;

impl BlockKernel for Avx512Vnni {
    const MR: usize = MR;
    const NR: usize = NR;

    unsafe fn block(plan: &EpiloguePlan, a: &[u8], w: &PackedWeights, rows: Range<usize>, cols: Range<usize>) {
        block_avx512(plan, a, w, rows, cols)
    }
}

/// K groups per cache block. Up to 2048 groups (K = 8192) the whole reduction runs in one
/// pass: the 48-column weight micro-panel (at most 384 KiB) streams from L2 at 192 bytes per
/// 24 `vpdpbusd` (12 cycles), well within L2 bandwidth, and each register tile is finished
/// straight from its sums. Measured on Sapphire Rapids this beats L1-sized K blocks (128
/// groups) by 5-15 %, which pay for partial sums stored and reloaded between blocks.
const KC_GROUPS: usize = 2048;

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
unsafe fn block_avx512(plan: &EpiloguePlan, a: &[u8], w: &PackedWeights, rows: Range<usize>, cols: Range<usize>) {
    let k = w.k();
    let groups = k.div_ceil(K_GROUP);
    let k_blocks = groups.div_ceil(KC_GROUPS);
    let kc = groups.div_ceil(k_blocks);
    let stride = w.panel_stride();
    let a0 = a.as_ptr();
    if k_blocks == 1 {
        // Whole K at once: finish each register tile straight away, in registers when the
        // epilogue dequantizes (the sums never go through memory), else through `tile`.
        let mut tile = Tile([[0; NR]; MR]);
        let tiles = (rows.end - rows.start).div_ceil(MR);
        for j0 in cols.clone().step_by(NR) {
            let nc = NR.min(cols.end - j0);
            let b = w.panel_ptr(j0 / PANEL_COLS);
            // The next micro-panel (panels are contiguous, `stride` apart), in this block or
            // the first of the next column block, which this thread usually runs next.
            let next_cols = (w.n().saturating_sub(j0 + NR)).min(NR);
            let next_bytes = next_cols.div_ceil(PANEL_COLS) * stride;
            let next = b.wrapping_add(nc.div_ceil(PANEL_COLS) * stride);
            for (t, (i0, mr)) in row_tiles(rows.clone(), MR).enumerate() {
                let prefetch = Prefetch::share(next, next_bytes, t, tiles, groups);
                let a_tile = a0.add(i0 * k);
                if let Stage::Dequantize { w_scales, bias, relu } = &plan.stage {
                    let sink = Sink::Dequantize(DequantizeTile {
                        plan,
                        w_scales,
                        bias,
                        relu: *relu,
                        i0,
                        j0,
                        nc,
                    });
                    tile_kernel(mr, nc, a_tile, k, 0, groups, b, stride, sink, prefetch);
                    continue;
                }
                let c = tile.0.as_mut_ptr() as *mut i32;
                let sink = Sink::Sums {
                    c,
                    ldc: NR,
                    accumulate: false,
                };
                tile_kernel(mr, nc, a_tile, k, 0, groups, b, stride, sink, prefetch);
                for r in 0..mr {
                    finish_row_avx512(plan, i0 + r, j0, &tile.0[r][..nc]);
                }
            }
        }
        return;
    }
    // K blocks: partial sums of the whole block live in `sums` (row-major, `ldc` columns).
    let ldc = (cols.end - cols.start).div_ceil(NR) * NR;
    let mut sums = vec![0i32; (rows.end - rows.start) * ldc];
    for kb in 0..k_blocks {
        let (g0, g1) = (kb * kc, ((kb + 1) * kc).min(groups));
        for j0 in cols.clone().step_by(NR) {
            let nc = NR.min(cols.end - j0);
            let b = w.panel_ptr(j0 / PANEL_COLS);
            for (i0, mr) in row_tiles(rows.clone(), MR) {
                let c = sums.as_mut_ptr().add((i0 - rows.start) * ldc + (j0 - cols.start));
                let sink = Sink::Sums {
                    c,
                    ldc,
                    accumulate: kb > 0,
                };
                tile_kernel(mr, nc, a0.add(i0 * k), k, g0, g1, b, stride, sink, Prefetch::NONE);
            }
        }
    }
    for i in rows.clone() {
        let row = &sums[(i - rows.start) * ldc..];
        finish_row_avx512(plan, i, cols.start, &row[..cols.end - cols.start]);
    }
}

/// Runs the register tile of `mr` rows x `nc` columns (rounded up to whole panels).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
#[inline]
unsafe fn tile_kernel(
    mr: usize,
    nc: usize,
    a: *const u8,
    k: usize,
    g0: usize,
    g1: usize,
    b: *const i8,
    stride: usize,
    sink: Sink<'_>,
    prefetch: Prefetch,
) {
    let panels = nc.div_ceil(PANEL_COLS);
    macro_rules! dispatch {
        ($($r:literal),*) => {
            match (mr, panels) {
                $(
                    ($r, 1) => microkernel::<$r, 1>(a, k, g0, g1, b, stride, sink, prefetch),
                    ($r, 2) => microkernel::<$r, 2>(a, k, g0, g1, b, stride, sink, prefetch),
                    ($r, 3) => microkernel::<$r, 3>(a, k, g0, g1, b, stride, sink, prefetch),
                )*
                _ => unreachable!("tile of {mr} rows x {panels} panels"),
            }
        };
    }
    dispatch!(1, 2, 3, 4, 5, 6, 7, 8);
}

/// Reads the 4 activation bytes of K group `g` (zero beyond K) as one little-endian u32.
#[inline(always)]
unsafe fn group_bytes(row: *const u8, k: usize, g: usize) -> i32 {
    let start = g * K_GROUP;
    if start + K_GROUP <= k {
        // In bounds: the row has k bytes.
        (row.add(start) as *const i32).read_unaligned()
    } else {
        let mut v = 0u32;
        for t in 0..k - start {
            v |= (*row.add(start + t) as u32) << (8 * t);
        }
        v as i32
    }
}

/// Where a register tile's sums go.
#[derive(Clone, Copy)]
enum Sink<'a> {
    /// Stored as i32 rows `ldc` apart at `c` (added to what is there when `accumulate`).
    Sums { c: *mut i32, ldc: usize, accumulate: bool },
    /// Finished in registers by the dequantizing epilogue and written to the output.
    Dequantize(DequantizeTile<'a>),
}

/// A register tile finished by [`Stage::Dequantize`]: output rows `i0..i0 + R`, columns
/// `j0..j0 + nc`.
#[derive(Clone, Copy)]
struct DequantizeTile<'a> {
    plan: &'a EpiloguePlan<'a>,
    w_scales: &'a [f32],
    bias: &'a [f32],
    relu: bool,
    i0: usize,
    j0: usize,
    nc: usize,
}

/// `sum over K groups g0..g1 of a[r][4g..4g+4] . w[col][4g..4g+4]` for `R` rows (stride `k`)
/// and `P` panels, handed to `sink`.
///
/// Safety: `a` points at `R` rows of `k` bytes; `b` at `P` panels `stride` bytes apart, each
/// of `ceil(k / 4)` 64-byte aligned rows; a [`Sink::Sums`] `c` points at `R` rows of `P * 16`
/// i32, `ldc` apart; a [`Sink::Dequantize`] tile lies inside the output, `P = ceil(nc / 16)`,
/// and no other task writes it. `prefetch` only names addresses to prefetch (a hint: never
/// dereferenced, any value is safe).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
#[inline]
unsafe fn microkernel<const R: usize, const P: usize>(
    a: *const u8,
    k: usize,
    g0: usize,
    g1: usize,
    b: *const i8,
    stride: usize,
    sink: Sink<'_>,
    prefetch: Prefetch,
) {
    let mut acc = [[_mm512_setzero_si512(); P]; R];
    if let Sink::Sums {
        c,
        ldc,
        accumulate: true,
    } = sink
    {
        for (r, acc_r) in acc.iter_mut().enumerate() {
            for (p, v) in acc_r.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(c.add(r * ldc + p * PANEL_COLS) as *const __m512i);
            }
        }
    }
    let full_end = g1.min(k / K_GROUP);
    let mut bp = b.add(g0 * PANEL_ROW_BYTES);
    let mut prefetch = prefetch;
    for g in g0..full_end {
        prefetch.step();
        let mut wv = [_mm512_setzero_si512(); P];
        for (p, v) in wv.iter_mut().enumerate() {
            *v = _mm512_load_si512(bp.add(p * stride) as *const __m512i);
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_epi32((a.add(r * k + g * K_GROUP) as *const i32).read_unaligned());
            for p in 0..P {
                acc_r[p] = _mm512_dpbusd_epi32(acc_r[p], av, wv[p]);
            }
        }
        bp = bp.add(PANEL_ROW_BYTES);
    }
    if full_end < g1 {
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_epi32(group_bytes(a.add(r * k), k, full_end));
            for (p, acc_rp) in acc_r.iter_mut().enumerate() {
                let wv = _mm512_load_si512(bp.add(p * stride) as *const __m512i);
                *acc_rp = _mm512_dpbusd_epi32(*acc_rp, av, wv);
            }
        }
    }
    match sink {
        Sink::Sums { c, ldc, .. } => {
            for (r, acc_r) in acc.iter().enumerate() {
                for (p, v) in acc_r.iter().enumerate() {
                    _mm512_storeu_si512(c.add(r * ldc + p * PANEL_COLS) as *mut __m512i, *v);
                }
            }
        }
        Sink::Dequantize(t) => dequantize_tile::<R, P>(&acc, &t),
    }
}

/// [`finish_row_avx512`]'s dequantizing stage applied to a tile still in registers: the same
/// integer and f32 operations in the same order per element, with the per-column constants
/// loaded once per tile instead of once per row.
///
/// Safety: as [`microkernel`] for a [`Sink::Dequantize`] tile.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
#[inline]
unsafe fn dequantize_tile<const R: usize, const P: usize>(acc: &[[__m512i; P]; R], t: &DequantizeTile<'_>) {
    let plan = t.plan;
    let has_row_sums = !plan.row_sums.is_empty();
    let mut masks = [0 as __mmask16; P];
    let mut col_offsets = [_mm512_setzero_si512(); P];
    let mut w_zps = [_mm512_setzero_si512(); P];
    let mut w_scales = [_mm512_setzero_ps(); P];
    let mut bias = [_mm512_setzero_ps(); P];
    for p in 0..P {
        // P = ceil(nc / 16), so every panel has at least one live lane; masked loads never
        // touch columns past the tile.
        let lanes = (t.nc - p * PANEL_COLS).min(16);
        let mask: __mmask16 = if lanes == 16 { 0xffff } else { (1u16 << lanes) - 1 };
        let j = t.j0 + p * PANEL_COLS;
        masks[p] = mask;
        col_offsets[p] = _mm512_maskz_loadu_epi32(mask, plan.col_offsets.as_ptr().add(j));
        if has_row_sums {
            w_zps[p] = _mm512_maskz_loadu_epi32(mask, plan.w_zps.as_ptr().add(j));
        }
        w_scales[p] = _mm512_maskz_loadu_ps(mask, t.w_scales.as_ptr().add(j));
        bias[p] = _mm512_maskz_loadu_ps(mask, t.bias.as_ptr().add(j));
    }
    for (r, acc_r) in acc.iter().enumerate() {
        let i = t.i0 + r;
        let a_zp = _mm512_set1_epi32(plan.a_zp.get(i));
        let row_sum = _mm512_set1_epi32(plan.row_sum(i));
        let a_scale = _mm512_set1_ps(plan.a_scale.get(i));
        for p in 0..P {
            let mut c = acc_r[p];
            if plan.has_a_zp {
                c = _mm512_sub_epi32(c, _mm512_mullo_epi32(a_zp, col_offsets[p]));
            }
            if has_row_sums {
                c = _mm512_sub_epi32(c, _mm512_mullo_epi32(row_sum, w_zps[p]));
            }
            let scale = _mm512_mul_ps(a_scale, w_scales[p]);
            let mut y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c), scale, bias[p]);
            if t.relu {
                y = _mm512_max_ps(y, _mm512_setzero_ps());
            }
            _mm512_mask_storeu_ps(plan.out.at(i, t.j0 + p * PANEL_COLS) as *mut f32, masks[p], y);
        }
    }
}

/// The epilogue of [`EpiloguePlan::finish_row`], 16 lanes at a time.
///
/// Safety: as `finish_row`; the CPU has AVX-512 F/BW/VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
pub(crate) unsafe fn finish_row_avx512(plan: &EpiloguePlan, i: usize, j0: usize, acc: &[i32]) {
    let a_zp = _mm512_set1_epi32(plan.a_zp.get(i));
    let row_sum = _mm512_set1_epi32(plan.row_sum(i));
    let has_row_sums = !plan.row_sums.is_empty();
    let mut jj = 0;
    while jj < acc.len() {
        let lanes = (acc.len() - jj).min(16);
        let mask: __mmask16 = if lanes == 16 { 0xffff } else { (1u16 << lanes) - 1 };
        let j = j0 + jj;
        // Masked loads never touch lanes past N.
        let mut c = _mm512_maskz_loadu_epi32(mask, acc.as_ptr().add(jj));
        if plan.has_a_zp {
            let col = _mm512_maskz_loadu_epi32(mask, plan.col_offsets.as_ptr().add(j));
            c = _mm512_sub_epi32(c, _mm512_mullo_epi32(a_zp, col));
        }
        if has_row_sums {
            let wzp = _mm512_maskz_loadu_epi32(mask, plan.w_zps.as_ptr().add(j));
            c = _mm512_sub_epi32(c, _mm512_mullo_epi32(row_sum, wzp));
        }
        let dst = plan.out.at(i, j);
        match &plan.stage {
            Stage::I32 => _mm512_mask_storeu_epi32(dst as *mut i32, mask, c),
            Stage::Requantize {
                bias_term,
                multiplier,
                zero_point,
                lo,
                hi,
            } => {
                let bt = _mm512_maskz_loadu_ps(mask, bias_term.as_ptr().add(j));
                let mul = _mm512_maskz_loadu_ps(mask, multiplier.as_ptr().add(j));
                let x = _mm512_mul_ps(_mm512_add_ps(_mm512_cvtepi32_ps(c), bt), mul);
                let x = _mm512_min_ps(
                    _mm512_max_ps(x, _mm512_set1_ps(-ROUND_LIMIT)),
                    _mm512_set1_ps(ROUND_LIMIT),
                );
                // cvtps2dq rounds half to even under the default MXCSR mode.
                let q = _mm512_add_epi32(_mm512_cvtps_epi32(x), _mm512_set1_epi32(*zero_point));
                let q = _mm512_min_epi32(_mm512_max_epi32(q, _mm512_set1_epi32(*lo)), _mm512_set1_epi32(*hi));
                // In-range values, so truncating to 8 bits is exact for u8 and i8 alike.
                debug_assert!(matches!(plan.out.kind, OutKind::U8 | OutKind::I8));
                _mm512_mask_cvtepi32_storeu_epi8(dst as *mut i8, mask, q);
            }
            Stage::Dequantize { w_scales, bias, relu } => {
                let ws = _mm512_maskz_loadu_ps(mask, w_scales.as_ptr().add(j));
                let scale = _mm512_mul_ps(_mm512_set1_ps(plan.a_scale.get(i)), ws);
                let b = _mm512_maskz_loadu_ps(mask, bias.as_ptr().add(j));
                let mut y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c), scale, b);
                if *relu {
                    y = _mm512_max_ps(y, _mm512_setzero_ps());
                }
                _mm512_mask_storeu_ps(dst as *mut f32, mask, y);
            }
        }
        jj += lanes;
    }
}

/// `steps` rounds of 16 `vpdpbusd zmm` on 16 independent accumulators, from registers only: the
/// instruction's throughput on this core with nothing else in the way, the ceiling of every
/// u8 x s8 kernel here (see [`super::vnni_chain_gops`]).
///
/// # Safety
/// The CPU supports AVX-512 F and VNNI.
#[target_feature(enable = "avx512f,avx512vnni")]
pub(crate) unsafe fn dot_chain(steps: u64) {
    // SAFETY: registers only (every one written is declared clobbered); the loop counter
    // reaches zero after `steps.max(1)` rounds.
    unsafe {
        std::arch::asm!(
            "vpxord zmm0, zmm0, zmm0",
            "2:",
            "vpdpbusd zmm1, zmm0, zmm0", "vpdpbusd zmm2, zmm0, zmm0",
            "vpdpbusd zmm3, zmm0, zmm0", "vpdpbusd zmm4, zmm0, zmm0",
            "vpdpbusd zmm5, zmm0, zmm0", "vpdpbusd zmm6, zmm0, zmm0",
            "vpdpbusd zmm7, zmm0, zmm0", "vpdpbusd zmm8, zmm0, zmm0",
            "vpdpbusd zmm9, zmm0, zmm0", "vpdpbusd zmm10, zmm0, zmm0",
            "vpdpbusd zmm11, zmm0, zmm0", "vpdpbusd zmm12, zmm0, zmm0",
            "vpdpbusd zmm13, zmm0, zmm0", "vpdpbusd zmm14, zmm0, zmm0",
            "vpdpbusd zmm15, zmm0, zmm0", "vpdpbusd zmm16, zmm0, zmm0",
            "dec {n}",
            "jnz 2b",
            n = inout(reg) steps.max(1) => _,
            out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _,
            out("zmm5") _, out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _,
            out("zmm10") _, out("zmm11") _, out("zmm12") _, out("zmm13") _, out("zmm14") _,
            out("zmm15") _, out("zmm16") _,
            options(nostack, nomem),
        );
    }
}
