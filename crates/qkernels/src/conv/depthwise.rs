//! Depthwise convolution (one input and one output channel per group, MobileNet's 3x3 and 5x5
//! layers) as a direct kernel over NHWC rows: for every output pixel, one pointer per kernel tap
//! (a tap outside the input points at a row filled with the input zero point), then all
//! channels of that pixel at once.
//!
//! Paths: [`DepthwisePath::Portable`] (plain loops, i32 accumulators) and
//! [`DepthwisePath::Avx512Vnni`] (see `depthwise_avx512.rs`). Both produce the integers of the
//! reference convolution; any kernel size, stride and dilation is accepted by both.
//!
//! Arithmetic ([`ConvArithmetic`]): `Exact` sums `(x - x_zp) * (w - w_zp)` exactly.
//! `FbgemmParity` reproduces fbgemm's depthwise kernel wherever PyTorch runs it (3x3 or 5x5,
//! stride 1 or 2, dilation 1, "same" padding, channels a multiple of 8): that kernel adds the raw
//! products `x * w` of taps (0, 1), (2, 3), ... in pairs with `vpmaddubsw`, which saturates each
//! pair sum to i16, and only then widens to i32 and subtracts `x_zp * sum w` (and
//! `w_zp * sum x`). Results differ from `Exact` only when a pair sum leaves the i16 range, which
//! needs activations above 127 (PyTorch's default `reduce_range` activations never get there).

#[cfg(target_arch = "x86_64")]
use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
use super::call_cache::CallCache;
use super::geometry::Conv2dGeometry;
use super::requant::{ConvRequant, ConvWeightQuant};
use super::{ConvArithmetic, NhwcShape};
use crate::{KernelError, Result};

/// Taps are processed four at a time by the VNNI kernel (`vpdpbusd` sums 4 byte products).
pub(crate) const TAP_GROUP: usize = 4;

/// A depthwise kernel implementation. All give identical integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DepthwisePath {
    Portable,
    /// One output pixel at a time, 64 or 16 channels per step.
    Avx512Vnni,
    /// One output row at a time as a flat byte vector (see [`PackedDepthwise::run`]); channel
    /// counts with too many 64-byte weight patterns fall back to [`DepthwisePath::Avx512Vnni`].
    Avx512VnniRows,
}

impl DepthwisePath {
    /// The paths this CPU can run, slowest first.
    pub fn available() -> Vec<DepthwisePath> {
        let mut paths = vec![DepthwisePath::Portable];
        #[cfg(target_arch = "x86_64")]
        if super::depthwise_avx512::supported() {
            paths.push(DepthwisePath::Avx512Vnni);
            paths.push(DepthwisePath::Avx512VnniRows);
        }
        paths
    }

    /// The fastest available path (honours `QFORGE_KERNEL=reference`).
    pub fn best() -> DepthwisePath {
        if crate::conv::forced_reference() {
            return DepthwisePath::Portable;
        }
        *Self::available().last().expect("portable path always exists")
    }
}

/// Depthwise weights packed once: tap-major for the portable loop, and interleaved in groups
/// of four taps for the VNNI kernel.
#[derive(Debug, Clone)]
pub struct PackedDepthwise {
    pub(crate) geometry: Conv2dGeometry,
    /// `[taps][c]`.
    pub(crate) tap_major: Vec<i8>,
    /// Per channel `sum_t w[t][c]` over the real taps.
    pub(crate) weight_sums: Vec<i32>,
    /// Per channel weight zero point.
    pub(crate) weight_zps: Vec<i32>,
    pub(crate) symmetric: bool,
    /// Tap pairs saturate to i16 (fbgemm parity, see the module docs).
    pub(crate) saturating_pairs: bool,
    /// VNNI layout; see `depthwise_avx512::pack`.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) interleaved: Vec<i8>,
    /// Row-kernel layout (`depthwise_avx512::pack_rows`), empty when the channel count needs
    /// too many patterns.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) row_interleaved: Vec<i8>,
    /// The row kernel's plans by input width (see `call_cache`).
    #[cfg(target_arch = "x86_64")]
    row_plans: CallCache<usize, super::depthwise_avx512::RowPlan>,
}

