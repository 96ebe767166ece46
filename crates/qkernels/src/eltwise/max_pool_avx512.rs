//! AVX-512 max pooling, one output row at a time, reading the input directly (no intermediate
//! row): the max of bytes is exact, so any order of taps gives the reference's bytes.
//!
//! Two kernels. The 2x2 stride-2 window of UNet-style downsampling ([`pairs_apply`]) takes the
//! max of the two input rows 64 bytes at a time, then of horizontally adjacent pixels: with
//! `C` channels dividing 64, a 64-byte output block comes from 128 bytes of the row max, whose
//! even and odd pixels two quadword permutes gather (`C` a multiple of 64 needs no permute).
//! Every other window runs the general kernel: per output pixel, the in-bounds taps (a
//! contiguous range on each axis) reduced 64 channels at a time, the last block masked.
//!
//! Safety contract of every function here: the CPU has AVX-512 F/BW/VL (callers check
//! `EltwisePath::Avx512` first), `x.len() == xs.len()`, and `out` is output row `(n, oh)` of
//! the pooling of `x` by `pool` (`ow_n * xs.c` bytes, `oh` and `ow_n` from
//! `Pool2d::output_hw`).

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::pool::{is_whole_2x2, taps_inside, Pool2d};
use crate::conv::NhwcShape;

/// The low `bytes` lanes of a 64-byte mask (`bytes <= 64`).
#[inline(always)]
fn low_lanes(bytes: usize) -> __mmask64 {
    if bytes >= 64 {
        !0
    } else {
        (1u64 << bytes) - 1
    }
}

/// Whether [`max_pool_row`] takes the dedicated 2x2 stride-2 kernel for row `oh`: whole
/// windows ([`is_whole_2x2`]) and a channel count that a 64-byte block holds whole pixels of,
/// or that is whole blocks.
fn pairs_apply(xs: NhwcShape, pool: &Pool2d, oh: usize, ow_n: usize) -> bool {
    is_whole_2x2(xs, pool, oh, ow_n) && xs.c.is_multiple_of(8) && (64 % xs.c == 0 || xs.c.is_multiple_of(64))
}

/// Output row `(n, oh)` of max pooling (see the module docs for the contract).
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn max_pool_row(
    x: &[u8],
    xs: NhwcShape,
    pool: &Pool2d,
    n: usize,
    oh: usize,
    out: &mut [MaybeUninit<u8>],
) {
    if pairs_apply(xs, pool, oh, out.len() / xs.c) {
        // SAFETY: the caller's contract, and `is_whole_2x2` (rows 2 * oh and 2 * oh + 1 exist,
        // 2 * ow_n columns fit in a row).
        unsafe { row_pairs(x, xs, n, oh, out) }
    } else {
        // SAFETY: the caller's contract.
        unsafe { row_general(x, xs, pool, n, oh, out) }
    }
}

