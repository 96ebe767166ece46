//! Cache blocking and threading shared by the vector paths.
//!
//! The output is cut into a grid of blocks: column blocks sized so their packed weights
//! (`Nc x K` bytes) stay in about half of a 2 MB L2, row blocks of up to [`ROWS_PER_BLOCK`]
//! rows. Inside a block a path walks row tiles of `MR` rows and, for each, column tiles of
//! `NR` columns, so the `MR x K` activation rows stay in L1 while the block's weights stream
//! from L2. Blocks go to rayon tasks. Every element is computed entirely by one tile with the
//! full K and the same epilogue, so the grid (and the thread count) never changes a result.

use super::dispatch::KernelPath;
use super::epilogue::EpiloguePlan;
use super::pack::PackedWeights;
use rayon::prelude::*;
use std::ops::Range;

/// Packed weight bytes a column block may occupy.
const L2_BUDGET: usize = 1 << 20;
/// Rows of a block before it is split.
const ROWS_PER_BLOCK: usize = 96;

/// A vector path computing whole output blocks (dot products and epilogue).
pub(crate) trait BlockKernel {
    /// Rows of one register tile.
    const MR: usize;
    /// Columns of one register tile (a multiple of 8 dividing into whole panel halves).
    const NR: usize;

    /// Computes and finishes output rows `rows` x columns `cols`.
    ///
    /// # Safety
    /// The CPU has the path's features; `rows` lies in `0..M` and `cols` in `0..N` with
    /// `cols.start` a multiple of `NR`; no other task writes this block.
    unsafe fn block(plan: &EpiloguePlan, a: &[u8], w: &PackedWeights, rows: Range<usize>, cols: Range<usize>);
}

/// Runs the GEMM on `path`.
pub(crate) fn run(
    path: KernelPath,
    plan: &EpiloguePlan,
    a: &[u8],
    m: usize,
    w: &PackedWeights,
    threads: Option<usize>,
) {
    match path {
        KernelPath::Reference => super::reference::gemm(plan, a, m, w),
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx2 => blocked::<super::avx2::Avx2>(plan, a, m, w, threads),
        #[cfg(target_arch = "x86_64")]
        KernelPath::AvxVnni => blocked::<super::avxvnni::AvxVnni>(plan, a, m, w, threads),
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx512Vnni => blocked::<super::avx512_vnni::Avx512Vnni>(plan, a, m, w, threads),
        #[cfg(target_arch = "x86_64")]
        KernelPath::Amx => super::amx::gemm(plan, a, m, w, threads),
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("dispatch::select only returns available paths"),
    }
}

/// Splits `tiles` tiles of `tile` elements into `parts` near-equal ranges covering `0..len`.
fn split(len: usize, tile: usize, parts: usize, index: usize) -> Range<usize> {
    let tiles = len.div_ceil(tile);
    let (base, extra) = (tiles / parts, tiles % parts);
    let start = index * base + index.min(extra);
    let count = base + usize::from(index < extra);
    (start * tile).min(len)..((start + count) * tile).min(len)
}

/// The block grid (row blocks, column blocks) for an `m x n x k` problem on `threads` threads.
pub(crate) fn grid(m: usize, n: usize, k: usize, mr: usize, nr: usize, threads: usize) -> (usize, usize) {
    let (row_tiles, col_tiles) = (m.div_ceil(mr), n.div_ceil(nr));
    let mut cb = (n.div_ceil(nr) * nr * k).div_ceil(L2_BUDGET).clamp(1, col_tiles);
    let mut rb = m.div_ceil(ROWS_PER_BLOCK).clamp(1, row_tiles);
    // Two tasks per thread smooth out uneven blocks; prefer splitting the larger side.
    let target = if threads > 1 { 2 * threads } else { 1 };
    while rb * cb < target {
        let rows_left = rb < row_tiles;
        let cols_left = cb < col_tiles;
        if cols_left && (!rows_left || m.div_ceil(rb) <= n.div_ceil(cb)) {
            cb += 1;
        } else if rows_left {
            rb += 1;
        } else {
            break;
        }
    }
    (rb, cb)
}

/// Cache-blocked, threaded driver for a vector path.
pub(crate) fn blocked<K: BlockKernel>(
    plan: &EpiloguePlan,
    a: &[u8],
    m: usize,
    w: &PackedWeights,
    threads: Option<usize>,
) {
    let n = w.n();
    let threads = threads.unwrap_or_else(rayon::current_num_threads).max(1);
    let (rb, cb) = grid(m, n, w.k(), K::MR, K::NR, threads);
    let task = |t: usize| {
        let rows = split(m, K::MR, rb, t / cb);
        let cols = split(n, K::NR, cb, t % cb);
        if !rows.is_empty() && !cols.is_empty() {
            // SAFETY: the path was checked available by dispatch::select; `split` yields
            // disjoint in-range blocks starting on multiples of MR / NR.
            unsafe { K::block(plan, a, w, rows, cols) }
        }
    };
    if rb * cb == 1 || threads == 1 {
        (0..rb * cb).for_each(task);
    } else {
        (0..rb * cb).into_par_iter().for_each(task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_range_without_overlap() {
        for len in [1, 7, 48, 100, 769] {
            for parts in 1..6 {
                let mut next = 0;
                for i in 0..parts {
                    let r = split(len, 16, parts, i);
                    if r.is_empty() {
                        continue;
                    }
                    assert_eq!(r.start, next);
                    assert_eq!(r.start % 16, 0);
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
    }

    #[test]
    fn grid_gives_every_thread_work() {
        assert_eq!(grid(1, 768, 768, 8, 48, 1), (1, 1));
        let (rb, cb) = grid(1, 768, 768, 8, 48, 2);
        assert!(rb * cb >= 4);
        let (rb, cb) = grid(128, 768, 3072, 8, 48, 1);
        assert!(cb >= 2 && rb >= 1);
    }
}
