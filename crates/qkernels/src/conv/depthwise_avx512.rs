//! AVX-512 VNNI depthwise kernel. Four taps of 64 channels are interleaved with two rounds of
//! byte/word unpacks so that each 32-bit lane holds the four taps of one channel; one
//! `vpdpbusd` then adds four exact u8 x s8 products per channel into an i32 accumulator (no
//! saturation anywhere). The unpacks permute channels inside each 128-bit lane; weights and
//! epilogue constants are stored in that permuted order at pack/call time, and the final
//! `packs`/`packus` undo the permutation, so bytes leave in channel order.
//!
//! Exactness: the accumulator is `sum x * w` over the taps (padding taps read the input zero
//! point); the correction `- x_zp * sum w - w_zp * sum x + taps * x_zp * w_zp` makes it the
//! reference's `sum (x - x_zp) * (w - w_zp)`. For fbgemm parity (see `depthwise.rs`) the
//! products of taps (4g, 4g+1) and (4g+2, 4g+3) are summed with the saturating `vpmaddubsw`
//! first, exactly as fbgemm pairs them, and `vpdpwssd` widens the two pair sums. The float epilogue is the shared
//! `requant::avx512::requant16`. Channels left after the 64-wide blocks run in
//! 16-wide blocks with masked loads and stores.

use std::arch::asm;
use std::arch::x86_64::*;

use super::depthwise::{PackedDepthwise, TAP_GROUP};
use super::requant::avx512::requant16 as requant16_shared;
use super::requant::ConvRequant;

const WIDE: usize = 64;
const NARROW: usize = 16;
/// Bytes of interleaved weights per 64-channel block and tap group.
const WIDE_GROUP_BYTES: usize = WIDE * TAP_GROUP;
const NARROW_GROUP_BYTES: usize = NARROW * TAP_GROUP;

pub fn supported() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

/// Channel held by i32 element `e` of accumulator `r` of a 64-channel block (see module docs).
#[inline]
fn wide_channel(r: usize, e: usize) -> usize {
    16 * (e / 4) + 4 * r + e % 4
}

/// Interleaves `[taps][c]` weights: 64-channel blocks then 16-channel blocks, each as tap groups
/// of four, zero-filled past the last tap and the last channel.
pub fn pack(tap_major: &[i8], c: usize, taps: usize) -> Vec<i8> {
    let groups = taps.div_ceil(TAP_GROUP);
    let w = |t: usize, ch: usize| if t < taps && ch < c { tap_major[t * c + ch] } else { 0 };
    let wide_blocks = c / WIDE;
    let narrow_blocks = (c - wide_blocks * WIDE).div_ceil(NARROW);
    let mut out = Vec::with_capacity(groups * (wide_blocks * WIDE_GROUP_BYTES + narrow_blocks * NARROW_GROUP_BYTES));
    for b in 0..wide_blocks {
        for g in 0..groups {
            for r in 0..4 {
                for e in 0..16 {
                    for t in 0..TAP_GROUP {
                        out.push(w(g * TAP_GROUP + t, b * WIDE + wide_channel(r, e)));
                    }
                }
            }
        }
    }
    for b in 0..narrow_blocks {
        let base = wide_blocks * WIDE + b * NARROW;
        for g in 0..groups {
            for e in 0..NARROW {
                for t in 0..TAP_GROUP {
                    out.push(w(g * TAP_GROUP + t, base + e));
                }
            }
        }
    }
    out
}

/// Per-call epilogue constants in kernel order (permuted inside 64-channel blocks).
pub struct Epilogue {
    /// `-x_zp * sum w + taps_padded * x_zp * w_zp` per channel.
    offset: Vec<i32>,
    weight_zp: Vec<i32>,
    bias_term: Vec<f32>,
    multiplier: Vec<f32>,
    zero_point: i32,
    lo: u8,
    hi: u8,
}

