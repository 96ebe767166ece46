//! The AVX-512 fp32 product `c (+)= a b` with `a` `[m, k]` read in place (rows contiguous) and `b`
//! `[k, n]` given as column panels: either read in place (`b` row-major, e.g. im2col columns or a
//! MatMul operand) or a weight `W [n, k]` packed once by [`PackedPanels::from_transposed`], so
//! Linear's `x W^T` needs no per-call packing at all.
//!
//! A register tile is up to [`MR`] = 8 rows of `a` by one panel of up to [`NR`] = 48 columns
//! (3 zmm vectors, 24 accumulators): each inner step loads the panel's 3 vectors for that `k` and
//! broadcasts one element of each of the 8 rows of `a`, 24 fused multiply-adds per 11 loads, which
//! keeps both FMA ports busy. Column remainders use masked loads and stores, row remainders a
//! smaller tile; the result goes straight into the row-major `c`. The inner dimension is blocked
//! by [`KC`] and the rows by [`MC`] so the panel slice in use stays in L1 and the rows of `a` in
//! L2. With several rayon threads the panels are split between them, on the thread team of
//! [`qkernels::team`] (awake between the back-to-back products of a model).
//!
//! Numerics: every element is one chain of fused multiply-adds in increasing inner index,
//! `c[i][j] = fma(a[i][k-1], b[k-1][j], .. fma(a[i][0], b[0][j], c0))` with `c0` the old `c[i][j]`
//! when accumulating and 0 otherwise (the chain is stored and resumed between `KC` blocks, which
//! rounds nothing), so the result depends on neither the tiling nor the thread count.

use std::arch::x86_64::*;
use std::ops::Range;

/// Rows of `a` per register tile.
const MR: usize = 8;
/// Columns per panel: three 16-lane vectors.
const NR: usize = 48;
/// Inner-dimension block: the panel slice `KC x NR` is 36 KiB, inside L1. (On the MiniLM shapes
/// 64..384 and no blocking measured alike, 155-167 GF/s, in the host's fast state.)
const KC: usize = 192;
/// Rows of `a` per outer block: an `MC x KC` slice of `a` is 144 KiB, in L2.
const MC: usize = 192;
/// Row tiles per panel slice from which the next slice is prefetched in parts.
const PREFETCH_MIN_TILES: usize = 4;
/// Multiply-adds per thread below which the product stays on the calling thread.
const MIN_WORK_PER_THREAD: usize = 1 << 20;

/// Whether this CPU runs the kernels of this module.
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma")
}

/// A weight `W [n, k]` stored as the column panels of `W^T`: panel `q` holds columns
/// `q * NR..` of `W^T` (rows of `W`), `width(q)` wide (`NR`, or the remainder rounded up to 16 and
/// zero-padded), `k` rows of `width(q)` floats each; every panel row starts on a 64-byte line.
#[derive(Debug)]
pub struct PackedPanels {
    n: usize,
    k: usize,
    data: Vec<f32>,
    /// Index of the first element in `data` (the first 64-byte aligned one).
    start: usize,
}

impl PackedPanels {
    /// Packs the weight `w` (`n` rows of `k`, `ldw` apart) as panels of `W^T`.
    pub fn from_transposed(w: &[f32], n: usize, k: usize, ldw: usize) -> PackedPanels {
        assert!(
            ldw >= k && (n == 0 || w.len() >= (n - 1) * ldw + k),
            "weight is shorter than its shape"
        );
        let len: usize = (0..n.div_ceil(NR)).map(|q| panel_width(n, q) * k).sum();
        let mut data = vec![0.0f32; len + 15];
        let start = data.as_ptr().align_offset(64).min(15);
        let packed = &mut data[start..start + len];
        let mut off = 0;
        for q in 0..n.div_ceil(NR) {
            let width = panel_width(n, q);
            let cols = panel_cols(n, q);
            let panel = &mut packed[off..off + width * k];
            for c in 0..cols {
                let row = &w[(q * NR + c) * ldw..][..k];
                for (p, &v) in row.iter().enumerate() {
                    panel[p * width + c] = v;
                }
            }
            off += width * k;
        }
        PackedPanels { n, k, data, start }
    }

    /// Output columns (rows of `W`).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Inner dimension (columns of `W`).
    pub fn k(&self) -> usize {
        self.k
    }

