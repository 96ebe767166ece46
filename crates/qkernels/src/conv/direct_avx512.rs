//! AVX-512 VNNI kernel of the direct convolution (`direct.rs`): one output row at a time, cut
//! into register tiles of `R` consecutive output pixels x `P` panels of 16 output channels
//! (`R * P <= 28` zmm accumulators, which start at the zero-point offset). Per packed weight
//! row it loads `P` weight vectors and, per pixel, broadcasts 4 input bytes (one base +
//! scaled-index address per pixel) and issues `P` `vpdpbusd` (u8 x s8, four exact products per
//! i32 lane). The tile is finished in registers: the shared requantization
//! (`requant::avx512::requant16`, without its float clamp when the layer's bounds show it
//! cannot act), clamp, and a 16-byte store per pixel and panel (masked on the last panel when
//! `c_out` is not a multiple of 16); 2-panel tiles pack two pixels to bytes together (one
//! 64-byte store with exactly 32 output channels, else one 32-byte store per pixel), and 4-panel
//! tiles (shallow reductions, where the finishing weighs most) store each pixel's 64 bytes at
//! once, both adding the zero point to 32 lanes at a time after narrowing to i16.

use std::arch::asm;
use std::arch::x86_64::*;
use std::ops::Range;

use super::direct::{DirectConv, Epilogue, GroupRun, PANEL, PANEL_ROW};
use super::requant::avx512::{requant16, requant16_in_range};
use crate::gemm::row_tiles;
use crate::prefetch::{Prefetch, Regions};

/// Reductions up to this many packed groups use 4-panel tiles: with so few products per
/// output value the finishing (requantize and store) is a large share of the work, and a
/// 4-panel tile stores each pixel's 64 bytes at once instead of four narrowing stores. 48
/// covers ResNet18's `conv1` (7 kernel rows of 6 groups), 3% faster than on 2-panel tiles, and
/// MobileNetV2's 1x1 layers of 160 and 192 input channels (a few % faster, weights hot or cold);
/// deeper ones measured no steady gain.
const QUAD_MAX_GROUPS: usize = 48;

/// Panels per column tile and the most pixels a tile of that width holds (`quads`: 4-panel
/// tiles where at least 4 panels are left).
fn tile_shape(panels_left: usize, quads: bool) -> (usize, usize) {
    match panels_left {
        1 => (1, 16),
        3 => (3, 9),
        // 24 accumulators, 4 weight vectors and the broadcast: 29 of the 32 zmm registers.
        n if quads && n >= 4 => (4, 6),
        _ => (2, 14),
    }
}