/// The AVX-512 kernels' epilogues for one call's parameters, each built on its first use.
#[derive(Default)]
pub(crate) struct DepthwiseEpilogues {
    #[cfg(target_arch = "x86_64")]
    pixel: OnceLock<super::depthwise_avx512::Epilogue>,
    #[cfg(target_arch = "x86_64")]
    rows: OnceLock<super::depthwise_avx512::Epilogue>,
}

impl PackedDepthwise {
    /// Packs PyTorch-layout weights `[c, 1, kh, kw]` of a depthwise `geometry`.
    pub fn new(
        geometry: Conv2dGeometry,
        w: &[i8],
        wq: &ConvWeightQuant,
        arithmetic: ConvArithmetic,
    ) -> Result<PackedDepthwise> {
        geometry.validate()?;
        if !geometry.is_depthwise() {
            return Err(KernelError::Param {
                op: "depthwise conv2d",
                detail: format!(
                    "groups {} with c_in {} and c_out {} is not depthwise; use the general convolution",
                    geometry.groups, geometry.c_in, geometry.c_out
                ),
            });
        }
        let c = geometry.c_out;
        let taps = geometry.taps();
        if w.len() != c * taps {
            return Err(KernelError::Shape {
                op: "depthwise conv2d",
                detail: format!("weights have {} values, expected c * kh * kw = {}", w.len(), c * taps),
            });
        }
        wq.check_channels("depthwise conv2d", c)?;
        let mut tap_major = vec![0i8; taps * c];
        let mut weight_sums = vec![0i32; c];
        for ch in 0..c {
            for t in 0..taps {
                let v = w[ch * taps + t];
                tap_major[t * c + ch] = v;
                weight_sums[ch] += v as i32;
            }
        }
        let weight_zps: Vec<i32> = (0..c).map(|ch| wq.zero_point(ch)).collect();
        #[cfg(target_arch = "x86_64")]
        let interleaved = super::depthwise_avx512::pack(&tap_major, c, taps);
        #[cfg(not(target_arch = "x86_64"))]
        let interleaved = Vec::new();
        #[cfg(target_arch = "x86_64")]
        let row_interleaved = if super::depthwise_avx512::row_patterns(c) <= super::depthwise_avx512::MAX_ROW_PATTERNS {
            super::depthwise_avx512::pack_rows(&tap_major, c, taps)
        } else {
            Vec::new()
        };
        #[cfg(not(target_arch = "x86_64"))]
        let row_interleaved = Vec::new();
        Ok(PackedDepthwise {
            geometry,
            tap_major,
            weight_sums,
            symmetric: wq.is_symmetric(),
            saturating_pairs: arithmetic == ConvArithmetic::FbgemmParity && fbgemm_runs_depthwise(&geometry),
            weight_zps,
            interleaved,
            row_interleaved,
            #[cfg(target_arch = "x86_64")]
            row_plans: CallCache::new(),
        })
    }

    pub fn geometry(&self) -> &Conv2dGeometry {
        &self.geometry
    }

    /// Runs the convolution on `path`; `y` is `[n, oh, ow, c]`, rows split across threads
    /// (each output row is computed by one thread, so results do not depend on the thread count).
    pub fn run(
        &self,
        path: DepthwisePath,
        x: &[u8],
        xs: NhwcShape,
        x_zp: i32,
        rq: &ConvRequant,
        y: &mut [u8],
    ) -> Result<()> {
        self.run_prepared(path, x, xs, x_zp, rq, &DepthwiseEpilogues::default(), y)
    }

