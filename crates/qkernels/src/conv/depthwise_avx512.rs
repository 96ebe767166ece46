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
//!
//! The row kernel ([`row`]) applies the same arithmetic to a whole output row as a flat byte
//! vector, loading every tap straight from the input rows with masked loads planned once per call
//! ([`RowPlan`]); its last tap group reads zeros for the padding taps, and a lone last tap (3x3
//! and 5x5 kernels) skips the interleave.

use std::arch::asm;
use std::arch::x86_64::*;

use super::depthwise::{PackedDepthwise, TAP_GROUP};
use super::geometry::Conv2dGeometry;
use super::requant::avx512::{requant16 as requant16_shared, requant16_in_range};
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
    /// Whether the requantization needs its float clamp (see `requant::avx512`); the row
    /// kernel leaves it out when the sums cannot reach it.
    float_clamp: bool,
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
            float_clamp: true,
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
            let a = interleave_taps(t);
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
    /// Constants of the row kernel: per pattern, 64 entries in kernel order. The row kernel
    /// reads zeros (not the zero point) for the padding taps of the last tap group, so the
    /// offset counts the real taps only.
    pub fn for_rows(p: &PackedDepthwise, x_zp: i32, rq: &ConvRequant) -> Epilogue {
        let c = p.geometry.c_out;
        let taps = p.geometry.taps() as i32;
        let patterns = row_patterns(c);
        // |sum (x - x_zp) * (w - w_zp)| <= taps * 255 * (128 + |w_zp|); fbgemm parity's
        // saturation moves each pair sum by less than 2 * 255 * 128 - 32767 < 255 * 128, so
        // twice the exact bound covers it.
        let max_wzp = p.weight_zps.iter().map(|z| z.unsigned_abs()).max().unwrap_or(0) as f64;
        let acc_bound = taps as f64 * 255.0 * (128.0 + max_wzp) * 2.0;
        // Entry `i` of pattern `q` is channel `(64 q + wide_channel(i)) % c`, found without a
        // division per entry (this runs on every call).
        let mut order = Vec::with_capacity(patterns * WIDE);
        for q in 0..patterns {
            let base = q * WIDE % c;
            order.extend((0..WIDE).map(|i| {
                let mut ch = base + wide_channel(i / 16, i % 16);
                while ch >= c {
                    ch -= c;
                }
                ch
            }));
        }
        Epilogue {
            offset: order
                .iter()
                .map(|&ch| -x_zp * p.weight_sums[ch] + taps * x_zp * p.weight_zps[ch])
                .collect(),
            weight_zp: order.iter().map(|&ch| p.weight_zps[ch]).collect(),
            bias_term: order.iter().map(|&ch| rq.bias_term[ch]).collect(),
            multiplier: order.iter().map(|&ch| rq.multiplier[ch]).collect(),
            zero_point: rq.zero_point,
            lo: rq.lo as u8,
            hi: rq.hi as u8,
            float_clamp: super::requant::avx512::float_clamp_needed(acc_bound, &rq.bias_term, &rq.multiplier),
        }
    }
}

/// How every output row of a call reads its input, 64 output bytes at a time (the same for all
/// rows). Tap `t` of output pixel `ow`, channel `ch`, reads input pixel `ow * stride + tap_px[t]`
/// of its kernel row, byte `taps[t] + ow * stride * c + ch` where `taps[t]` is the row's address
/// moved by `tap_px[t]` pixels; pixels outside `[0, in_w)` read the input zero point.
pub struct RowPlan {
    blocks: Vec<Block>,
    tap_px: Vec<isize>,
    c: usize,
    in_w: usize,
    stride: usize,
}

/// Output bytes `[j0, end)` of a row (at most 64), weight pattern `q`: output pixels
/// `ow..=ow_last`. For a block of one or two pixels, `mask[i]` selects the bytes of pixel
/// `ow + i`, whose input sits `delta[i]` bytes further than its output (`(stride - 1) * c` per
/// pixel), and bit `t` of `valid[i]` says whether tap `t` of that pixel is in range.
struct Block {
    j0: usize,
    end: usize,
    q: usize,
    ow: usize,
    ow_last: usize,
    mode: u8,
    mask: [__mmask64; 2],
    delta: [usize; 2],
    valid: [u64; 2],
    /// The bytes `[j0, end)` of the output vector.
    store: __mmask64,
}