impl Epilogue {
    pub fn new(p: &PackedDepthwise, x_zp: i32, rq: &ConvRequant) -> Epilogue {
        let c = p.geometry.c_out;
        let taps_padded = p.geometry.taps().next_multiple_of(TAP_GROUP) as i32;
        let wide_blocks = c / WIDE;
        let padded = wide_blocks * WIDE + (c - wide_blocks * WIDE).next_multiple_of(NARROW);
        let order: Vec<usize> = (0..padded)
            .map(|i| {
                if i < wide_blocks * WIDE {
                    let (b, within) = (i / WIDE, i % WIDE);
                    b * WIDE + wide_channel(within / 16, within % 16)
                } else {
                    i
                }
            })
            .collect();
        let get = |ch: usize| ch < c;
        Epilogue {
            offset: order
                .iter()
                .map(|&ch| {
                    if get(ch) {
                        -x_zp * p.weight_sums[ch] + taps_padded * x_zp * p.weight_zps[ch]
                    } else {
                        0
                    }
                })
                .collect(),
            weight_zp: order
                .iter()
                .map(|&ch| if get(ch) { p.weight_zps[ch] } else { 0 })
                .collect(),
            bias_term: order
                .iter()
                .map(|&ch| if get(ch) { rq.bias_term[ch] } else { 0.0 })
                .collect(),
            multiplier: order
                .iter()
                .map(|&ch| if get(ch) { rq.multiplier[ch] } else { 0.0 })
                .collect(),
            zero_point: rq.zero_point,
            lo: rq.lo as u8,
            hi: rq.hi as u8,
        }
    }
}

/// One output pixel, all channels.
///
/// # Safety
/// The CPU supports AVX-512 F/BW/VL/VNNI; `taps.len()` is a multiple of 4 and equals the packed
/// tap count rounded up to 4; every tap slice and `out` hold `c` bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn pixel(p: &PackedDepthwise, taps: &[&[u8]], epi: &Epilogue, out: &mut [u8]) {
    let c = out.len();
    let groups = taps.len() / TAP_GROUP;
    debug_assert_eq!(groups, p.geometry.taps().div_ceil(TAP_GROUP));
    debug_assert!(taps.iter().all(|t| t.len() == c));
    let wide_blocks = c / WIDE;
    let w = p.interleaved.as_ptr();
    for b in 0..wide_blocks {
        let base = b * WIDE;
        let mut acc = [_mm512_setzero_si512(); 4];
        let mut xsum = [_mm512_setzero_si512(); 4];
        for g in 0..groups {
            // SAFETY: each tap slice holds `c >= base + 64` bytes.
            let t: [__m512i; 4] =
                std::array::from_fn(|i| _mm512_loadu_si512(taps[g * TAP_GROUP + i].as_ptr().add(base).cast()));
            let lo01 = _mm512_unpacklo_epi8(t[0], t[1]);
            let hi01 = _mm512_unpackhi_epi8(t[0], t[1]);
            let lo23 = _mm512_unpacklo_epi8(t[2], t[3]);
            let hi23 = _mm512_unpackhi_epi8(t[2], t[3]);
            let a = [
                _mm512_unpacklo_epi16(lo01, lo23),
                _mm512_unpackhi_epi16(lo01, lo23),
                _mm512_unpacklo_epi16(hi01, hi23),
                _mm512_unpackhi_epi16(hi01, hi23),
            ];
            // SAFETY: the packed buffer holds `groups` 256-byte groups per wide block.
            let wg = w.add((b * groups + g) * WIDE_GROUP_BYTES);
            for r in 0..4 {
                let wr = _mm512_loadu_si512(wg.add(r * 64).cast());
                acc[r] = if p.saturating_pairs {
                    _mm512_dpwssd_epi32(acc[r], _mm512_maddubs_epi16(a[r], wr), _mm512_set1_epi16(1))
                } else {
                    _mm512_dpbusd_epi32(acc[r], a[r], wr)
                };
                if !p.symmetric {
                    xsum[r] = _mm512_dpbusd_epi32(xsum[r], a[r], _mm512_set1_epi8(1));
                }
            }
        }
        let v: [__m512i; 4] = std::array::from_fn(|r| requant16(acc[r], xsum[r], epi, base + r * 16, p.symmetric));
        let packed = _mm512_packus_epi16(_mm512_packs_epi32(v[0], v[1]), _mm512_packs_epi32(v[2], v[3]));
        let clamped = _mm512_min_epu8(
            _mm512_max_epu8(packed, _mm512_set1_epi8(epi.lo as i8)),
            _mm512_set1_epi8(epi.hi as i8),
        );
        // SAFETY: `out` holds `c >= base + 64` bytes.
        _mm512_storeu_si512(out.as_mut_ptr().add(base).cast(), clamped);
    }
    let narrow_w = w.add(wide_blocks * groups * WIDE_GROUP_BYTES);
    let mut base = wide_blocks * WIDE;
    let mut b = 0;
    while base < c {
        let valid = (c - base).min(NARROW);
        let mask: __mmask16 = if valid == NARROW { !0 } else { (1u16 << valid) - 1 };
        let mut acc = _mm512_setzero_si512();
        let mut xsum = _mm512_setzero_si512();
        for g in 0..groups {
            // SAFETY: masked loads touch only the `valid` bytes inside each tap slice.
            let t: [__m128i; 4] =
                std::array::from_fn(|i| _mm_maskz_loadu_epi8(mask, taps[g * TAP_GROUP + i].as_ptr().add(base).cast()));
            let lo01 = _mm_unpacklo_epi8(t[0], t[1]);
            let hi01 = _mm_unpackhi_epi8(t[0], t[1]);
            let lo23 = _mm_unpacklo_epi8(t[2], t[3]);
            let hi23 = _mm_unpackhi_epi8(t[2], t[3]);
            let mut a = _mm512_castsi128_si512(_mm_unpacklo_epi16(lo01, lo23));
            a = _mm512_inserti32x4::<1>(a, _mm_unpackhi_epi16(lo01, lo23));
            a = _mm512_inserti32x4::<2>(a, _mm_unpacklo_epi16(hi01, hi23));
            a = _mm512_inserti32x4::<3>(a, _mm_unpackhi_epi16(hi01, hi23));
            // SAFETY: the packed buffer holds `groups` 64-byte groups per narrow block.
            let wg = narrow_w.add((b * groups + g) * NARROW_GROUP_BYTES);
            let wv = _mm512_loadu_si512(wg.cast());
            acc = if p.saturating_pairs {
                _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(a, wv), _mm512_set1_epi16(1))
            } else {
                _mm512_dpbusd_epi32(acc, a, wv)
            };
            if !p.symmetric {
                xsum = _mm512_dpbusd_epi32(xsum, a, _mm512_set1_epi8(1));
            }
        }
        let v = requant16(acc, xsum, epi, base, p.symmetric);
        let v = _mm512_min_epi32(
            _mm512_max_epi32(v, _mm512_set1_epi32(epi.lo as i32)),
            _mm512_set1_epi32(epi.hi as i32),
        );
        // SAFETY: the masked store writes only the `valid` bytes inside `out`.
        _mm_mask_storeu_epi8(out.as_mut_ptr().add(base).cast(), mask, _mm512_cvtepi32_epi8(v));
        base += NARROW;
        b += 1;
    }
}

