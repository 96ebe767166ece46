//! AVX-VNNI path: 256-bit `vpdpbusd` with VEX encoding (the `avxvnni` feature of Alder Lake and
//! Sapphire Rapids, also on CPUs without AVX-512). Register tile: 6 rows x 16 columns (one
//! packed panel as two ymm halves, 12 accumulators). Epilogue shared with the AVX2 path.

use super::avx2::finish_row_avx2;
use super::driver::{row_tiles, BlockKernel};
use super::epilogue::EpiloguePlan;
use super::pack::{PackedWeights, K_GROUP, PANEL_COLS, PANEL_ROW_BYTES};
use std::arch::x86_64::*;
use std::ops::Range;

const MR: usize = 6;
const NR: usize = PANEL_COLS;

pub(crate) struct AvxVnni;

impl BlockKernel for AvxVnni {
    const MR: usize = MR;
    const NR: usize = NR;

    unsafe fn block(plan: &EpiloguePlan, a: &[u8], w: &PackedWeights, rows: Range<usize>, cols: Range<usize>) {
        block_avxvnni(plan, a, w, rows, cols)
    }
}

#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn block_avxvnni(plan: &EpiloguePlan, a: &[u8], w: &PackedWeights, rows: Range<usize>, cols: Range<usize>) {
    let k = w.k();
    let mut tile = [[0i32; NR]; MR];
    for (i0, mr) in row_tiles(rows.clone(), MR) {
        let a_tile = a.as_ptr().add(i0 * k);
        for j0 in cols.clone().step_by(NR) {
            let nc = NR.min(cols.end - j0);
            let b = w.panel_ptr(j0 / PANEL_COLS);
            match mr {
                1 => microkernel::<1>(a_tile, k, b, &mut tile),
                2 => microkernel::<2>(a_tile, k, b, &mut tile),
                3 => microkernel::<3>(a_tile, k, b, &mut tile),
                4 => microkernel::<4>(a_tile, k, b, &mut tile),
                5 => microkernel::<5>(a_tile, k, b, &mut tile),
                6 => microkernel::<6>(a_tile, k, b, &mut tile),
                _ => unreachable!("tile of {mr} rows"),
            }
            for (r, sums) in tile.iter().enumerate().take(mr) {
                finish_row_avx2(plan, i0 + r, j0, &sums[..nc]);
            }
        }
    }
}

#[inline(always)]
unsafe fn group_bytes(row: *const u8, k: usize, g: usize) -> i32 {
    let start = g * K_GROUP;
    if start + K_GROUP <= k {
        (row.add(start) as *const i32).read_unaligned()
    } else {
        let mut v = 0u32;
        for t in 0..k - start {
            v |= (*row.add(start + t) as u32) << (8 * t);
        }
        v as i32
    }
}

/// `tile[r][c] = sum_k a[r][k] * w[c][k]` for `R` rows and the 16 columns of panel `b`.
///
/// Safety: `a` points at `R` rows of `k` bytes; `b` at a panel of `ceil(k / 4)` 64-byte rows.
#[target_feature(enable = "avx2,avxvnni")]
#[inline]
unsafe fn microkernel<const R: usize>(a: *const u8, k: usize, b: *const i8, tile: &mut [[i32; NR]; MR]) {
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    let full = k / K_GROUP;
    let mut bp = b;
    for g in 0..k.div_ceil(K_GROUP) {
        let w0 = _mm256_load_si256(bp as *const __m256i);
        let w1 = _mm256_load_si256(bp.add(32) as *const __m256i);
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let bytes = if g < full {
                (a.add(r * k + g * K_GROUP) as *const i32).read_unaligned()
            } else {
                group_bytes(a.add(r * k), k, g)
            };
            let av = _mm256_set1_epi32(bytes);
            acc_r[0] = _mm256_dpbusd_avx_epi32(acc_r[0], av, w0);
            acc_r[1] = _mm256_dpbusd_avx_epi32(acc_r[1], av, w1);
        }
        bp = bp.add(PANEL_ROW_BYTES);
    }
    for (r, acc_r) in acc.iter().enumerate() {
        _mm256_storeu_si256(tile[r].as_mut_ptr() as *mut __m256i, acc_r[0]);
        _mm256_storeu_si256(tile[r].as_mut_ptr().add(8) as *mut __m256i, acc_r[1]);
    }
}