/// How [`load_tap`] reads a block: with every tap in range, one load (one pixel, or any pixels
/// at stride 1) or two (two pixels); `EDGE`: one or two pixels with some taps out of range;
/// `CHECKED`: anything else, pixel by pixel.
const ONE_RUN: u8 = 0;
const TWO_RUNS: u8 = 1;
const EDGE: u8 = 2;
const CHECKED: u8 = 3;

/// Bits `lo..hi` of a 64-bit mask (`lo <= hi <= 64`).
fn bit_range(lo: usize, hi: usize) -> __mmask64 {
    let below_hi = if hi >= 64 { !0 } else { (1u64 << hi) - 1 };
    if lo >= 64 {
        0
    } else {
        below_hi & (!0u64 << lo)
    }
}

impl RowPlan {
    /// The plan of `g`'s output rows of `ow_n` pixels over input rows of `in_w` pixels.
    pub fn new(g: &Conv2dGeometry, in_w: usize, ow_n: usize) -> RowPlan {
        let (c, stride) = (g.c_out, g.stride.1);
        let tap_px: Vec<isize> = (0..g.taps())
            .map(|t| ((t % g.kernel.1) * g.dilation.1) as isize - g.padding.1 as isize)
            .collect();
        let len = ow_n * c;
        let patterns = row_patterns(c);
        let in_range = |ow: usize, t: usize| {
            let ip = (ow * stride) as isize + tap_px[t];
            ip >= 0 && ip < in_w as isize
        };
        let blocks = (0..len.div_ceil(WIDE))
            .map(|b| {
                let (j0, end) = (b * WIDE, (b * WIDE + WIDE).min(len));
                let (ow, ow_last) = (j0 / c, (end - 1) / c);
                let interior = (ow..=ow_last).all(|px| (0..tap_px.len()).all(|t| in_range(px, t)));
                let split = ((ow + 1) * c).min(end) - j0;
                let mut block = Block {
                    j0,
                    end,
                    q: b % patterns,
                    ow,
                    ow_last,
                    mode: CHECKED,
                    mask: [bit_range(0, split), bit_range(split, end - j0)],
                    delta: [ow * (stride - 1) * c, (ow + 1) * (stride - 1) * c],
                    valid: [0; 2],
                    store: bit_range(0, end - j0),
                };
                if interior && (stride == 1 || ow == ow_last) {
                    // With stride 1 every pixel's input sits where its output does: one run.
                    block.mode = ONE_RUN;
                    block.mask = [bit_range(0, end - j0), 0];
                } else if interior && ow_last == ow + 1 {
                    block.mode = TWO_RUNS;
                } else if ow_last <= ow + 1 && tap_px.len() <= 64 {
                    block.mode = EDGE;
                    for (i, px) in (ow..=ow_last).enumerate() {
                        block.valid[i] = (0..tap_px.len()).filter(|&t| in_range(px, t)).map(|t| 1u64 << t).sum();
                    }
                }
                block
            })
            .collect();
        RowPlan {
            blocks,
            tap_px,
            c,
            in_w,
            stride,
        }
    }

    /// Per tap, the horizontal pixel offset `kw * dilation - padding` of its input.
    pub fn tap_px(&self) -> &[isize] {
        &self.tap_px
    }
}

/// The 64 input bytes tap `t` (with row address `tap`) contributes to block `b`.
///
/// # Safety
/// The CPU supports AVX-512 F/BW; the block's mode fits its pixels (see [`RowPlan::new`]);
/// every in-range pixel of a tap is readable.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn load_tap<const MODE: u8>(plan: &RowPlan, b: &Block, tap: *const u8, t: usize, zp: __m512i) -> __m512i {
    let base = tap.wrapping_add(b.j0);
    // SAFETY (all modes): the masks select bytes of in-range pixels only.
    match MODE {
        ONE_RUN => _mm512_maskz_loadu_epi8(b.mask[0], base.wrapping_add(b.delta[0]).cast()),
        TWO_RUNS => {
            let v = _mm512_maskz_loadu_epi8(b.mask[0], base.wrapping_add(b.delta[0]).cast());
            _mm512_mask_loadu_epi8(v, b.mask[1], base.wrapping_add(b.delta[1]).cast())
        }
        EDGE => {
            let mut v = zp;
            for i in 0..2 {
                if b.valid[i] >> t & 1 != 0 {
                    v = _mm512_mask_loadu_epi8(v, b.mask[i], base.wrapping_add(b.delta[i]).cast());
                }
            }
            v
        }
        _ => {
            let (c, s) = (plan.c, plan.stride);
            let mut v = zp;
            for px in b.ow..=b.ow_last {
                let ip = (px * s) as isize + plan.tap_px[t];
                if ip >= 0 && (ip as usize) < plan.in_w {
                    let mask = bit_range((px * c).max(b.j0) - b.j0, ((px + 1) * c).min(b.end) - b.j0);
                    v = _mm512_mask_loadu_epi8(v, mask, base.wrapping_add(px * (s - 1) * c).cast());
                }
            }
            v
        }
    }
}