/// Corrects 16 accumulators and requantizes them to i32 (zero point added, not yet clamped).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn requant16(acc: __m512i, xsum: __m512i, epi: &Epilogue, at: usize, symmetric: bool) -> __m512i {
    // SAFETY: the epilogue vectors are padded to a multiple of 16 past every block start.
    let mut corrected = _mm512_add_epi32(acc, _mm512_loadu_si512(epi.offset.as_ptr().add(at).cast()));
    if !symmetric {
        let wzp = _mm512_loadu_si512(epi.weight_zp.as_ptr().add(at).cast());
        corrected = _mm512_sub_epi32(corrected, _mm512_mullo_epi32(wzp, xsum));
    }
    requant16_shared(
        corrected,
        _mm512_loadu_ps(epi.bias_term.as_ptr().add(at)),
        _mm512_loadu_ps(epi.multiplier.as_ptr().add(at)),
        _mm512_set1_epi32(epi.zero_point),
    )
}

/// Most distinct 64-byte weight patterns the row kernel accepts (`c / gcd(c, 64)`); channel
/// counts needing more run pixel by pixel.
pub const MAX_ROW_PATTERNS: usize = 32;

/// Number of 64-byte patterns a flat row of `c`-channel pixels cycles through.
pub fn row_patterns(c: usize) -> usize {
    let (mut a, mut b) = (c, 64);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    c / a
}

/// Weights of the row kernel: for each of the `row_patterns(c)` 64-byte positions of a flat
/// output row (byte `i` of pattern `q` is channel `(64 q + i) % c`), each tap group of four,
/// the interleaved layout of the wide blocks above.
pub fn pack_rows(tap_major: &[i8], c: usize, taps: usize) -> Vec<i8> {
    let groups = taps.div_ceil(TAP_GROUP);
    let patterns = row_patterns(c);
    let w = |t: usize, ch: usize| if t < taps { tap_major[t * c + ch] } else { 0 };
    let mut out = Vec::with_capacity(patterns * groups * WIDE_GROUP_BYTES);
    for q in 0..patterns {
        for g in 0..groups {
            for r in 0..4 {
                for e in 0..16 {
                    for t in 0..TAP_GROUP {
                        out.push(w(g * TAP_GROUP + t, (q * WIDE + wide_channel(r, e)) % c));
                    }
                }
            }
        }
    }
    out
}

