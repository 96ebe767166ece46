//! AVX2 path, exact for full-range u8 x s8. `vpmaddubsw` would add two u8 x s8 products in a
//! saturating i16 (255 * 127 * 2 overflows), so instead each weight is sign-extended and each
//! activation zero-extended to 16 bits and `vpmaddwd` adds product pairs straight into i32.
//! Register tile: 4 rows x 8 columns; each 8-column half panel is read as two 16-byte pieces
//! (4 columns x 4 K values), so every i32 lane holds a pair sum for one column, and the two
//! pair sums of a column are folded with `vphaddd` at the end. The 8-lane epilogue here is
//! shared with the AVX-VNNI path.

use super::driver::{row_tiles, BlockKernel};
use super::epilogue::{EpiloguePlan, Stage, ROUND_LIMIT};
use super::pack::{PackedWeights, K_GROUP, PANEL_COLS, PANEL_ROW_BYTES};
use std::arch::x86_64::*;
use std::ops::Range;

const MR: usize = 4;
const NR: usize = 8;

pub(crate) struct Avx2;

impl BlockKernel for Avx2 {
    const MR: usize = MR;
    const NR: usize = NR;

    unsafe fn block(plan: &EpiloguePlan, a: &[u8], w: &PackedWeights, rows: Range<usize>, cols: Range<usize>) {
        block_avx2(plan, a, w, rows, cols)
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(plan: &EpiloguePlan, a: &[u8], w: &PackedWeights, rows: Range<usize>, cols: Range<usize>) {
    let k = w.k();
    let mut tile = [[0i32; NR]; MR];
    for (i0, mr) in row_tiles(rows.clone(), MR) {
        let a_tile = a.as_ptr().add(i0 * k);
        for j0 in cols.clone().step_by(NR) {
            let nc = NR.min(cols.end - j0);
            // Byte offset of this half panel inside each 64-byte packed row.
            let b = w.panel_ptr(j0 / PANEL_COLS).add((j0 % PANEL_COLS) * K_GROUP);
            match mr {
                1 => microkernel::<1>(a_tile, k, b, &mut tile),
                2 => microkernel::<2>(a_tile, k, b, &mut tile),
                3 => microkernel::<3>(a_tile, k, b, &mut tile),
                4 => microkernel::<4>(a_tile, k, b, &mut tile),
                _ => unreachable!("tile of {mr} rows"),
            }
            for (r, sums) in tile.iter().enumerate().take(mr) {
                finish_row_avx2(plan, i0 + r, j0, &sums[..nc]);
            }
        }
    }
}

/// The 4 activation bytes of K group `g`, zero-extended to four u16 and broadcast.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn broadcast_group(row: *const u8, k: usize, g: usize) -> __m256i {
    let start = g * K_GROUP;
    let bytes = if start + K_GROUP <= k {
        (row.add(start) as *const i32).read_unaligned()
    } else {
        let mut v = 0u32;
        for t in 0..k - start {
            v |= (*row.add(start + t) as u32) << (8 * t);
        }
        v as i32
    };
    _mm256_broadcastq_epi64(_mm_cvtepu8_epi16(_mm_cvtsi32_si128(bytes)))
}

/// `tile[r][c] = sum_k a[r][k] * w[c][k]` for `R` rows and the 8 columns at `b`.
///
/// Safety: `a` points at `R` rows of `k` bytes; `b` at a half panel of `ceil(k / 4)` rows.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn microkernel<const R: usize>(a: *const u8, k: usize, b: *const i8, tile: &mut [[i32; NR]; MR]) {
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    let mut bp = b;
    for g in 0..k.div_ceil(K_GROUP) {
        let w_lo = _mm256_cvtepi8_epi16(_mm_loadu_si128(bp as *const __m128i));
        let w_hi = _mm256_cvtepi8_epi16(_mm_loadu_si128(bp.add(16) as *const __m128i));
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let av = broadcast_group(a.add(r * k), k, g);
            acc_r[0] = _mm256_add_epi32(acc_r[0], _mm256_madd_epi16(av, w_lo));
            acc_r[1] = _mm256_add_epi32(acc_r[1], _mm256_madd_epi16(av, w_hi));
        }
        bp = bp.add(PANEL_ROW_BYTES);
    }
    for (r, acc_r) in acc.iter().enumerate() {
        // hadd gives [c0 c1 c4 c5 | c2 c3 c6 c7]; the permute restores column order.
        let sums = _mm256_permute4x64_epi64::<0xD8>(_mm256_hadd_epi32(acc_r[0], acc_r[1]));
        _mm256_storeu_si256(tile[r].as_mut_ptr() as *mut __m256i, sums);
    }
}