/// One output row as a flat byte vector: `out[j] = requant(sum_t x_t[j] * w[t][j % c])`, 64
/// bytes at a time (the last block masked), reading the input rows in place: the bytes of one
/// output block come from at most a few input pixels per tap, each a contiguous run, so a block
/// is one masked load per pixel and tap (one for stride 1, one or two for `c >= 64`).
///
/// # Safety
/// The CPU supports AVX-512 F/BW/VL/VNNI; `taps` holds `p`'s tap count of row addresses as
/// [`RowPlan`] describes, each row readable over `plan.in_w * c` bytes; `out` holds the
/// plan's row; `weights` is `pack_rows` of `p` and `epi` its `for_rows`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn row(
    p: &PackedDepthwise,
    weights: &[i8],
    plan: &RowPlan,
    taps: &[*const u8],
    zero_point: u8,
    epi: &Epilogue,
    out: &mut [u8],
) {
    // The arithmetic flags become constants of the loop (no tests inside it).
    // 3x3 kernels (MobileNet's) also get a constant tap count, so the tap loop unrolls.
    match (p.saturating_pairs, p.symmetric, taps.len() == 9) {
        (true, true, true) => row_with::<true, true, 9>(weights, plan, taps, zero_point, epi, out),
        (true, false, true) => row_with::<true, false, 9>(weights, plan, taps, zero_point, epi, out),
        (false, true, true) => row_with::<false, true, 9>(weights, plan, taps, zero_point, epi, out),
        (false, false, true) => row_with::<false, false, 9>(weights, plan, taps, zero_point, epi, out),
        (true, true, false) => row_with::<true, true, 0>(weights, plan, taps, zero_point, epi, out),
        (true, false, false) => row_with::<true, false, 0>(weights, plan, taps, zero_point, epi, out),
        (false, true, false) => row_with::<false, true, 0>(weights, plan, taps, zero_point, epi, out),
        (false, false, false) => row_with::<false, false, 0>(weights, plan, taps, zero_point, epi, out),
    }
}

/// [`row`] for fixed `saturating_pairs` (`SAT`) and `symmetric` (`SYM`) flags.
///
/// # Safety
/// As [`row`], with `SAT` and `SYM` the flags of the convolution.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn row_with<const SAT: bool, const SYM: bool, const TAPS: usize>(
    weights: &[i8],
    plan: &RowPlan,
    taps: &[*const u8],
    zero_point: u8,
    epi: &Epilogue,
    out: &mut [u8],
) {
    debug_assert_eq!(plan.blocks.last().map_or(0, |b| b.end), out.len());
    let zp = _mm512_set1_epi8(zero_point as i8);
    let ones = _mm512_set1_epi16(1);
    // Software pipelining: block `k`'s requantization is issued after block `k + 1`'s dot
    // products, so the long chain of one block overlaps the independent work of the next.
    let mut pending: Option<(&Block, Sums)> = None;
    for b in &plan.blocks {
        // SAFETY: the plan chose each block's mode from its pixels' ranges.
        let sums = match b.mode {
            ONE_RUN => dot_block::<SAT, SYM, TAPS, ONE_RUN>(plan, b, weights, taps, zp, ones, epi),
            TWO_RUNS => dot_block::<SAT, SYM, TAPS, TWO_RUNS>(plan, b, weights, taps, zp, ones, epi),
            EDGE => dot_block::<SAT, SYM, TAPS, EDGE>(plan, b, weights, taps, zp, ones, epi),
            _ => dot_block::<SAT, SYM, TAPS, CHECKED>(plan, b, weights, taps, zp, ones, epi),
        };
        if let Some((prev, prev_sums)) = pending.replace((b, sums)) {
            // SAFETY: the masks keep the stores inside `out`.
            finish_block::<SYM>(prev, prev_sums, epi, out);
        }
    }
    if let Some((prev, prev_sums)) = pending {
        finish_block::<SYM>(prev, prev_sums, epi, out);
    }
}

