//! Cache blocking and threading shared by the vector paths.
//!
//! The output is cut into a grid of blocks: column blocks sized so their packed weights
//! (`Nc x K` bytes) stay in about half of a 2 MB L2, row blocks of up to [`ROWS_PER_BLOCK`]
//! rows. Inside a block a path walks row tiles of `MR` rows and, for each, column tiles of
//! `NR` columns, so the `MR x K` activation rows stay in L1 while the block's weights stream
//! from L2. Blocks go to the thread team ([`crate::team`]). Every element is computed entirely by one tile with the
//! full K and the same epilogue, so the grid (and the thread count) never changes a result.

use super::dispatch::KernelPath;
use super::epilogue::EpiloguePlan;
use super::pack::PackedWeights;
use std::ops::Range;

/// Packed weight bytes a column block may occupy.
const L2_BUDGET: usize = 1 << 20;
/// Rows of a block before it is split. A whole 128-token sequence stays one block, so on one
/// thread each column tile's weights come from L3 once for all its rows (96 split such a
/// sequence in two and walked the weights twice: 3-4 % slower on MiniLM's layers).
const ROWS_PER_BLOCK: usize = 128;

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

/// The register tiles of `rows` for tiles of at most `mr` rows: `(first row, rows)`, as few
/// as `mr`-row tiles allow and within one row of each other in height. A 49-row block
/// (ResNet18's 7x7 layers, `mr` 8) is 7 tiles of 7 rather than 6 of 8 and one of a single
/// row, which would load a whole weight panel for one row's products. Each output is still
/// computed whole by one tile, so the cut never changes a result.
pub(crate) fn row_tiles(rows: Range<usize>, mr: usize) -> impl Iterator<Item = (usize, usize)> {
    let len = rows.end - rows.start;
    let tiles = len.div_ceil(mr);
    let (even, extra) = (len / tiles.max(1), len % tiles.max(1));
    (0..tiles).scan(rows.start, move |i0, t| {
        let rows = even + usize::from(t < extra);
        let tile = (*i0, rows);
        *i0 += rows;
        Some(tile)
    })
}

/// Multiply-accumulates below which a parallel task costs more to hand out (a few us of
/// wake-up and join) than it saves: about 2 us of kernel time.
const MIN_TASK_MACS: usize = 1 << 18;

/// Threads worth using: each must get at least [`MIN_TASK_MACS`] of work.
fn task_threads(m: usize, n: usize, k: usize, threads: usize) -> usize {
    threads.clamp(1, (m * n * k / MIN_TASK_MACS).max(1))
}

/// The block grid (row blocks, column blocks) for an `m x n x k` problem on `threads` threads.
///
/// Column blocks keep their packed weights within [`L2_BUDGET`]; row blocks hold up to
/// [`ROWS_PER_BLOCK`] rows. With several threads the grid grows to about two tasks per thread
/// (fewer when tasks would drop under [`MIN_TASK_MACS`]), splitting the side with more tiles
/// left, and ends on a multiple of the thread count so every thread gets the same number of
/// near-equal blocks.
pub(crate) fn grid(m: usize, n: usize, k: usize, mr: usize, nr: usize, threads: usize) -> (usize, usize) {
    let (row_tiles, col_tiles) = (m.div_ceil(mr), n.div_ceil(nr));
    // Prefer a slightly finer cut that divides the tiles evenly (equal blocks).
    let even = |blocks: usize, tiles: usize| {
        (blocks..=blocks + blocks / 2)
            .find(|b| tiles.is_multiple_of(*b))
            .unwrap_or(blocks)
    };
    let cb = (n.div_ceil(nr) * nr * k).div_ceil(L2_BUDGET).clamp(1, col_tiles);
    let mut cb = even(cb, col_tiles);
    let mut rb = even(m.div_ceil(ROWS_PER_BLOCK).clamp(1, row_tiles), row_tiles);
    let threads = task_threads(m, n, k, threads);
    if threads == 1 {
        return (rb, cb);
    }
    let grow = |rb: &mut usize, cb: &mut usize| {
        let rows_left = *rb < row_tiles;
        let cols_left = *cb < col_tiles;
        // Split the side whose blocks have more tiles.
        if cols_left && (!rows_left || row_tiles.div_ceil(*rb) <= col_tiles.div_ceil(*cb)) {
            *cb += 1;
        } else if rows_left {
            *rb += 1;
        } else {
            return false;
        }
        true
    };
    let target = (2 * threads).min((m * n * k / MIN_TASK_MACS).max(threads));
    while rb * cb < target && grow(&mut rb, &mut cb) {}
    while !(rb * cb).is_multiple_of(threads) && grow(&mut rb, &mut cb) {}
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
    let threads = task_threads(m, n, w.k(), threads).min(rb * cb);
    // Column-block major: one thread runs every row block of a column block in turn, so that
    // block's packed weights stay in L2 while the activations stream past them.
    let task = |t: usize| {
        let rows = split(m, K::MR, rb, t % rb);
        let cols = split(n, K::NR, cb, t / rb);
        if !rows.is_empty() && !cols.is_empty() {
            // SAFETY: the path was checked available by dispatch::select; `split` yields
            // disjoint in-range blocks starting on multiples of MR / NR.
            unsafe { K::block(plan, a, w, rows, cols) }
        }
    };
    // Blocks are claimed one at a time in column-block-major order: the first ones still go
    // to different threads (so each keeps its column blocks' weights in its own L2), and a
    // thread that starts late, or is descheduled on a busy machine, can still take any block
    // not yet started.
    crate::team::for_each(threads, rb * cb, &task);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_tiles_cover_rows_in_balanced_tiles() {
        for mr in [4, 6, 8] {
            for start in [0, 5] {
                for len in 0..=70 {
                    let tiles: Vec<_> = row_tiles(start..start + len, mr).collect();
                    assert_eq!(tiles.len(), len.div_ceil(mr), "len {len}");
                    let mut next = start;
                    for &(i0, rows) in &tiles {
                        assert_eq!(i0, next, "len {len}: tiles must be contiguous");
                        assert!((1..=mr).contains(&rows), "len {len}: tile of {rows} rows");
                        next += rows;
                    }
                    assert_eq!(next, start + len);
                    let heights = tiles.iter().map(|t| t.1);
                    assert!(heights.clone().max().unwrap_or(0) - heights.min().unwrap_or(0) <= 1);
                }
            }
        }
        assert_eq!(row_tiles(0..49, 8).map(|t| t.1).collect::<Vec<_>>(), [7; 7]);
    }

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
        assert_eq!((rb, cb), (1, 2));
        // Tiny problems stay on one task.
        assert_eq!(grid(2, 40, 30, 8, 48, 2), (1, 1));
        for (m, k, n) in [
            (16, 768, 768),
            (128, 768, 3072),
            (128, 3072, 768),
            (512, 1024, 1024),
            (128, 384, 384),
        ] {
            for threads in [2, 3] {
                let (rb, cb) = grid(m, n, k, 8, 48, threads);
                assert!(
                    (rb * cb).is_multiple_of(threads),
                    "{m}x{k}x{n} on {threads} threads: {rb} x {cb}"
                );
                assert!(rb * cb >= 2 * threads);
            }
        }
        let (rb, cb) = grid(128, 768, 3072, 8, 48, 1);
        assert!(cb >= 2 && rb >= 1);
    }
}