/// The epilogue of [`EpiloguePlan::finish_row`], 8 lanes at a time, the ragged end by the
/// reference code (same operations, so the same bits).
///
/// Safety: as `finish_row`; the CPU has AVX2.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn finish_row_avx2(plan: &EpiloguePlan, i: usize, j0: usize, acc: &[i32]) {
    let a_zp = _mm256_set1_epi32(plan.a_zp.get(i));
    let row_sum = _mm256_set1_epi32(plan.row_sum(i));
    let has_row_sums = !plan.row_sums.is_empty();
    let full = acc.len() / 8 * 8;
    for jj in (0..full).step_by(8) {
        let j = j0 + jj;
        let mut c = _mm256_loadu_si256(acc.as_ptr().add(jj) as *const __m256i);
        if plan.has_a_zp {
            let col = _mm256_loadu_si256(plan.col_offsets.as_ptr().add(j) as *const __m256i);
            c = _mm256_sub_epi32(c, _mm256_mullo_epi32(a_zp, col));
        }
        if has_row_sums {
            let wzp = _mm256_loadu_si256(plan.w_zps.as_ptr().add(j) as *const __m256i);
            c = _mm256_sub_epi32(c, _mm256_mullo_epi32(row_sum, wzp));
        }
        let dst = plan.out.at(i, j);
        match &plan.stage {
            Stage::I32 => _mm256_storeu_si256(dst as *mut __m256i, c),
            Stage::Requantize {
                bias_term,
                multiplier,
                zero_point,
                lo,
                hi,
            } => {
                let bt = _mm256_loadu_ps(bias_term.as_ptr().add(j));
                let mul = _mm256_loadu_ps(multiplier.as_ptr().add(j));
                let x = _mm256_mul_ps(_mm256_add_ps(_mm256_cvtepi32_ps(c), bt), mul);
                let x = _mm256_min_ps(
                    _mm256_max_ps(x, _mm256_set1_ps(-ROUND_LIMIT)),
                    _mm256_set1_ps(ROUND_LIMIT),
                );
                let q = _mm256_add_epi32(_mm256_cvtps_epi32(x), _mm256_set1_epi32(*zero_point));
                let q = _mm256_min_epi32(_mm256_max_epi32(q, _mm256_set1_epi32(*lo)), _mm256_set1_epi32(*hi));
                // Low byte of each (in-range) lane, gathered into the low 8 bytes.
                let pick = _mm256_setr_epi8(
                    0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1,
                    -1, -1, -1, -1, -1, -1,
                );
                let bytes = _mm256_permutevar8x32_epi32(
                    _mm256_shuffle_epi8(q, pick),
                    _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0),
                );
                _mm_storel_epi64(dst as *mut __m128i, _mm256_castsi256_si128(bytes));
            }
            Stage::Dequantize { w_scales, bias, relu } => {
                let ws = _mm256_loadu_ps(w_scales.as_ptr().add(j));
                let scale = _mm256_mul_ps(_mm256_set1_ps(plan.a_scale.get(i)), ws);
                let b = _mm256_loadu_ps(bias.as_ptr().add(j));
                let mut y = _mm256_fmadd_ps(_mm256_cvtepi32_ps(c), scale, b);
                if *relu {
                    y = _mm256_max_ps(y, _mm256_setzero_ps());
                }
                _mm256_storeu_ps(dst as *mut f32, y);
            }
        }
    }
    if full < acc.len() {
        plan.finish_row(i, j0 + full, &acc[full..]);
    }
}