/// The accumulators of one block: `sum x * w` plus the constant correction, and (asymmetric
/// weights) `sum x`, in the kernel's channel order.
struct Sums {
    acc: [__m512i; 4],
    xsum: [__m512i; 4],
}

/// The sums of one 64-byte output block of [`row_with`].
///
/// # Safety
/// As [`row`] and [`load_tap`] for `MODE`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dot_block<const SAT: bool, const SYM: bool, const TAPS: usize, const MODE: u8>(
    plan: &RowPlan,
    b: &Block,
    weights: &[i8],
    taps: &[*const u8],
    zp: __m512i,
    ones: __m512i,
    epi: &Epilogue,
) -> Sums {
    // `TAPS` is the tap count when known at compile time (0 otherwise).
    let n = if TAPS == 0 { taps.len() } else { TAPS };
    debug_assert_eq!(n, taps.len());
    let groups = n.div_ceil(TAP_GROUP);
    let w = weights.as_ptr().add(b.q * groups * WIDE_GROUP_BYTES);
    let at = b.q * WIDE;
    // Accumulators start at the constant correction, so the epilogue has one addition less.
    let mut acc: [__m512i; 4] =
        std::array::from_fn(|r| _mm512_loadu_si512(epi.offset.as_ptr().add(at + r * 16).cast()));
    let mut xsum = [_mm512_setzero_si512(); 4];
    let full = n / TAP_GROUP;
    for g in 0..full {
        let t0 = g * TAP_GROUP;
        // SAFETY: `t0 + 3 < n`.
        let t: [__m512i; 4] =
            std::array::from_fn(|i| load_tap::<MODE>(plan, b, *taps.get_unchecked(t0 + i), t0 + i, zp));
        dot4::<SAT, SYM>(&mut acc, &mut xsum, t, w.add(g * WIDE_GROUP_BYTES), ones);
    }
    let t0 = full * TAP_GROUP;
    let wg = w.add(full * WIDE_GROUP_BYTES);
    match n - t0 {
        0 => {}
        1 => {
            // One tap left (3x3 and 5x5 kernels): a byte shuffle puts each channel's input in the
            // low byte of its 32-bit lane (the order the other groups produce), and the tap's
            // weights sit in the low byte of their group's lanes; a lone product cannot
            // saturate, so both arithmetics add it exactly.
            let x = load_tap::<MODE>(plan, b, taps[t0], t0, zp);
            for r in 0..4 {
                let lane = |e: i32| (0x8080_8000u32 as i32) | (4 * r as i32 + e);
                let xr = _mm512_shuffle_epi8(x, _mm512_set4_epi32(lane(3), lane(2), lane(1), lane(0)));
                acc[r] = _mm512_dpbusd_epi32(acc[r], xr, _mm512_loadu_si512(wg.add(r * 64).cast()));
                if !SYM {
                    xsum[r] = _mm512_add_epi32(xsum[r], xr);
                }
            }
        }
        rest => {
            // Padding taps read zeros: their weights are zero and the offset counts real taps.
            let t: [__m512i; 4] = std::array::from_fn(|i| {
                if i < rest {
                    load_tap::<MODE>(plan, b, taps[t0 + i], t0 + i, zp)
                } else {
                    _mm512_setzero_si512()
                }
            });
            dot4::<SAT, SYM>(&mut acc, &mut xsum, t, wg, ones);
        }
    }
    Sums { acc, xsum }
}