    fn packed(&self) -> &[f32] {
        &self.data[self.start..]
    }
}

/// Stored width of panel `q` of an `n`-column operand: `NR`, or the remainder rounded up to 16.
fn panel_width(n: usize, q: usize) -> usize {
    panel_cols(n, q).next_multiple_of(16)
}

/// Real columns of panel `q`.
fn panel_cols(n: usize, q: usize) -> usize {
    NR.min(n - q * NR)
}

/// The `b` operand of [`sgemm_panels`].
#[derive(Clone, Copy)]
pub(super) enum Panels<'a> {
    /// `b[p][j] = data[p * ldb + j]`.
    RowMajor { data: &'a [f32], ldb: usize, n: usize },
    /// A packed weight: `b = W^T`.
    Packed(&'a PackedPanels),
    /// Rows at their own offsets: `b[p][j] = data[offsets[p] + j]` (a convolution's shifted
    /// input rows, read in place of im2col columns).
    Shifted {
        data: &'a [f32],
        offsets: &'a [usize],
        n: usize,
    },
}

impl Panels<'_> {
    fn n(&self) -> usize {
        match self {
            Panels::RowMajor { n, .. } | Panels::Shifted { n, .. } => *n,
            Panels::Packed(w) => w.n,
        }
    }

    /// (slice starting at column 0 of panel `q`, how its rows are found, its real column count).
    fn panel(&self, q: usize) -> (&[f32], RowAddr<'_>, usize) {
        let n = self.n();
        match *self {
            Panels::RowMajor { data, ldb, .. } => (&data[q * NR..], RowAddr::Strided(ldb), panel_cols(n, q)),
            Panels::Packed(w) => {
                // Full panels precede the only narrower one, the last.
                let off = q * NR * w.k;
                (
                    &w.packed()[off..],
                    RowAddr::Strided(panel_width(n, q)),
                    panel_cols(n, q),
                )
            }
            Panels::Shifted { data, offsets, .. } => (&data[q * NR..], RowAddr::Offsets(offsets), panel_cols(n, q)),
        }
    }
}

/// Where row `p` of a panel starts, relative to the start of the panel's slice.
#[derive(Clone, Copy)]
enum RowAddr<'a> {
    /// `p * ldb`.
    Strided(usize),
    /// `offsets[p]`.
    Offsets(&'a [usize]),
}

impl RowAddr<'_> {
    fn offset(&self, p: usize) -> usize {
        match *self {
            RowAddr::Strided(ldb) => p * ldb,
            RowAddr::Offsets(offsets) => offsets[p],
        }
    }
}

/// Row addressing of the `b` operand inside [`tile`], a type per kind so each is compiled into
/// its own loop.
trait BRows: Copy {
    /// Pointer to row `p` of the tile's `b`.
    ///
    /// # Safety
    /// `p` is a row of the tile (below its `kc`).
    unsafe fn row(&self, b: *const f32, p: usize) -> *const f32;
}

#[derive(Clone, Copy)]
struct Strided(usize);

impl BRows for Strided {
    #[inline(always)]
    unsafe fn row(&self, b: *const f32, p: usize) -> *const f32 {
        b.add(p * self.0)
    }
}

/// Row `p` at `offsets[p]` floats past the tile's `b` (the panel's first column at the start of
/// the shifted rows' data).
#[derive(Clone, Copy)]
struct Offsets(*const usize);

impl BRows for Offsets {
    #[inline(always)]
    unsafe fn row(&self, b: *const f32, p: usize) -> *const f32 {
        b.add(*self.0.add(p))
    }
}