/// Computes panels `panels` of one output row: the packed groups are `runs` in order, group `i`
/// of a run reading the 4 bytes at `base + run.at + 4 * i` for pixel 0, consecutive pixels
/// `pixel_stride` bytes apart; channel
/// `16 * panels.start` of pixel `i` is written at `out + i * ostride`, the row's other channels
/// after it.
///
/// # Safety
/// The CPU supports AVX-512 F/BW/VL/VNNI; `base + run.at + 4 * i + (pixels - 1) * pixel_stride`
/// has 4 readable bytes for every group `i` of every run; the runs hold `p.groups_total` groups;
/// `panels` lies in `0..p.panels`; `out + i * ostride` has room for the channels of `panels`
/// (up to `c_out` on the last panel) for every pixel `i < pixels`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn row(
    p: &DirectConv,
    epi: &Epilogue,
    base: *const u8,
    runs: &[GroupRun],
    pixel_stride: usize,
    pixels: usize,
    panels: Range<usize>,
    out: *mut u8,
    ostride: usize,
    prefetch: RowPrefetch,
) {
    let c_out = p.c_out();
    let wstride = p.groups_total * PANEL_ROW;
    let quads = p.groups_total <= QUAD_MAX_GROUPS;
    // Steps of a tile's reduction loop (two groups each), over which it spreads its prefetches.
    let steps: usize = runs.iter().map(|r| r.groups.div_ceil(2)).sum();
    // Register tiles in this row, for sharing out a prefetch region.
    let tiles_in_row = {
        let (mut panel, mut count) = (panels.start, 0);
        while panel < panels.end {
            let (pp, r_max) = tile_shape(panels.end - panel, quads);
            count += pixels.div_ceil(r_max);
            panel += pp;
        }
        count
    };
    let mut done = 0;
    let mut panel = panels.start;
    while panel < panels.end {
        let (pp, r_max) = tile_shape(panels.end - panel, quads);
        let last = panel + pp == p.panels;
        let tail = c_out - (p.panels - 1) * PANEL;
        let last_mask: __mmask16 = if last && tail < PANEL { (1u16 << tail) - 1 } else { !0 };
        let w = p.weights.as_ptr().cast::<i8>().add(panel * wstride);
        // Balanced pixel tiles: `tiles` tiles within one pixel of each other in width.
        let tiles = pixels.div_ceil(r_max);
        // The following panels' weights (contiguous after these), shared over the pixel tiles.
        let next_bytes = pp.min(p.panels - panel - pp) * wstride;
        let next = w.wrapping_add(pp * wstride);
        for (t, (px, r)) in row_tiles(0..pixels, r_max).enumerate() {
            let a = base.add(px * pixel_stride);
            let dst = out.add(px * ostride + (panel - panels.start) * PANEL);
            let ch = panel * PANEL;
            let pf = match prefetch {
                RowPrefetch::None => Prefetch::NONE,
                RowPrefetch::NextTiles => Prefetch::share(next, next_bytes, t, tiles, steps),
                RowPrefetch::Regions(regions) => regions.share(done + t, tiles_in_row, steps),
            };
            macro_rules! go {
                ($P:literal; $($R:literal),*) => {
                    match r {
                        $($R => tile::<$R, $P>(a, runs, pixel_stride, w, wstride, epi, ch, dst, ostride, last_mask, pf),)*
                        _ => unreachable!("tile of {r} pixels"),
                    }
                };
            }
            match pp {
                1 => go!(1; 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16),
                2 => go!(2; 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14),
                3 => go!(3; 1, 2, 3, 4, 5, 6, 7, 8, 9),
                4 => go!(4; 1, 2, 3, 4, 5, 6),
                _ => unreachable!("tiles have 1 to 4 panels"),
            }
        }
        done += tiles;
        panel += pp;
    }
}

/// What a row's register tiles prefetch while they compute.
#[derive(Clone, Copy, Debug)]
pub(crate) enum RowPrefetch {
    None,
    /// Each panel tile's successor in the row (weights met cold in this row).
    NextTiles,
    /// Byte ranges (the next weight block's share for this row, or the input rows the next
    /// output row reads), spread over all tiles.
    Regions(Regions),
}

/// `acc[q] += dot4(4 bytes at $addr, w[q])` per lane for `P` panels: one broadcast and `P`
/// `vpdpbusd` in one asm block, which keeps the compiler from hoisting every broadcast of a
/// tile ahead of the products (that would need `R` more registers than the tile has and spill
/// the accumulators). `$bcast` is the broadcast with its address operand written as a base +
/// scaled index form, so no pixel needs its own address computation.
///
/// Used inside functions with AVX-512 VNNI enabled; the address must have 4 readable bytes.
macro_rules! broadcast_dot {
    ($P:expr, $acc:expr, $w:expr, $bcast:expr, $($regs:tt)*) => {{
    let (acc, w) = ($acc, $w);
    let _tmp: __m512i;
    match $P {
        1 => asm!(
            $bcast,
            "vpdpbusd {a0}, {t}, {w0}",
            $($regs)* t = out(zmm_reg) _tmp,
            a0 = inout(zmm_reg) acc[0], w0 = in(zmm_reg) w[0],
            options(nostack, preserves_flags, readonly),
        ),
        2 => asm!(
            $bcast,
            "vpdpbusd {a0}, {t}, {w0}",
            "vpdpbusd {a1}, {t}, {w1}",
            $($regs)* t = out(zmm_reg) _tmp,
            a0 = inout(zmm_reg) acc[0], w0 = in(zmm_reg) w[0],
            a1 = inout(zmm_reg) acc[1], w1 = in(zmm_reg) w[1],
            options(nostack, preserves_flags, readonly),
        ),
        3 => asm!(
            $bcast,
            "vpdpbusd {a0}, {t}, {w0}",
            "vpdpbusd {a1}, {t}, {w1}",
            "vpdpbusd {a2}, {t}, {w2}",
            $($regs)* t = out(zmm_reg) _tmp,
            a0 = inout(zmm_reg) acc[0], w0 = in(zmm_reg) w[0],
            a1 = inout(zmm_reg) acc[1], w1 = in(zmm_reg) w[1],
            a2 = inout(zmm_reg) acc[2], w2 = in(zmm_reg) w[2],
            options(nostack, preserves_flags, readonly),
        ),
        4 => asm!(
            $bcast,
            "vpdpbusd {a0}, {t}, {w0}",
            "vpdpbusd {a1}, {t}, {w1}",
            "vpdpbusd {a2}, {t}, {w2}",
            "vpdpbusd {a3}, {t}, {w3}",
            $($regs)* t = out(zmm_reg) _tmp,
            a0 = inout(zmm_reg) acc[0], w0 = in(zmm_reg) w[0],
            a1 = inout(zmm_reg) acc[1], w1 = in(zmm_reg) w[1],
            a2 = inout(zmm_reg) acc[2], w2 = in(zmm_reg) w[2],
            a3 = inout(zmm_reg) acc[3], w3 = in(zmm_reg) w[3],
            options(nostack, preserves_flags, readonly),
        ),
        _ => unreachable!("tiles have 1 to 4 panels"),
    }
    }};
}

