//! AVX-512 VNNI kernel of the direct convolution (`direct.rs`): one output row at a time, cut
//! into register tiles of `R` consecutive output pixels x `P` panels of 16 output channels
//! (`R * P <= 28` zmm accumulators). Per packed weight row it loads `P` weight vectors and, per
//! pixel, broadcasts 4 input bytes and issues `P` `vpdpbusd` (u8 x s8, four exact products per
//! i32 lane). The tile is finished in registers: zero-point offset, then the shared
//! requantization (`requant::avx512::requant16`), clamp, and a 16-byte store per pixel and
//! panel (masked on the last panel when `c_out` is not a multiple of 16).

use std::arch::asm;
use std::arch::x86_64::*;

use super::direct::{DirectConv, Epilogue, PANEL, PANEL_ROW};
use super::requant::avx512::requant16;

/// Panels per column tile and the most pixels a tile of that width holds.
fn tile_shape(panels_left: usize) -> (usize, usize) {
    match panels_left {
        1 => (1, 16),
        3 => (3, 9),
        _ => (2, 14),
    }
}

/// Computes one output row: packed group `g` of pixel 0 reads the 4 bytes at
/// `base + offsets[g]`, consecutive pixels `pixel_stride` bytes apart; `out` holds
/// `pixels * c_out` bytes.
///
/// # Safety
/// The CPU supports AVX-512 F/BW/VL/VNNI; `base + offsets[g] + (pixels - 1) * pixel_stride`
/// has 4 readable bytes for every group; `offsets` has one entry per packed group of `p`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn row(
    p: &DirectConv,
    epi: &Epilogue,
    base: *const u8,
    offsets: &[usize],
    pixel_stride: usize,
    pixels: usize,
    out: &mut [u8],
) {
    let c_out = p.c_out();
    debug_assert_eq!(out.len(), pixels * c_out);
    let wstride = p.groups_total * PANEL_ROW;
    let mut panel = 0;
    while panel < p.panels {
        let (pp, r_max) = tile_shape(p.panels - panel);
        let last = panel + pp == p.panels;
        let tail = c_out - (p.panels - 1) * PANEL;
        let last_mask: __mmask16 = if last && tail < PANEL { (1u16 << tail) - 1 } else { !0 };
        let w = p.weights.as_ptr().cast::<i8>().add(panel * wstride);
        // Balanced pixel tiles: `tiles` tiles of `r_max` or `r_max - 1`... pixels.
        let tiles = pixels.div_ceil(r_max);
        let (even, extra) = (pixels / tiles, pixels % tiles);
        let mut px = 0;
        for t in 0..tiles {
            let r = even + usize::from(t < extra);
            let a = base.add(px * pixel_stride);
            let dst = out.as_mut_ptr().add(px * c_out + panel * PANEL);
            let ch = panel * PANEL;
            macro_rules! go {
                ($P:literal; $($R:literal),*) => {
                    match r {
                        $($R => tile::<$R, $P>(a, offsets, pixel_stride, w, wstride, epi, ch, dst, c_out, last_mask),)*
                        _ => unreachable!("tile of {r} pixels"),
                    }
                };
            }
            match pp {
                1 => go!(1; 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16),
                2 => go!(2; 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14),
                3 => go!(3; 1, 2, 3, 4, 5, 6, 7, 8, 9),
                _ => unreachable!("tiles have 1 to 3 panels"),
            }
            px += r;
        }
        panel += pp;
    }
}

/// `acc[q] += dot4(bytes at p, w[q])` per lane for `P` panels. One asm block per pixel keeps
/// the compiler from hoisting every broadcast of a tile ahead of the products (which would
/// need `R` more registers than the tile has and spill the accumulators).
///
/// Used inside functions with AVX-512 VNNI enabled; `$p` must have 4 readable bytes.
macro_rules! broadcast_dot {
    ($P:expr, $acc:expr, $p:expr, $w:expr) => {{
    let (acc, p, w) = ($acc, $p, $w);
    let _tmp: __m512i;
    match $P {
        1 => asm!(
            "vpbroadcastd {t}, dword ptr [{p}]",
            "vpdpbusd {a0}, {t}, {w0}",
            p = in(reg) p, t = out(zmm_reg) _tmp,
            a0 = inout(zmm_reg) acc[0], w0 = in(zmm_reg) w[0],
            options(nostack, preserves_flags, readonly),
        ),
        2 => asm!(
            "vpbroadcastd {t}, dword ptr [{p}]",
            "vpdpbusd {a0}, {t}, {w0}",
            "vpdpbusd {a1}, {t}, {w1}",
            p = in(reg) p, t = out(zmm_reg) _tmp,
            a0 = inout(zmm_reg) acc[0], w0 = in(zmm_reg) w[0],
            a1 = inout(zmm_reg) acc[1], w1 = in(zmm_reg) w[1],
            options(nostack, preserves_flags, readonly),
        ),
        3 => asm!(
            "vpbroadcastd {t}, dword ptr [{p}]",
            "vpdpbusd {a0}, {t}, {w0}",
            "vpdpbusd {a1}, {t}, {w1}",
            "vpdpbusd {a2}, {t}, {w2}",
            p = in(reg) p, t = out(zmm_reg) _tmp,
            a0 = inout(zmm_reg) acc[0], w0 = in(zmm_reg) w[0],
            a1 = inout(zmm_reg) acc[1], w1 = in(zmm_reg) w[1],
            a2 = inout(zmm_reg) acc[2], w2 = in(zmm_reg) w[2],
            options(nostack, preserves_flags, readonly),
        ),
        _ => unreachable!("tiles have 1 to 3 panels"),
    }
    }};
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
    offsets: &[usize],
    pixel_stride: usize,
    w: *const i8,
    wstride: usize,
    epi: &Epilogue,
    ch: usize,
    out: *mut u8,
    ostride: usize,
    last_mask: __mmask16,
) {
    let mut acc = [[_mm512_setzero_si512(); P]; R];
    let mut wp = w;
    for &off in offsets {
        let a = a.add(off);
        // SAFETY: the packed weights hold one 64-byte aligned row per group and panel.
        let wv: [__m512i; P] = std::array::from_fn(|q| _mm512_load_si512(wp.add(q * wstride).cast()));
        for (r, acc_r) in acc.iter_mut().enumerate() {
            // SAFETY: 4 readable bytes per pixel and group (see `row`).
            broadcast_dot!(P, acc_r, a.add(r * pixel_stride), &wv);
        }
        wp = wp.add(PANEL_ROW);
    }
    let zp = _mm512_set1_epi32(epi.zero_point);
    let (lo, hi) = (_mm512_set1_epi32(epi.lo), _mm512_set1_epi32(epi.hi));
    for q in 0..P {
        let j = ch + q * PANEL;
        // SAFETY: the epilogue vectors are padded to whole panels.
        let offset = _mm512_loadu_si512(epi.offset.as_ptr().add(j).cast());
        let bias = _mm512_loadu_ps(epi.bias_term.as_ptr().add(j));
        let mul = _mm512_loadu_ps(epi.multiplier.as_ptr().add(j));
        let mask = if q == P - 1 { last_mask } else { !0 };
        for (r, acc_r) in acc.iter().enumerate() {
            let v = requant16(_mm512_add_epi32(acc_r[q], offset), bias, mul, zp);
            let v = _mm512_min_epi32(_mm512_max_epi32(v, lo), hi);
            // SAFETY: the masked store writes the tile's channels of pixel `r` only.
            _mm512_mask_cvtepi32_storeu_epi8(out.add(r * ostride + q * PANEL).cast(), mask, v);
        }
    }
}