/// `out[ow][ch] = max` of input rows `2 oh`, `2 oh + 1`, columns `2 ow`, `2 ow + 1`, channel
/// `ch`. Needs [`pairs_apply`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn row_pairs(x: &[u8], xs: NhwcShape, n: usize, oh: usize, out: &mut [MaybeUninit<u8>]) {
    let c = xs.c;
    let len = out.len();
    // Each output byte `j` reads bytes below `2 * len` of the two input rows.
    assert!(2 * len <= xs.w * c && 2 * oh + 1 < xs.h && x.len() == xs.len());
    let r0 = x[xs.offset(n, 2 * oh, 0)..].as_ptr();
    let r1 = x[xs.offset(n, 2 * oh + 1, 0)..].as_ptr();
    // Output bytes are written only through `d`.
    let d = out.as_mut_ptr() as *mut u8;
    if c.is_multiple_of(64) {
        let mut j = 0;
        while j < len {
            // Output block `j` is channels `ch..ch + 64` of pixel `ow`: input columns `2 ow` and
            // `2 ow + 1` at the same channels.
            let (ow, ch) = (j / c, j % c);
            let at = 2 * ow * c + ch;
            // SAFETY: `at + c + 64 <= 2 * (ow + 1) * c <= 2 * len`, inside both rows (asserted);
            // `j + 64 <= len` as `len` is a multiple of `c`, itself of 64.
            unsafe {
                let a = _mm512_max_epu8(_mm512_loadu_si512(r0.add(at) as _), _mm512_loadu_si512(r1.add(at) as _));
                let b = _mm512_max_epu8(
                    _mm512_loadu_si512(r0.add(at + c) as _),
                    _mm512_loadu_si512(r1.add(at + c) as _),
                );
                _mm512_storeu_si512(d.add(j) as _, _mm512_max_epu8(a, b));
            }
            j += 64;
        }
        return;
    }
    // 64 / c pixels per output block, from 128 / c pixels of the rows' max held in `a` (the
    // first 64 bytes) and `b` (the next 64): quadword `i` of the output is quadword `j` of
    // pixel `p` (`q = c / 8` quadwords a pixel, `i = p q + j`), the max of that quadword in
    // input pixels `2 p` (index `2 p q + j`) and `2 p + 1` (index `(2 p + 1) q + j`), where
    // indices 8.. select from `b`.
    let q = c / 8;
    let mut even = [0i64; 8];
    let mut odd = [0i64; 8];
    for i in 0..8 {
        let (p, j) = (i / q, i % q);
        even[i] = (2 * p * q + j) as i64;
        odd[i] = ((2 * p + 1) * q + j) as i64;
    }
    let even = _mm512_loadu_epi64(even.as_ptr());
    let odd = _mm512_loadu_epi64(odd.as_ptr());
    let mut j = 0;
    while j + 64 <= len {
        // SAFETY: bytes `2 j .. 2 j + 128 <= 2 len` of both rows (asserted), output bytes
        // `j .. j + 64 <= len`.
        unsafe {
            let at = 2 * j;
            let a = _mm512_max_epu8(_mm512_loadu_si512(r0.add(at) as _), _mm512_loadu_si512(r1.add(at) as _));
            let b = _mm512_max_epu8(
                _mm512_loadu_si512(r0.add(at + 64) as _),
                _mm512_loadu_si512(r1.add(at + 64) as _),
            );
            let m = _mm512_max_epu8(
                _mm512_permutex2var_epi64(a, even, b),
                _mm512_permutex2var_epi64(a, odd, b),
            );
            _mm512_storeu_si512(d.add(j) as _, m);
        }
        j += 64;
    }
    if j < len {
        // The last `rest < 64` output bytes (whole pixels) read `2 rest` input bytes; lanes past
        // them load as zero and land only in output lanes past `rest`, which are not stored.
        let rest = len - j;
        let (ma, mb) = (low_lanes(2 * rest), low_lanes((2 * rest).saturating_sub(64)));
        // SAFETY: masked loads touch only the selected bytes `2 j .. 2 len` of each row, the
        // masked store only output bytes `j .. len`.
        unsafe {
            let at = 2 * j;
            let a = _mm512_max_epu8(
                _mm512_maskz_loadu_epi8(ma, r0.add(at) as _),
                _mm512_maskz_loadu_epi8(ma, r1.add(at) as _),
            );
            let b = _mm512_max_epu8(
                _mm512_maskz_loadu_epi8(mb, r0.add(at + 64) as _),
                _mm512_maskz_loadu_epi8(mb, r1.add(at + 64) as _),
            );
            let m = _mm512_max_epu8(
                _mm512_permutex2var_epi64(a, even, b),
                _mm512_permutex2var_epi64(a, odd, b),
            );
            _mm512_mask_storeu_epi8(d.add(j) as _, low_lanes(rest), m);
        }
    }
}

/// Any window: per output pixel, the max over its in-bounds taps, 64 channels at a time (0
/// when no tap is inside, as in the reference).
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn row_general(x: &[u8], xs: NhwcShape, pool: &Pool2d, n: usize, oh: usize, out: &mut [MaybeUninit<u8>]) {
    let c = xs.c;
    assert!(x.len() == xs.len() && out.len().is_multiple_of(c));
    let rows = taps_inside(oh, pool.kernel.0, pool.stride.0, pool.dilation.0, pool.padding.0, xs.h);
    let tail = low_lanes(c % 64);
    let src = x.as_ptr();
    let d = out.as_mut_ptr() as *mut u8;
    for ow in 0..out.len() / c {
        let cols = taps_inside(ow, pool.kernel.1, pool.stride.1, pool.dilation.1, pool.padding.1, xs.w);
        let mut ch = 0;
        while ch < c {
            let mask = if ch + 64 <= c { !0 } else { tail };
            let mut acc = _mm512_setzero_si512();
            for kh in rows.clone() {
                let ih = oh * pool.stride.0 + kh * pool.dilation.0 - pool.padding.0;
                for kw in cols.clone() {
                    let iw = ow * pool.stride.1 + kw * pool.dilation.1 - pool.padding.1;
                    // SAFETY: `taps_inside` keeps `ih < xs.h` and `iw < xs.w`, and the mask
                    // selects channels below `c`: every loaded byte is inside `x`.
                    let v = unsafe { _mm512_maskz_loadu_epi8(mask, src.add(xs.offset(n, ih, iw) + ch) as _) };
                    acc = _mm512_max_epu8(acc, v);
                }
            }
            // SAFETY: pixel `ow` of `out`, channels `ch ..` selected by the mask (below `c`).
            unsafe { _mm512_mask_storeu_epi8(d.add(ow * c + ch) as _, mask, acc) };
            ch += 64;
        }
    }
}