/// Pixel addresses of a tile: pixel `r` reads at `a + r * s`. With `b = a + 7 s` and the
/// strides `s, 3s, 5s, 7s` in registers, every pixel up to 15 is one base + scaled-index
/// operand, so a K group costs one address computation (`b`) instead of one per pixel.
#[derive(Clone, Copy)]
struct PixelAddresses {
    a: *const u8,
    b: *const u8,
    s: usize,
    s3: usize,
    s5: usize,
    s7: usize,
}

/// [`broadcast_dot!`] for pixel `$r` (a constant once the pixel loop is unrolled), reading `$d`
/// bytes past the pixel's address (a literal displacement in the operand).
macro_rules! pixel_dot {
    ($P:expr, $r:expr, $acc:expr, $w:expr, $pa:expr, $d:literal) => {{
        let PixelAddresses { a, b, s, s3, s5, s7 } = $pa;
        let (acc, w) = ($acc, $w);
        match $r {
            0 => broadcast_dot!($P, acc, w, concat!("vpbroadcastd {t}, dword ptr [{a} + ", $d, "]"), a = in(reg) a,),
            1 => broadcast_dot!($P, acc, w, concat!("vpbroadcastd {t}, dword ptr [{a} + {s} + ", $d, "]"), a = in(reg) a, s = in(reg) s,),
            2 => broadcast_dot!($P, acc, w, concat!("vpbroadcastd {t}, dword ptr [{a} + {s}*2 + ", $d, "]"), a = in(reg) a, s = in(reg) s,),
            3 => broadcast_dot!($P, acc, w, concat!("vpbroadcastd {t}, dword ptr [{a} + {s3} + ", $d, "]"), a = in(reg) a, s3 = in(reg) s3,),
            4 => broadcast_dot!($P, acc, w, concat!("vpbroadcastd {t}, dword ptr [{a} + {s}*4 + ", $d, "]"), a = in(reg) a, s = in(reg) s,),
            5 => broadcast_dot!($P, acc, w, concat!("vpbroadcastd {t}, dword ptr [{a} + {s5} + ", $d, "]"), a = in(reg) a, s5 = in(reg) s5,),
            6 => broadcast_dot!($P, acc, w, concat!("vpbroadcastd {t}, dword ptr [{a} + {s3}*2 + ", $d, "]"), a = in(reg) a, s3 = in(reg) s3,),
            7 => broadcast_dot!($P, acc, w, concat!("vpbroadcastd {t}, dword ptr [{b} + ", $d, "]"), b = in(reg) b,),
            8 => broadcast_dot!($P, acc, w, concat!("vpbroadcastd {t}, dword ptr [{b} + {s} + ", $d, "]"), b = in(reg) b, s = in(reg) s,),
            9 => broadcast_dot!($P, acc, w, concat!("vpbroadcastd {t}, dword ptr [{b} + {s}*2 + ", $d, "]"), b = in(reg) b, s = in(reg) s,),
            10 => broadcast_dot!($P, acc, w, concat!("vpbroadcastd {t}, dword ptr [{b} + {s3} + ", $d, "]"), b = in(reg) b, s3 = in(reg) s3,),
            11 => broadcast_dot!($P, acc, w, concat!("vpbroadcastd {t}, dword ptr [{b} + {s}*4 + ", $d, "]"), b = in(reg) b, s = in(reg) s,),
            12 => broadcast_dot!($P, acc, w, concat!("vpbroadcastd {t}, dword ptr [{b} + {s5} + ", $d, "]"), b = in(reg) b, s5 = in(reg) s5,),
            13 => broadcast_dot!($P, acc, w, concat!("vpbroadcastd {t}, dword ptr [{b} + {s3}*2 + ", $d, "]"), b = in(reg) b, s3 = in(reg) s3,),
            14 => broadcast_dot!($P, acc, w, concat!("vpbroadcastd {t}, dword ptr [{b} + {s7} + ", $d, "]"), b = in(reg) b, s7 = in(reg) s7,),
            15 => broadcast_dot!($P, acc, w, concat!("vpbroadcastd {t}, dword ptr [{b} + {s}*8 + ", $d, "]"), b = in(reg) b, s = in(reg) s,),
            _ => unreachable!("tiles have at most 16 pixels"),
        }
    }};
}