/// A raw pointer to `c` shared by the threads of one call, each writing its own columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the threads of one `sgemm_panels` call write disjoint column ranges of `c` (each owns
// whole panels), and the call does not return before they finish.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `c[i][j] = fma chain of a[i][p] * b[p][j] over p in 0..k`, starting from `c[i][j]` when
/// `accumulate` and from 0 otherwise (see the module doc); `a[i][p] = a[i * lda + p]`, `c` dense
/// `[m, n]` with row stride `n`. Returns `false` (and leaves `c` untouched) when the CPU lacks
/// AVX-512F or FMA.
///
/// Panics if a slice is too short for its shape.
pub(super) fn sgemm_panels(
    a: &[f32],
    lda: usize,
    m: usize,
    k: usize,
    b: Panels<'_>,
    c: &mut [f32],
    accumulate: bool,
) -> bool {
    if !available() {
        return false;
    }
    let n = b.n();
    if m == 0 || n == 0 {
        return true;
    }
    assert!(a.len() >= (m - 1) * lda + k, "a is shorter than its shape");
    assert!(c.len() >= m * n, "c is shorter than its shape");
    match b {
        Panels::RowMajor { data, ldb, n } => {
            assert!(
                ldb >= n && (k == 0 || data.len() >= (k - 1) * ldb + n),
                "b is shorter than its shape"
            )
        }
        Panels::Packed(w) => assert_eq!(w.k, k, "packed weight has another inner dimension"),
        Panels::Shifted { data, offsets, n } => assert!(
            offsets.len() >= k && offsets[..k].iter().all(|&o| o + n <= data.len()),
            "a shifted row of b ends past its data"
        ),
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return true;
    }
    let panels = n.div_ceil(NR);
    let threads = rayon::current_num_threads()
        .min(panels)
        .min((m * n * k / MIN_WORK_PER_THREAD).max(1));
    let out = OutPtr(c.as_mut_ptr());
    if threads <= 1 {
        run_panels(a, lda, m, k, b, 0..panels, out, n, accumulate);
    } else {
        qkernels::team::for_each(threads, threads, &|t| {
            let range = panels * t / threads..panels * (t + 1) / threads;
            run_panels(a, lda, m, k, b, range, out, n, accumulate);
        });
    }
    true
}

