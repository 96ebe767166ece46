//! Direct ("implicit GEMM") convolution for one group and symmetric weights: no im2col matrix.
//! With NHWC input and dilation 1 along W, the `kw * c_in` inputs one kernel row sees are
//! contiguous bytes of one input row, so an output pixel's reduction is `kh` contiguous
//! segments (`kh * kw` segments of `c_in` bytes with a dilation). Each segment is zero-padded
//! to a multiple of 4 bytes in the packed weights, and the kernel reads 4 input bytes at a time
//! straight from the (padded) input rows: a 3-channel first layer costs no im2col copy and
//! wastes only the rounding of `kw * 3` up to 4.
//!
//! Padding: a task computing a band of output rows copies each input row it needs once into a
//! ring of `kh` scratch rows with `padding.1` zero-point pixels on both sides (rows above or
//! below the input are all zero point), so every tap reads real memory and a padded tap holds
//! `x_zp` exactly as in [`super::reference`]. Unpadded convolutions whose segments are whole 4-byte
//! groups read the input in place.
//!
//! Deep layers: a band computes its rows for one block of output-channel panels (about 1 MB
//! of packed weights) before the next block, so the weights a row needs come from L2 rather
//! than from memory once per row (ResNet18's 512-channel layers hold 2.4 MB of weights).
//!
//! Arithmetic: the kernel sums the raw products `x * w` (i32, exact: `K <= MAX_K`) on top of
//! `-x_zp * sum w`, which makes the reference's `sum (x - x_zp) * w` (symmetric weights only;
//! other weight zero points take the GEMM path), followed by the shared requantization
//! ([`super::requant`]). Bands are independent tasks of the thread team ([`crate::team`]),
//! and each output value is computed by one register tile with the whole reduction, so results
//! do not depend on the thread count.

// Off x86-64 the kernel calls below are `unreachable!`: their loops never run a second time.
#![cfg_attr(not(target_arch = "x86_64"), allow(clippy::never_loop))]

use std::mem::MaybeUninit;

use super::geometry::Conv2dGeometry;
use super::requant::{ConvRequant, ConvWeightQuant};
use super::NhwcShape;
use crate::eltwise::cat::ConcatRows;
use crate::eltwise::pool::PooledRows;
use crate::Result;

/// Output channels per packed panel (one zmm of i32 accumulators).
pub(crate) const PANEL: usize = 16;
/// Bytes of one packed row: 16 channels x 4 reduction bytes.
pub(crate) const PANEL_ROW: usize = PANEL * 4;
/// Bytes after the last scratch row, so a 4-byte read that starts inside a segment stays in
/// the buffer.
const SLACK: usize = 64;

/// Packed weight bytes of the panels one band computes together (about half of L2).
const WEIGHT_BLOCK_BYTES: usize = 1 << 20;

/// Deepest reduction for which the direct kernel is the default (ResNet18's 256 x 3 x 3
/// layers): with its weights blocked per [`WEIGHT_BLOCK_BYTES`] it beats the GEMM there, hot or
/// cold. The 512 x 3 x 3 layers on 7x7 outputs (2.4 MB of weights, one 7-pixel tile per row)
/// run faster on the GEMM inside a network, where their weights arrive from L3.
pub(crate) const MAX_PREFERRED_DEPTH: usize = 2304;

/// Where the direct kernel's input rows come from.
#[derive(Clone, Copy)]
pub(crate) enum InputRows<'a> {
    /// An NHWC tensor.
    Tensor(&'a [u8]),
    /// A channel concatenation, requantized into the padded row copies as they are made.
    Concat(&'a ConcatRows<'a>),
    /// A max pooling, computed into the padded row copies as they are made.
    Pooled(&'a PooledRows<'a>),
}

/// Work done on each finished output row while it is still in L1 (a fused residual add): called
/// with the row's index among all output rows of the batch (`n * oh + oh`) and its bytes.
pub(crate) type RowFinish<'a> = dyn Fn(usize, &mut [u8]) + Sync + 'a;

/// Consecutive packed groups whose input bytes are consecutive too: group `i` of the run reads
/// the 4 bytes at `at + 4 * i` (relative to an output pixel's first tap).
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupRun {
    pub(crate) at: usize,
    pub(crate) groups: usize,
}

/// 64 packed weight bytes, 64-byte aligned so loads never split cache lines.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct PanelRow(pub(crate) [i8; PANEL_ROW]);

/// Contiguous input bytes of one reduction segment, relative to an output pixel's first tap.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Segment {
    /// Input row offset (`kh * dilation.0`).
    row: usize,
    /// Byte offset inside the padded input row (`kw * dilation.1 * c_in`).
    offset: usize,
    /// Real bytes (the packed weights cover `4 * groups` with zeros past them).
    bytes: usize,
    pub(crate) groups: usize,
}