/// Runs `$body` with `$r` bound to each constant `0..R` (up to 16), unrolled in the source so
/// every accumulator stays a register (a loop the compiler declines to unroll would keep the
/// tile in memory) and [`pixel_dot!`] picks its address form statically.
macro_rules! unrolled {
    ($R:expr, $r:ident => $body:block) => {
        unrolled!(@ $R, $r, $body, 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15)
    };
    (@ $R:expr, $r:ident, $body:block, $($n:literal)*) => {
        $(
            if $n < $R {
                const $r: usize = $n;
                $body
            }
        )*
    };
}

/// One register tile: `R` pixels x `P` panels starting at channel `ch`.
///
/// Safety: as [`row`]; `w` points at panel `ch / 16` of the packed weights (`wstride` bytes
/// per panel) and `out` at the tile's first output byte, pixels `ostride` bytes apart.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile<const R: usize, const P: usize>(
    a: *const u8,
    runs: &[GroupRun],
    pixel_stride: usize,
    w: *const i8,
    wstride: usize,
    epi: &Epilogue,
    ch: usize,
    out: *mut u8,
    ostride: usize,
    last_mask: __mmask16,
    pf: Prefetch,
) {
    // The sums start at the zero-point offset `-x_zp * sum w` (wrapping i32 addition is
    // associative, so the final value is the reference's exact sum).
    // SAFETY: the epilogue vectors are padded to whole panels.
    let offset: [__m512i; P] =
        std::array::from_fn(|q| _mm512_loadu_si512(epi.offset.as_ptr().add(ch + q * PANEL).cast()));
    let mut acc = [offset; R];
    let s = pixel_stride;
    let mut wp = w;
    let mut pf = pf;
    let (s3, s5, s7) = (3 * s, 5 * s, 7 * s);
    // One packed group of `wp`'s panels at `$d` bytes past `a` (`"0"` or `"4"`) for every pixel.
    macro_rules! group {
        ($a:expr, $wp:expr, $d:literal) => {{
            let pa = PixelAddresses {
                a: $a,
                b: $a.wrapping_add(s7),
                s,
                s3,
                s5,
                s7,
            };
            // SAFETY: the packed weights hold one 64-byte aligned row per group and panel.
            let wv: [__m512i; P] = std::array::from_fn(|q| _mm512_load_si512($wp.add(q * wstride).cast()));
            unrolled!(R, PIXEL => {
                // SAFETY: `PIXEL < R` indexes the tile; 4 readable bytes per pixel and group
                // (see `row`); pixel `r` reads at `a + r * s + d`, which is what the operand of
                // arm `r` computes.
                pixel_dot!(P, PIXEL, acc.get_unchecked_mut(PIXEL), &wv, pa, $d);
            });
        }};
    }
    // Two groups per step: the second one's input is the next 4 bytes (a displacement in the
    // broadcasts' operands) and its weights the next packed row, so a step costs three pointer
    // increments and the loop test.
    for run in runs {
        let mut a = a.add(run.at);
        let mut left = run.groups;
        while left >= 2 {
            pf.step();
            group!(a, wp, "0");
            group!(a, wp.add(PANEL_ROW), "4");
            a = a.add(8);
            wp = wp.add(2 * PANEL_ROW);
            left -= 2;
        }
        if left == 1 {
            pf.step();
            group!(a, wp, "0");
            wp = wp.add(PANEL_ROW);
        }
    }
    let zp = _mm512_set1_epi32(epi.zero_point);
    let (lo, hi) = (_mm512_set1_epi32(epi.lo), _mm512_set1_epi32(epi.hi));
    // Tiles of 2 or 4 panels are narrowed to bytes with packs and add the zero point after
    // the first narrowing, 32 lanes per instruction: `packus(adds_epi16(packs_epi32(r), zp))`
    // equals clamping `r + zp` to [0, 255] for every i32 `r` (an i16 saturated at either end
    // stays beyond the byte range after adding `0 <= zp <= 255`). 1-6 % on shallow layers.
    let pairs = P == 2 && ostride == 2 * PANEL && last_mask == !0;
    // Otherwise two panels of a pixel leave as one (masked) 32-byte store.
    let halves = P == 2 && !pairs;
    let narrow_zp = P == 2 || P == 4;
    // Requantize every sum in place (zero point added unless `narrow_zp`, not yet clamped).
    macro_rules! requantize_all {
        ($zp:expr) => {
            unrolled!(P, Q => {
                let j = ch + Q * PANEL;
                // SAFETY: the epilogue vectors are padded to whole panels.
                let bias = _mm512_loadu_ps(epi.bias_term.as_ptr().add(j));
                let mul = _mm512_loadu_ps(epi.multiplier.as_ptr().add(j));
                unrolled!(R, PIXEL => {
                    // SAFETY: `PIXEL < R`.
                    let sum = acc.get_unchecked_mut(PIXEL);
                    sum[Q] = if epi.float_clamp {
                        requant16(sum[Q], bias, mul, $zp)
                    } else {
                        requant16_in_range(sum[Q], bias, mul, $zp)
                    };
                });
            });
        };
    }
    if narrow_zp {
        requantize_all!(_mm512_setzero_si512());
    } else {
        requantize_all!(zp);
    }
    let zp16 = if narrow_zp {
        _mm512_set1_epi16(epi.zero_point as i16)
    } else {
        _mm512_setzero_si512()
    };
    // 32 output channels in consecutive 32-byte pixels: two pixels are one 64-byte store.
    // `packs` / `packus` saturate to [0, 255] (the clamp every output gets anyway) and leave
    // channels `4l..4l + 4` of (pixel, panel) `k` in dword `4l + k`; the permutation moves
    // them to dword `4k + l`, channel order.
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    let (lo8, hi8) = (_mm512_set1_epi8(epi.lo as i8), _mm512_set1_epi8(epi.hi as i8));
    // The packs already saturate to [0, 255]: a bound at either end of that range (no
    // activation, or ReLU with a zero point of 0) needs no instruction.
    let (clamp_lo, clamp_hi) = (epi.lo > 0, epi.hi < 255);
    let clamp_bytes = |v: __m512i| {
        let v = if clamp_lo { _mm512_max_epu8(v, lo8) } else { v };
        if clamp_hi {
            _mm512_min_epu8(v, hi8)
        } else {
            v
        }
    };
    if P == 4 {
        // A pixel's 4 panels are its 64 consecutive output bytes, packed as the pairs below;
        // only the last panel's real channels are stored when it is partial.
        let tail = last_mask.count_ones() as usize;
        let mask: __mmask64 = if tail == PANEL {
            !0
        } else {
            (1u64 << (3 * PANEL + tail)) - 1
        };
        unrolled!(R, PIXEL => {
            // SAFETY: `PIXEL < R` and `P == 4`.
            let a = acc.get_unchecked(PIXEL);
            let lo16 = _mm512_adds_epi16(_mm512_packs_epi32(*a.get_unchecked(0), *a.get_unchecked(1)), zp16);
            let hi16 = _mm512_adds_epi16(_mm512_packs_epi32(*a.get_unchecked(2), *a.get_unchecked(3)), zp16);
            let bytes = _mm512_permutexvar_epi32(order, _mm512_packus_epi16(lo16, hi16));
            let bytes = clamp_bytes(bytes);
            // SAFETY: the tile's channels of pixel `PIXEL` are these (masked) 64 bytes.
            _mm512_mask_storeu_epi8(out.add(PIXEL * ostride).cast(), mask, bytes);
        });
        return;
    }
    if halves {
        let mask = 0xffff_u32 | (u32::from(last_mask) << PANEL);
        unrolled!(R, PIXEL => {
            if PIXEL.is_multiple_of(2) {
                // SAFETY: `PIXEL < R` and `P == 2`; a lone last pixel packs with itself.
                let a = acc.get_unchecked(PIXEL);
                let b = acc.get_unchecked(if PIXEL + 1 < R { PIXEL + 1 } else { PIXEL });
                let a16 = _mm512_adds_epi16(_mm512_packs_epi32(*a.get_unchecked(0), *a.get_unchecked(1)), zp16);
                let b16 = _mm512_adds_epi16(_mm512_packs_epi32(*b.get_unchecked(0), *b.get_unchecked(1)), zp16);
                let bytes = _mm512_permutexvar_epi32(order, _mm512_packus_epi16(a16, b16));
                let bytes = clamp_bytes(bytes);
                // SAFETY: the tile's 32 channels of pixel `PIXEL` (and `PIXEL + 1`), masked to
                // the real ones on the last panel.
                _mm256_mask_storeu_epi8(out.add(PIXEL * ostride).cast(), mask, _mm512_castsi512_si256(bytes));
                if PIXEL + 1 < R {
                    _mm256_mask_storeu_epi8(
                        out.add((PIXEL + 1) * ostride).cast(),
                        mask,
                        _mm512_extracti64x4_epi64::<1>(bytes),
                    );
                }
            }
        });
        return;
    }
    if pairs {
        unrolled!(R, PIXEL => {
            if PIXEL.is_multiple_of(2) && PIXEL + 1 < R {
                // SAFETY: `PIXEL + 1 < R` and `P == 2`.
                let (a, b) = (acc.get_unchecked(PIXEL), acc.get_unchecked(PIXEL + 1));
                let a16 = _mm512_adds_epi16(_mm512_packs_epi32(*a.get_unchecked(0), *a.get_unchecked(1)), zp16);
                let b16 = _mm512_adds_epi16(_mm512_packs_epi32(*b.get_unchecked(0), *b.get_unchecked(1)), zp16);
                let bytes = _mm512_permutexvar_epi32(order, _mm512_packus_epi16(a16, b16));
                let bytes = clamp_bytes(bytes);
                // SAFETY: pixels `PIXEL` and `PIXEL + 1` are the 64 bytes from here.
                _mm512_storeu_si512(out.add(PIXEL * ostride).cast(), bytes);
            }
        });
    }
    unrolled!(P, Q => {
        let mask = if Q == P - 1 { last_mask } else { !0 };
        unrolled!(R, PIXEL => {
            if !pairs || (PIXEL.is_multiple_of(2) && PIXEL + 1 == R) {
                // SAFETY: `PIXEL < R`.
                let v = acc.get_unchecked(PIXEL)[Q];
                let v = if narrow_zp { _mm512_add_epi32(v, zp) } else { v };
                let dst = out.add(PIXEL * ostride + Q * PANEL).cast();
                // SAFETY: the masked stores write the tile's channels of pixel `PIXEL` only.
                if epi.hi == 255 {
                    // After the lower bound (>= 0) the unsigned saturating narrow is the upper one.
                    _mm512_mask_cvtusepi32_storeu_epi8(dst, mask, _mm512_max_epi32(v, lo));
                } else {
                    let v = _mm512_min_epi32(_mm512_max_epi32(v, lo), hi);
                    _mm512_mask_cvtepi32_storeu_epi8(dst, mask, v);
                }
            }
        });
    });
}