/// Panels `qs` of the product, all rows, on the calling thread (shapes checked by the caller).
#[allow(clippy::too_many_arguments)]
fn run_panels(
    a: &[f32],
    lda: usize,
    m: usize,
    k: usize,
    b: Panels<'_>,
    qs: Range<usize>,
    c: OutPtr,
    ldc: usize,
    accumulate: bool,
) {
    for p0 in (0..k).step_by(KC) {
        let kc = KC.min(k - p0);
        let resume = accumulate || p0 > 0;
        for i0 in (0..m).step_by(MC) {
            let i1 = (i0 + MC).min(m);
            let tiles = (i1 - i0).div_ceil(MR);
            for q in qs.clone() {
                let (panel, rows_at, cols) = b.panel(q);
                let vectors = cols.div_ceil(16);
                let mask: __mmask16 = (u32::MAX >> (32 - (cols - 16 * (vectors - 1)))) as __mmask16;
                // The slice the next panel step multiplies, fetched into L2 a part per tile while
                // this one computes: a weight last used a whole model run ago sits in L3, and
                // the first tile to meet it would otherwise wait on every line. (With few tiles
                // per slice the hardware prefetcher keeps up and the hints only cost.)
                let next = if tiles < PREFETCH_MIN_TILES {
                    None
                } else if q + 1 < qs.end {
                    Some((q + 1, p0))
                } else if p0 + KC < k && i1 == m {
                    Some((qs.start, p0 + KC))
                } else {
                    None
                };
                for (t, i) in (i0..i1).step_by(MR).enumerate() {
                    if let Some((nq, np0)) = next {
                        let nkc = KC.min(k - np0);
                        prefetch_rows(b, nq, np0 + nkc * t / tiles..np0 + nkc * (t + 1) / tiles);
                    }
                    let rows = MR.min(i1 - i);
                    // SAFETY: rows `i..i + rows` of `a` (`i + rows <= m`) hold columns
                    // `p0..p0 + kc` (`p0 + kc <= k`), inside `a` by the assertion in
                    // `sgemm_panels`; panel rows `p0..p0 + kc` hold `cols` readable floats
                    // (row-major `b` asserted to hold `k` rows of `n`; a packed panel holds `k`
                    // rows of `ldb >= cols` floats; shifted rows asserted to end inside their
                    // data), and only the first `cols = 16 * (vectors - 1) + popcount(mask)`
                    // are touched; `c` rows `i..i + rows` (of `m * ldc` floats asserted) get
                    // columns `q * NR..q * NR + cols <= ldc`, owned by this thread alone. The
                    // CPU has AVX-512F and FMA (`available()`).
                    unsafe {
                        let a = a.as_ptr().add(i * lda + p0);
                        let c = c.0.add(i * ldc + q * NR);
                        match rows_at {
                            RowAddr::Strided(ldb) => {
                                let b = panel.as_ptr().add(p0 * ldb);
                                tile_dispatch(rows, vectors, a, lda, b, Strided(ldb), kc, c, ldc, mask, resume)
                            }
                            RowAddr::Offsets(offsets) => {
                                let b = Offsets(offsets[p0..].as_ptr());
                                tile_dispatch(rows, vectors, a, lda, panel.as_ptr(), b, kc, c, ldc, mask, resume)
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Asks for rows `ps` of panel `q` of `b` to be brought into L2 (a hint; it reads nothing).
fn prefetch_rows(b: Panels<'_>, q: usize, ps: Range<usize>) {
    let (panel, rows_at, cols) = b.panel(q);
    for p in ps {
        let at = rows_at.offset(p);
        let row = &panel[at..at + cols];
        for line in row.chunks(16) {
            // SAFETY: `line` is inside `b`'s slice; a prefetch reads nothing architecturally and
            // cannot fault. SSE is part of x86_64.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(line.as_ptr().cast()) };
        }
    }
}

/// Calls [`tile`] with `rows` (1..=MR) and `vectors` (1..=3) as constants.
///
/// # Safety
/// As for [`tile`].
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn tile_dispatch<B: BRows>(
    rows: usize,
    vectors: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: B,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    mask: __mmask16,
    resume: bool,
) {
    macro_rules! by_rows {
        ($v:literal) => {
            match rows {
                8 => tile::<8, $v, B>(a, lda, b, ldb, kc, c, ldc, mask, resume),
                7 => tile::<7, $v, B>(a, lda, b, ldb, kc, c, ldc, mask, resume),
                6 => tile::<6, $v, B>(a, lda, b, ldb, kc, c, ldc, mask, resume),
                5 => tile::<5, $v, B>(a, lda, b, ldb, kc, c, ldc, mask, resume),
                4 => tile::<4, $v, B>(a, lda, b, ldb, kc, c, ldc, mask, resume),
                3 => tile::<3, $v, B>(a, lda, b, ldb, kc, c, ldc, mask, resume),
                2 => tile::<2, $v, B>(a, lda, b, ldb, kc, c, ldc, mask, resume),
                _ => tile::<1, $v, B>(a, lda, b, ldb, kc, c, ldc, mask, resume),
            }
        };
    }
    match vectors {
        3 => by_rows!(3),
        2 => by_rows!(2),
        _ => by_rows!(1),
    }
}

/// `c[r][0..cols] = fma chain over p < kc of a[r][p] * b[p][0..cols]` for `R` rows, starting
/// from the stored `c` when `resume` and from 0 otherwise; `cols = 16 * (V - 1) + popcount(mask)`.
///
/// # Safety
/// `a` addresses `R` rows of `kc` floats `lda` apart; `b` `kc` rows (row `p` at
/// `ldb.row(b, p)`) of which the first `cols` floats are read; `c` `R` rows `ldc` apart of which the first `cols` floats are
/// read and written; `mask` is a non-empty low-bit mask; the CPU has AVX-512F and FMA.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,fma")]
unsafe fn tile<const R: usize, const V: usize, B: BRows>(
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: B,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    mask: __mmask16,
    resume: bool,
) {
    let lane_mask = |v: usize| if v + 1 == V { mask } else { 0xffff };
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    if resume {
        for (r, acc) in acc.iter_mut().enumerate() {
            for (v, x) in acc.iter_mut().enumerate() {
                *x = _mm512_maskz_loadu_ps(lane_mask(v), c.add(r * ldc + 16 * v));
            }
        }
    }
    let rows: [*const f32; R] = std::array::from_fn(|r| a.add(r * lda));
    for p in 0..kc {
        let b = ldb.row(b, p);
        let mut bv = [_mm512_setzero_ps(); V];
        for (v, y) in bv.iter_mut().enumerate() {
            *y = _mm512_maskz_loadu_ps(lane_mask(v), b.add(16 * v));
        }
        for (acc, row) in acc.iter_mut().zip(&rows) {
            let s = _mm512_set1_ps(*row.add(p));
            for (x, &y) in acc.iter_mut().zip(&bv) {
                *x = _mm512_fmadd_ps(s, y, *x);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (v, &x) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(c.add(r * ldc + 16 * v), lane_mask(v), x);
        }
    }
}