/// Weights packed for the direct kernel, panel-major: `[panel][group][16 channels][4 bytes]`
/// with the groups of every segment in order.
#[derive(Clone)]
pub(crate) struct DirectConv {
    geometry: Conv2dGeometry,
    segments: Vec<Segment>,
    pub(crate) panels: usize,
    /// Packed rows per panel (sum of the segments' groups).
    pub(crate) groups_total: usize,
    pub(crate) weights: Vec<PanelRow>,
    /// `sum w` per output channel, zero-padded to whole panels.
    weight_sums: Vec<i32>,
    /// The input must be copied into padded rows (padding, or segments that end inside a group).
    needs_copy: bool,
}

impl std::fmt::Debug for DirectConv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectConv")
            .field("segments", &self.segments)
            .field("panels", &self.panels)
            .finish_non_exhaustive()
    }
}

/// Whether the CPU runs the direct kernel (AVX-512 VNNI).
pub(crate) fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::depthwise_avx512::supported()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl DirectConv {
    /// Packs PyTorch-layout weights `[c_out, c_in, kh, kw]`; `None` for geometries the kernel
    /// does not cover (several groups, or non-zero weight zero points).
    pub(crate) fn new(g: &Conv2dGeometry, w: &[i8], wq: &ConvWeightQuant) -> Option<DirectConv> {
        if g.groups != 1 || !wq.is_symmetric() {
            return None;
        }
        let (kh_n, kw_n) = g.kernel;
        let c = g.c_in;
        let mut segments = Vec::new();
        for kh in 0..kh_n {
            let row = kh * g.dilation.0;
            if g.dilation.1 == 1 {
                segments.push(Segment {
                    row,
                    offset: 0,
                    bytes: kw_n * c,
                    groups: (kw_n * c).div_ceil(4),
                });
            } else {
                for kw in 0..kw_n {
                    segments.push(Segment {
                        row,
                        offset: kw * g.dilation.1 * c,
                        bytes: c,
                        groups: c.div_ceil(4),
                    });
                }
            }
        }
        let groups_total: usize = segments.iter().map(|s| s.groups).sum();
        let panels = g.c_out.div_ceil(PANEL);
        let mut weights = vec![PanelRow([0; PANEL_ROW]); panels * groups_total];
        let mut weight_sums = vec![0i32; panels * PANEL];
        for oc in 0..g.c_out {
            let (panel, lane) = (oc / PANEL, oc % PANEL);
            let mut group = 0;
            for (si, seg) in segments.iter().enumerate() {
                for b in 0..seg.bytes {
                    // Segment `si` is kernel row `kh` (and column `kw` with a dilation).
                    let (kh, kw, ic) = if g.dilation.1 == 1 {
                        (si, b / c, b % c)
                    } else {
                        (si / kw_n, si % kw_n, b)
                    };
                    let v = w[((oc * c + ic) * kh_n + kh) * kw_n + kw];
                    weights[panel * groups_total + group + b / 4].0[lane * 4 + b % 4] = v;
                    weight_sums[oc] += v as i32;
                }
                group += seg.groups;
            }
        }
        let needs_copy = g.padding != (0, 0) || segments.iter().any(|s| s.bytes % 4 != 0);
        Some(DirectConv {
            geometry: *g,
            segments,
            panels,
            groups_total,
            weights,
            weight_sums,
            needs_copy,
        })
    }

    /// Convolves NHWC `x` into NHWC `y` (every byte of which it stores, so `y` may start
    /// uninitialized), finishing with `epi` ([`DirectConv::epilogue`] for
    /// `x_zp`), then `finish` on each output row once all its channels are stored (on the
    /// thread that computed it). The caller has checked the shapes and that the CPU runs the
    /// kernel ([`supported`]).
    pub(crate) fn run(
        &self,
        x: InputRows<'_>,
        xs: NhwcShape,
        x_zp: i32,
        epi: &Epilogue,
        y: &mut [MaybeUninit<u8>],
        finish: Option<&RowFinish<'_>>,
    ) -> Result<()> {
        let g = &self.geometry;
        if !matches!(x, InputRows::Tensor(_)) && !self.needs_copy {
            return Err(crate::KernelError::Param {
                op: "conv2d",
                detail: format!("{g:?} reads its input in place, so a concatenation or pooling must be stored first"),
            });
        }
        let (oh_n, ow_n) = g.output_hw(xs.h, xs.w)?;
        let c = g.c_in;
        let (ph, pw) = g.padding;
        let (sh, sw) = g.stride;
        let span = (g.kernel.0 - 1) * g.dilation.0 + 1;
        let in_row = xs.w * c;
        let padded_row = (xs.w + 2 * pw) * c;
        let out_row = ow_n * g.c_out;
        let threads = rayon::current_num_threads();
        let zp = x_zp as u8;
        // Weight blocks, shared by every band (each band runs them in order).
        let blocks: Vec<_> = self.panel_blocks().collect();
        let image = xs.h * in_row;
        let groups_at = |row_base: &dyn Fn(usize) -> usize, runs: &mut Vec<GroupRun>| {
            runs.clear();
            runs.extend(self.segments.iter().map(|s| GroupRun {
                at: row_base(s.row) + s.offset,
                groups: s.groups,
            }));
        };
        let (band, bands) = super::output_bands(y, xs.n, oh_n, out_row, threads);
        crate::team::for_each_item(threads, bands, &|(n, b, y_band)| {
            let x_img: &[u8] = match x {
                InputRows::Tensor(x) => &x[n * image..(n + 1) * image],
                InputRows::Concat(_) | InputRows::Pooled(_) => &[],
            };
            let oh0 = b * band;
            let mut runs = Vec::with_capacity(self.segments.len());
            // Padded input rows live in a ring of `span` slots: padded row `pr` in slot
            // `pr % span`, copied once when an output row first needs it (the rows one
            // output row reads differ by less than `span`, so they never share a slot).
            // Padding columns keep the zero point from this fill.
            let mut ring = if self.needs_copy {
                vec![zp; span * padded_row + SLACK]
            } else {
                Vec::new()
            };
            let mut tags = vec![usize::MAX; span];
            let rows = y_band.len() / out_row;
            for (bi, panels) in blocks.iter().cloned().enumerate() {
                for (r, y_row) in y_band.chunks_exact_mut(out_row).enumerate() {
                    let pr0 = (oh0 + r) * sh;
                    let src: &[u8] = if self.needs_copy {
                        for s in &self.segments {
                            let pr = pr0 + s.row;
                            let slot = pr % span;
                            if tags[slot] == pr {
                                continue;
                            }
                            tags[slot] = pr;
                            let dst = &mut ring[slot * padded_row + pw * c..][..in_row];
                            match pr.checked_sub(ph).filter(|&ih| ih < xs.h) {
                                Some(ih) => match x {
                                    InputRows::Tensor(_) => dst.copy_from_slice(&x_img[ih * in_row..][..in_row]),
                                    InputRows::Concat(rows) => rows.write_init((n * xs.h + ih) * xs.w, dst),
                                    InputRows::Pooled(rows) => rows.write_init(n, ih, dst),
                                },
                                None => dst.fill(zp),
                            }
                        }
                        groups_at(&|row| (pr0 + row) % span * padded_row, &mut runs);
                        &ring
                    } else {
                        groups_at(&|row| (pr0 + row) * in_row, &mut runs);
                        x_img
                    };
                    // Input rows the next output row reads first (from memory, the input
                    // of a large layer having left L2): pulled into L2 while this row computes.
                    #[cfg(target_arch = "x86_64")]
                    let next_rows = if bi + 1 < blocks.len() {
                        // Rows of earlier blocks prefetch the next block's weights instead.
                        crate::prefetch::Regions::new()
                    } else {
                        let first = ((oh0 + r) * sh + span).saturating_sub(ph);
                        let end = ((oh0 + r + 1) * sh + span).saturating_sub(ph).min(xs.h).max(first);
                        let mut regions = crate::prefetch::Regions::new();
                        match x {
                            InputRows::Tensor(_) => {
                                let rows = x_img.get(first * in_row..end * in_row).unwrap_or(&[]);
                                regions.push(rows.as_ptr().cast(), rows.len());
                            }
                            InputRows::Concat(parts) => {
                                let p0 = (n * xs.h + first) * xs.w;
                                for rows in parts.sources(p0, (end - first) * xs.w) {
                                    regions.push(rows.as_ptr().cast(), rows.len());
                                }
                            }
                            InputRows::Pooled(pooled) => {
                                let rows = pooled.source(n, first..end);
                                regions.push(rows.as_ptr().cast(), rows.len());
                            }
                        }
                        regions
                    };
                    let last = runs
                        .iter()
                        .map(|r| r.at + 4 * r.groups.saturating_sub(1))
                        .max()
                        .unwrap_or(0)
                        + (ow_n - 1) * sw * c;
                    assert!(last + 4 <= src.len() + 3 * usize::from(!self.needs_copy));
                    let out = y_row[panels.start * PANEL..].as_mut_ptr().cast::<u8>();
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `supported()` was checked by the caller; the assert above
                    // keeps every 4-byte read inside `src` (the ring has SLACK bytes past
                    // its last slot; in place, segments are whole groups so the last read
                    // ends inside the input), and `y_row` holds `ow_n` pixels of `c_out`
                    // bytes.
                    unsafe {
                        super::direct_avx512::row(
                            self,
                            epi,
                            src.as_ptr(),
                            &runs,
                            sw * c,
                            ow_n,
                            panels.clone(),
                            out,
                            g.c_out,
                            self.row_prefetch(&blocks, bi, r, rows, next_rows),
                        )
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    unreachable!("the direct path exists on x86_64 only: {out:?}");
                    #[cfg_attr(not(target_arch = "x86_64"), allow(unreachable_code))]
                    if let Some(finish) = finish.filter(|_| bi + 1 == blocks.len()) {
                        // SAFETY: the blocks cover every panel and run in order, so after the
                        // last one the kernel has stored every byte of this row (the last
                        // panel's tail channels by masked stores): it is initialized.
                        let row = unsafe { &mut *(y_row as *mut [MaybeUninit<u8>] as *mut [u8]) };
                        finish(n * oh_n + oh0 + r, row);
                    }
                }
            }
        });
        Ok(())
    }

    /// What row `r` of `rows` prefetches while computing weight block `blocks[bi]`: the first
    /// row of the first block meets its weights cold and pulls each next tile's in as it goes;
    /// every row of a block pulls in its share of the next block, so that block starts warm.
    /// Rows of the last block pull in `next_rows`, the input the next output row reads first,
    /// from a tensor or from each input of a concatenation (2% on a 32-channel 256x256 layer
    /// whose 2 MB input is no longer in L2, 2-4 % on UNet's `d1.0` reading a concatenation).
    #[cfg(target_arch = "x86_64")]
    fn row_prefetch(
        &self,
        blocks: &[std::ops::Range<usize>],
        bi: usize,
        r: usize,
        rows: usize,
        next_rows: crate::prefetch::Regions,
    ) -> super::direct_avx512::RowPrefetch {
        use super::direct_avx512::RowPrefetch;
        use crate::prefetch::Regions;
        if bi == 0 && r == 0 {
            return RowPrefetch::NextTiles;
        }
        let Some(next) = blocks.get(bi + 1) else {
            return RowPrefetch::Regions(next_rows);
        };
        // The first block's first row is busy with its own weights.
        let (part, parts) = if bi == 0 { (r - 1, rows - 1) } else { (r, rows) };
        let bytes = next.len() * self.groups_total * PANEL_ROW;
        let (from, to) = (part * bytes / parts / 64 * 64, (part + 1) * bytes / parts / 64 * 64);
        let mut regions = Regions::new();
        regions.push(
            self.weights[next.start * self.groups_total..]
                .as_ptr()
                .cast::<i8>()
                .wrapping_add(from),
            to - from,
        );
        RowPrefetch::Regions(regions)
    }

    /// The requantization constants of a call with input zero point `x_zp` and `rq`, in the
    /// kernel's layout (kept between calls by the caller).
    pub(crate) fn epilogue(&self, x_zp: i32, rq: &ConvRequant) -> Epilogue {
        Epilogue::new(self, x_zp, rq)
    }

    /// Whether [`DirectConv::run`] copies its input rows (so it can take them from a
    /// [`InputRows::Concat`]).
    pub(crate) fn copies_rows(&self) -> bool {
        self.needs_copy
    }

    pub(crate) fn c_out(&self) -> usize {
        self.geometry.c_out
    }

    /// Whether [`DirectConv::run_spread`] applies: a 1x1 unpadded stride-1 kernel over whole
    /// 4-byte groups whose `c_out` columns split into `kh` runs of whole panels.
    pub(crate) fn can_spread(&self, kh: usize) -> bool {
        let g = &self.geometry;
        g.kernel == (1, 1)
            && g.stride == (1, 1)
            && !self.needs_copy
            && g.c_out.is_multiple_of(kh)
            && (g.c_out / kh).is_multiple_of(PANEL)
    }

    /// A 1x1 product whose `c_out` columns are `kh` runs of `kw * c` (a non-overlapping
    /// `ConvTranspose2d` with kernel = stride = `(kh, kw)`), written straight to the transposed
    /// convolution's NHWC output `[n, h * kh, w * kw, c]`: run `t` of input pixel `(i, j)` is
    /// output pixels `j * kw ..` of output row `i * kh + t`, one contiguous run of bytes.
    /// Every byte of `y` is stored (it may start uninitialized).
    /// Requires [`DirectConv::can_spread`]; the caller has checked `y` holds
    /// `n * h * w * c_out` bytes and that the CPU runs the kernel ([`supported`]).
    pub(crate) fn run_spread(
        &self,
        x: &[u8],
        xs: NhwcShape,
        epi: &Epilogue,
        kh: usize,
        y: &mut [MaybeUninit<u8>],
    ) -> Result<()> {
        let c = self.geometry.c_in;
        debug_assert!(self.can_spread(kh) && xs.c == c && y.len() == xs.n * xs.h * xs.w * self.geometry.c_out);
        let run = self.geometry.c_out / kh;
        let panels_per_run = run / PANEL;
        // One segment of whole groups: group `i` reads bytes `4i..4i + 4` of each pixel.
        let runs = [GroupRun {
            at: 0,
            groups: self.groups_total,
        }];
        let out_row = xs.w * run;
        let rows: Vec<_> = y.chunks_mut(kh * out_row).zip(x.chunks(xs.w * c)).collect();
        crate::team::for_each_item(rayon::current_num_threads(), rows, &|(y_rows, x_row)| {
            for (t, y_row) in y_rows.chunks_exact_mut(out_row).enumerate() {
                let panels = t * panels_per_run..(t + 1) * panels_per_run;
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `supported()` was checked by the caller; the last group of the last
                // pixel ends at byte `c` of it (`c` is a multiple of 4: no copy needed), and
                // `y_row` holds `w` pixels of `run` bytes, the columns of `panels`.
                unsafe {
                    let out = y_row.as_mut_ptr().cast::<u8>();
                    super::direct_avx512::row(
                        self,
                        epi,
                        x_row.as_ptr(),
                        &runs,
                        c,
                        xs.w,
                        panels,
                        out,
                        run,
                        super::direct_avx512::RowPrefetch::None,
                    )
                }
                #[cfg(not(target_arch = "x86_64"))]
                unreachable!("the direct path exists on x86_64 only: {panels:?} {y_row:?}");
            }
        });
        Ok(())
    }

    /// Panel ranges whose packed weights fit [`WEIGHT_BLOCK_BYTES`] (at least two panels, one
    /// register tile wide): a band computes every row of one range before the next, so deep
    /// layers reuse the range's weights from L2 instead of streaming all of them per row.
    fn panel_blocks(&self) -> impl Iterator<Item = std::ops::Range<usize>> {
        let per_panel = self.groups_total * PANEL_ROW;
        let size = (WEIGHT_BLOCK_BYTES / per_panel).max(2).min(self.panels);
        // Whole register tiles (pairs of panels) per block, except for the very last one.
        let size = if size < self.panels { size & !1 } else { size };
        let panels = self.panels;
        (0..panels.div_ceil(size)).map(move |b| b * size..((b + 1) * size).min(panels))
    }
}

/// Requantization constants of one set of call parameters, zero-padded to whole panels.
pub(crate) struct Epilogue {
    /// `-x_zp * sum w` per channel.
    pub(crate) offset: Vec<i32>,
    pub(crate) bias_term: Vec<f32>,
    pub(crate) multiplier: Vec<f32>,
    pub(crate) zero_point: i32,
    pub(crate) lo: i32,
    pub(crate) hi: i32,
    /// Whether the requantization needs its float clamp (only for huge sums or multipliers).
    pub(crate) float_clamp: bool,
}

impl Epilogue {
    fn new(p: &DirectConv, x_zp: i32, rq: &ConvRequant) -> Epilogue {
        let padded = p.panels * PANEL;
        let c = p.geometry.c_out;
        let pad = |v: &[f32]| (0..padded).map(|j| if j < c { v[j] } else { 0.0 }).collect();
        // |sum (x - x_zp) * w| <= depth * 255 * 128.
        let acc_bound = (p.geometry.depth() * 255 * 128) as f64;
        #[cfg(target_arch = "x86_64")]
        let float_clamp = super::requant::avx512::float_clamp_needed(acc_bound, &rq.bias_term, &rq.multiplier);
        #[cfg(not(target_arch = "x86_64"))]
        let float_clamp = acc_bound.is_finite();
        Epilogue {
            float_clamp,
            offset: p.weight_sums.iter().map(|&s| s.wrapping_mul(-x_zp)).collect(),
            bias_term: pad(&rq.bias_term),
            multiplier: pad(&rq.multiplier),
            zero_point: rq.zero_point,
            lo: rq.lo,
            hi: rq.hi,
        }
    }
}