impl Epilogue {
    /// Constants of the row kernel: per pattern, 64 entries in kernel order.
    pub fn for_rows(p: &PackedDepthwise, x_zp: i32, rq: &ConvRequant) -> Epilogue {
        let c = p.geometry.c_out;
        let taps_padded = p.geometry.taps().next_multiple_of(TAP_GROUP) as i32;
        let order: Vec<usize> = (0..row_patterns(c) * WIDE)
            .map(|i| (i / WIDE * WIDE + wide_channel(i % WIDE / 16, i % 16)) % c)
            .collect();
        Epilogue {
            offset: order
                .iter()
                .map(|&ch| -x_zp * p.weight_sums[ch] + taps_padded * x_zp * p.weight_zps[ch])
                .collect(),
            weight_zp: order.iter().map(|&ch| p.weight_zps[ch]).collect(),
            bias_term: order.iter().map(|&ch| rq.bias_term[ch]).collect(),
            multiplier: order.iter().map(|&ch| rq.multiplier[ch]).collect(),
            zero_point: rq.zero_point,
            lo: rq.lo as u8,
            hi: rq.hi as u8,
        }
    }
}

/// One output row as a flat byte vector: `out[j] = requant(sum_t taps[t][j] * w[t][j % c])`,
/// 64 bytes at a time (the last block masked). `taps[t]` is the input the tap reads for output
/// byte 0, already shifted and phase-split so that output byte `j` reads `taps[t][j]`.
///
/// # Safety
/// The CPU supports AVX-512 F/BW/VL/VNNI; `taps.len()` is the packed tap count rounded up to
/// 4; every tap pointer has `out.len()` readable bytes; `weights` is `pack_rows` of `p` and
/// `epi` its `for_rows`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn row(p: &PackedDepthwise, weights: &[i8], taps: &[*const u8], epi: &Epilogue, out: &mut [u8]) {
    // The arithmetic flags become constants of the loop (no tests inside it).
    match (p.saturating_pairs, p.symmetric) {
        (true, true) => row_with::<true, true>(p, weights, taps, epi, out),
        (true, false) => row_with::<true, false>(p, weights, taps, epi, out),
        (false, true) => row_with::<false, true>(p, weights, taps, epi, out),
        (false, false) => row_with::<false, false>(p, weights, taps, epi, out),
    }
}

/// [`row`] for fixed `saturating_pairs` (`SAT`) and `symmetric` (`SYM`) flags of `p`.
///
/// # Safety
/// As [`row`], with `SAT == p.saturating_pairs` and `SYM == p.symmetric`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn row_with<const SAT: bool, const SYM: bool>(
    p: &PackedDepthwise,
    weights: &[i8],
    taps: &[*const u8],
    epi: &Epilogue,
    out: &mut [u8],
) {
    let len = out.len();
    let groups = taps.len() / TAP_GROUP;
    let patterns = row_patterns(p.geometry.c_out);
    let w = weights.as_ptr();
    let (lo, hi) = (_mm512_set1_epi8(epi.lo as i8), _mm512_set1_epi8(epi.hi as i8));
    let mut j0 = 0;
    let mut q = 0;
    while j0 < len {
        let valid = (len - j0).min(WIDE);
        let mask: __mmask64 = if valid == WIDE { !0 } else { (1u64 << valid) - 1 };
        let mut acc = [_mm512_setzero_si512(); 4];
        let mut xsum = [_mm512_setzero_si512(); 4];
        for g in 0..groups {
            // SAFETY: masked loads read only the `valid` bytes every tap pointer holds.
            let t: [__m512i; 4] =
                std::array::from_fn(|i| _mm512_maskz_loadu_epi8(mask, taps[g * TAP_GROUP + i].add(j0).cast()));
            let lo01 = _mm512_unpacklo_epi8(t[0], t[1]);
            let hi01 = _mm512_unpackhi_epi8(t[0], t[1]);
            let lo23 = _mm512_unpacklo_epi8(t[2], t[3]);
            let hi23 = _mm512_unpackhi_epi8(t[2], t[3]);
            let a = [
                _mm512_unpacklo_epi16(lo01, lo23),
                _mm512_unpackhi_epi16(lo01, lo23),
                _mm512_unpacklo_epi16(hi01, hi23),
                _mm512_unpackhi_epi16(hi01, hi23),
            ];
            // SAFETY: `pack_rows` holds `groups` 256-byte groups per pattern.
            let wg = w.add((q * groups + g) * WIDE_GROUP_BYTES);
            for r in 0..4 {
                let wr = _mm512_loadu_si512(wg.add(r * 64).cast());
                acc[r] = if SAT {
                    _mm512_dpwssd_epi32(acc[r], _mm512_maddubs_epi16(a[r], wr), _mm512_set1_epi16(1))
                } else {
                    _mm512_dpbusd_epi32(acc[r], a[r], wr)
                };
                if !SYM {
                    xsum[r] = _mm512_dpbusd_epi32(xsum[r], a[r], _mm512_set1_epi8(1));
                }
            }
        }
        let v: [__m512i; 4] = std::array::from_fn(|r| requant16(acc[r], xsum[r], epi, q * WIDE + r * 16, SYM));
        let packed = _mm512_packus_epi16(_mm512_packs_epi32(v[0], v[1]), _mm512_packs_epi32(v[2], v[3]));
        let clamped = _mm512_min_epu8(_mm512_max_epu8(packed, lo), hi);
        // SAFETY: the masked store writes only the `valid` bytes inside `out`.
        _mm512_mask_storeu_epi8(out.as_mut_ptr().add(j0).cast(), mask, clamped);
        j0 += WIDE;
        q = if q + 1 == patterns { 0 } else { q + 1 };
    }
}