    /// [`PackedDepthwise::run`] taking the kernel epilogues from `epilogues`, built there on
    /// first use for `x_zp` and `rq` (the caller keeps them for later calls with the same ones).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run_prepared(
        &self,
        path: DepthwisePath,
        x: &[u8],
        xs: NhwcShape,
        x_zp: i32,
        rq: &ConvRequant,
        epilogues: &DepthwiseEpilogues,
        y: &mut [u8],
    ) -> Result<()> {
        if !DepthwisePath::available().contains(&path) {
            return Err(KernelError::PathUnavailable {
                path: format!("{path:?}"),
                available: format!("{:?}", DepthwisePath::available()),
            });
        }
        let path = match path {
            DepthwisePath::Avx512VnniRows if self.row_interleaved.is_empty() => DepthwisePath::Avx512Vnni,
            p => p,
        };
        #[cfg(target_arch = "x86_64")]
        if path == DepthwisePath::Avx512VnniRows {
            let epi = epilogues
                .rows
                .get_or_init(|| super::depthwise_avx512::Epilogue::for_rows(self, x_zp, rq));
            self.run_rows(x, xs, x_zp, epi, y)?;
            return Ok(());
        }
        let g = &self.geometry;
        let c = g.c_out;
        let (oh_n, ow_n) = g.output_hw(xs.h, xs.w)?;
        let zp_row = vec![x_zp as u8; c];
        let row_len = ow_n * c;
        #[cfg(target_arch = "x86_64")]
        let epilogue = (path == DepthwisePath::Avx512Vnni).then(|| {
            epilogues
                .pixel
                .get_or_init(|| super::depthwise_avx512::Epilogue::new(self, x_zp, rq))
        });
        let rows: Vec<(usize, &mut [u8])> = y.chunks_mut(row_len).enumerate().collect();
        crate::team::for_each_item(rayon::current_num_threads(), rows, &|(row, out_row)| {
            let n = row / oh_n;
            let oh = row % oh_n;
            let mut taps: Vec<&[u8]> = Vec::with_capacity(g.taps().next_multiple_of(TAP_GROUP));
            for ow in 0..ow_n {
                taps.clear();
                for kh in 0..g.kernel.0 {
                    let ih = (oh * g.stride.0 + kh * g.dilation.0) as i64 - g.padding.0 as i64;
                    for kw in 0..g.kernel.1 {
                        let iw = (ow * g.stride.1 + kw * g.dilation.1) as i64 - g.padding.1 as i64;
                        if ih < 0 || iw < 0 || ih >= xs.h as i64 || iw >= xs.w as i64 {
                            taps.push(&zp_row);
                        } else {
                            let at = xs.offset(n, ih as usize, iw as usize);
                            taps.push(&x[at..at + c]);
                        }
                    }
                }
                let out = &mut out_row[ow * c..(ow + 1) * c];
                match path {
                    DepthwisePath::Portable => self.pixel_portable(&taps, x_zp, rq, out),
                    #[cfg(target_arch = "x86_64")]
                    DepthwisePath::Avx512Vnni => {
                        while !taps.len().is_multiple_of(TAP_GROUP) {
                            taps.push(&zp_row);
                        }
                        let epi = epilogue.expect("built for this path");
                        // SAFETY: the path is available (checked above), every tap slice holds
                        // `c` bytes and `out` holds `c` bytes.
                        unsafe { super::depthwise_avx512::pixel(self, &taps, epi, out) }
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    DepthwisePath::Avx512Vnni => unreachable!("not available off x86_64"),
                    DepthwisePath::Avx512VnniRows => unreachable!("handled by run_rows"),
                }
            }
        });
        Ok(())
    }

    /// The row kernel: a task computes a band of output rows, each as one flat loop over its
    /// `ow_n * c` bytes that reads the input rows in place (see `depthwise_avx512::row`); rows
    /// above or below the input read a row of zero points, pixels left or right of it are
    /// masked to the zero point inside the kernel.
    #[cfg(target_arch = "x86_64")]
    fn run_rows(
        &self,
        x: &[u8],
        xs: NhwcShape,
        x_zp: i32,
        epi: &super::depthwise_avx512::Epilogue,
        y: &mut [u8],
    ) -> Result<()> {
        let g = &self.geometry;
        let c = g.c_out;
        let (oh_n, ow_n) = g.output_hw(xs.h, xs.w)?;
        let (sh, dh, ph) = (g.stride.0, g.dilation.0, g.padding.0);
        let in_row = xs.w * c;
        let zp_row = vec![x_zp as u8; in_row];
        let plan = self
            .row_plans
            .get_or_try_insert(xs.w, || Ok(super::depthwise_avx512::RowPlan::new(g, xs.w, ow_n)))?;
        let out_row = ow_n * c;
        let threads = rayon::current_num_threads();
        let image = xs.h * in_row;
        let (band, bands) = super::output_bands(y, xs.n, oh_n, out_row, threads);
        crate::team::for_each_item(threads, bands, &|(n, b, y_band)| {
            let x_img = &x[n * image..(n + 1) * image];
            let mut taps: Vec<*const u8> = Vec::with_capacity(g.taps());
            for (r, out) in y_band.chunks_exact_mut(out_row).enumerate() {
                let oh = b * band + r;
                taps.clear();
                for (t, &px) in plan.tap_px().iter().enumerate() {
                    let ih = (oh * sh + (t / g.kernel.1) * dh) as i64 - ph as i64;
                    let src = if ih < 0 || ih >= xs.h as i64 {
                        &zp_row[..]
                    } else {
                        &x_img[ih as usize * in_row..][..in_row]
                    };
                    taps.push(src.as_ptr().wrapping_offset(px * c as isize));
                }
                // SAFETY: the row path is available (checked by `run`); every tap's row
                // (an input row or the zero-point row) holds `xs.w * c` bytes; `out` is
                // one output row of `ow_n` pixels as the plan describes; the weights and
                // epilogue are this convolution's row layout.
                unsafe { super::depthwise_avx512::row(self, &self.row_interleaved, &plan, &taps, x_zp as u8, epi, out) }
            }
        });
        Ok(())
    }

    /// One output pixel, all channels.
    fn pixel_portable(&self, taps: &[&[u8]], x_zp: i32, rq: &ConvRequant, out: &mut [u8]) {
        let c = out.len();
        let mut acc = vec![0i32; c];
        if self.saturating_pairs {
            let mut xsum = vec![0i32; c];
            for (p, pair) in taps.chunks(2).enumerate() {
                let w0 = &self.tap_major[2 * p * c..(2 * p + 1) * c];
                let w1 = (pair.len() == 2).then(|| &self.tap_major[(2 * p + 1) * c..(2 * p + 2) * c]);
                for ch in 0..c {
                    let mut s = pair[0][ch] as i32 * w0[ch] as i32;
                    xsum[ch] += pair[0][ch] as i32;
                    if let Some(w1) = w1 {
                        s += pair[1][ch] as i32 * w1[ch] as i32;
                        xsum[ch] += pair[1][ch] as i32;
                    }
                    acc[ch] += s.clamp(i16::MIN as i32, i16::MAX as i32);
                }
            }
            let taps_n = taps.len() as i32;
            for ch in 0..c {
                let wzp = self.weight_zps[ch];
                acc[ch] += -x_zp * self.weight_sums[ch] - wzp * xsum[ch] + taps_n * x_zp * wzp;
            }
        } else {
            for (t, tap) in taps.iter().enumerate() {
                let w = &self.tap_major[t * c..(t + 1) * c];
                for ch in 0..c {
                    acc[ch] += (tap[ch] as i32 - x_zp) * (w[ch] as i32 - self.weight_zps[ch]);
                }
            }
        }
        for ch in 0..c {
            out[ch] = rq.apply(ch, acc[ch]);
        }
    }
}

/// True where PyTorch's fbgemm build runs its depthwise kernel (fbgemm `takeDepthWiseFastPath`
/// with one output channel per group): 3x3 or 5x5, stride 1 or 2, dilation 1, padding
/// `(k - 1) / 2`, channels a multiple of 8.
pub fn fbgemm_runs_depthwise(g: &Conv2dGeometry) -> bool {
    let k = g.kernel.0;
    g.is_depthwise()
        && g.c_in.is_multiple_of(8)
        && g.kernel.0 == g.kernel.1
        && (k == 3 || k == 5)
        && matches!(g.stride.0, 1 | 2)
        && matches!(g.stride.1, 1 | 2)
        && g.dilation == (1, 1)
        && g.padding == ((k - 1) / 2, (k - 1) / 2)
}