/// Requantizes block `b`'s sums and stores its bytes.
///
/// # Safety
/// The CPU supports AVX-512 F/BW; `b` lies inside `out`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn finish_block<const SYM: bool>(b: &Block, sums: Sums, epi: &Epilogue, out: &mut [u8]) {
    let at = b.q * WIDE;
    // The output zero point is added to the 16-bit values with saturation, which gives the same
    // bytes as adding it to the 32-bit values before both saturating packs.
    let v = [
        requant16_rows::<SYM>(sums.acc[0], sums.xsum[0], epi, at),
        requant16_rows::<SYM>(sums.acc[1], sums.xsum[1], epi, at + 16),
        requant16_rows::<SYM>(sums.acc[2], sums.xsum[2], epi, at + 32),
        requant16_rows::<SYM>(sums.acc[3], sums.xsum[3], epi, at + 48),
    ];
    let zp = _mm512_set1_epi16(epi.zero_point as i16);
    let lo = _mm512_adds_epi16(_mm512_packs_epi32(v[0], v[1]), zp);
    let hi = _mm512_adds_epi16(_mm512_packs_epi32(v[2], v[3]), zp);
    let clamped = _mm512_min_epu8(
        _mm512_max_epu8(_mm512_packus_epi16(lo, hi), _mm512_set1_epi8(epi.lo as i8)),
        _mm512_set1_epi8(epi.hi as i8),
    );
    // SAFETY: the block lies inside the row and the mask covers `[j0, end)` only.
    _mm512_mask_storeu_epi8(out.as_mut_ptr().add(b.j0).cast(), b.store, clamped);
}

/// `acc + a.lo * b.lo + a.hi * b.hi` per 32-bit lane (`vpdpwssd`), written out so the compiler
/// keeps one instruction (it would otherwise split it into `vpmaddwd` and `vpaddd`).
///
/// # Safety
/// The CPU supports AVX-512 F/VNNI.
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn dpwssd(mut acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
    asm!(
        "vpdpwssd {acc}, {a}, {b}",
        acc = inout(zmm_reg) acc,
        a = in(zmm_reg) a,
        b = in(zmm_reg) b,
        options(pure, nomem, nostack, preserves_flags),
    );
    acc
}

/// Adds four taps of 64 channels (`t`, with their 256 interleaved weight bytes at `w`) to the
/// accumulators: the taps are interleaved so each 32-bit lane holds one channel's four bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dot4<const SAT: bool, const SYM: bool>(
    acc: &mut [__m512i; 4],
    xsum: &mut [__m512i; 4],
    t: [__m512i; 4],
    w: *const i8,
    ones: __m512i,
) {
    let a = interleave_taps(t);
    for r in 0..4 {
        let wr = _mm512_loadu_si512(w.add(r * 64).cast());
        acc[r] = if SAT {
            dpwssd(acc[r], _mm512_maddubs_epi16(a[r], wr), ones)
        } else {
            _mm512_dpbusd_epi32(acc[r], a[r], wr)
        };
        if !SYM {
            xsum[r] = _mm512_dpbusd_epi32(xsum[r], a[r], _mm512_set1_epi8(1));
        }
    }
}

/// [`requant16`] without the output zero point, for accumulators that already hold the
/// constant correction, and without the float clamp where the epilogue says the sums cannot
/// reach it.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn requant16_rows<const SYM: bool>(acc: __m512i, xsum: __m512i, epi: &Epilogue, at: usize) -> __m512i {
    let mut corrected = acc;
    if !SYM {
        let wzp = _mm512_loadu_si512(epi.weight_zp.as_ptr().add(at).cast());
        corrected = _mm512_sub_epi32(corrected, _mm512_mullo_epi32(wzp, xsum));
    }
    let (bias, mul) = (
        _mm512_loadu_ps(epi.bias_term.as_ptr().add(at)),
        _mm512_loadu_ps(epi.multiplier.as_ptr().add(at)),
    );
    let no_zero_point = _mm512_setzero_si512();
    if epi.float_clamp {
        requant16_shared(corrected, bias, mul, no_zero_point)
    } else {
        requant16_in_range(corrected, bias, mul, no_zero_point)
    }
}

/// Four taps' 64 channel bytes each, interleaved so that every 4-byte lane holds one channel's
/// four taps in order (the `vpdpbusd` operand order). The unpacks work inside 128-bit lanes, so
/// the channels land in the order the packed weights use.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
fn interleave_taps(t: [__m512i; 4]) -> [__m512i; 4] {
    let lo01 = _mm512_unpacklo_epi8(t[0], t[1]);
    let hi01 = _mm512_unpackhi_epi8(t[0], t[1]);
    let lo23 = _mm512_unpacklo_epi8(t[2], t[3]);
    let hi23 = _mm512_unpackhi_epi8(t[2], t[3]);
    [
        _mm512_unpacklo_epi16(lo01, lo23),
        _mm512_unpackhi_epi16(lo01, lo23),
        _mm512_unpacklo_epi16(hi01, hi23),
        _mm512_unpackhi_epi16(hi01, hi23),
    ]
}