/// Copies the pixels of one input row (`src`, `c` bytes each) into its `s` phase rows of
/// `dst`: padded pixel `iw + pad` goes to phase `(iw + pad) % s`, slot `(iw + pad) / s`.
/// Pixels move as whole 64/32/16-byte vectors plus one masked tail (a byte-slice copy would
/// call `memcpy` per pixel).
///
/// # Safety
/// The CPU supports AVX-512 F/BW; `src.len()` is a multiple of `c`; `dst` holds `s` phase rows
/// of `phase_len` bytes, each with room for slot `(src.len() / c - 1 + pad) / s`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn scatter_phases(src: &[u8], dst: &mut [u8], c: usize, s: usize, pad: usize, phase_len: usize) {
    let pixels = src.len() / c;
    debug_assert!(dst.len() >= (s - 1) * phase_len + ((pixels - 1 + pad) / s + 1) * c);
    // Full 64-, 32- and 16-byte moves, then one masked move for the last `c % 16` bytes.
    let (c64, c32, c16) = (c / 64 * 64, c / 32 * 32, c / 16 * 16);
    let (has32, has16) = (c32 > c64, c16 > c32);
    let tail = c - c16;
    let tail_mask: __mmask16 = if tail == 0 { 0 } else { (1u16 << tail) - 1 };
    for iw in 0..pixels {
        let p = iw + pad;
        let from = src.as_ptr().add(iw * c);
        let to = dst.as_mut_ptr().add((p % s) * phase_len + (p / s) * c);
        // SAFETY: every move reads and writes bytes inside one `c`-byte pixel. The moves are
        // asm so the compiler cannot turn them back into a `memcpy` call per pixel.
        let mut b = 0;
        while b < c64 {
            asm!(
                "vmovdqu64 {v}, zmmword ptr [{from}]",
                "vmovdqu64 zmmword ptr [{to}], {v}",
                from = in(reg) from.add(b), to = in(reg) to.add(b), v = out(zmm_reg) _,
                options(nostack, preserves_flags),
            );
            b += 64;
        }
        if has32 {
            asm!(
                "vmovdqu {v}, ymmword ptr [{from}]",
                "vmovdqu ymmword ptr [{to}], {v}",
                from = in(reg) from.add(b), to = in(reg) to.add(b), v = out(ymm_reg) _,
                options(nostack, preserves_flags),
            );
            b += 32;
        }
        if has16 {
            asm!(
                "vmovdqu {v}, xmmword ptr [{from}]",
                "vmovdqu xmmword ptr [{to}], {v}",
                from = in(reg) from.add(b), to = in(reg) to.add(b), v = out(xmm_reg) _,
                options(nostack, preserves_flags),
            );
            b += 16;
        }
        if tail != 0 {
            _mm_mask_storeu_epi8(
                to.add(b).cast(),
                tail_mask,
                _mm_maskz_loadu_epi8(tail_mask, from.add(b).cast()),
            );
        }
    }
}
