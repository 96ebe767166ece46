//! A 1x1 convolution with few output channels (a segmentation head: UNet's 32 -> 5) finished
//! straight into dequantized NCHW `f32`, the value a quantized graph hands back to float code.
//!
//! The channel-lane kernel (`direct.rs`) would fill one 16-lane panel with 5 real channels and
//! spend as much time requantizing and storing each pixel as multiplying it. Here the vector
//! lanes hold 16 consecutive pixels instead: per block of 16 pixels, each 4-channel group of
//! the input is transposed into one vector (pixel `p` in lane `p`), every output channel is a
//! `vpdpbusd` with that channel's 4 weights broadcast, and each output channel's 16 values are
//! requantized, clamped, dequantized and stored as 16 consecutive floats of its NCHW plane.
//!
//! Arithmetic: the sums start at `-x_zp * sum w` and add the raw products, as in the direct
//! kernel (exact in i32), then the shared requantization (`requant::avx512`), the activation
//! clamp, and `dequantize_one`: `(q - y_zp) as f32 * y_scale`. Every value is the bit pattern
//! of the separate convolution followed by `nhwc_u8_to_nchw_f32`, on every thread count (each
//! output is computed by one lane with the whole reduction).

use std::mem::MaybeUninit;

use super::direct::Epilogue;
use super::geometry::Conv2dGeometry;
use super::requant::ActQuant;
use super::NhwcShape;

/// Most output channels the kernel covers (one accumulator vector each).
pub(crate) const MAX_CHANNELS: usize = 8;

/// Pixels per task of the thread team (a multiple of 16).
const TASK_PIXELS: usize = 2048;

/// Whether the geometry and CPU allow the kernel: 1x1, stride 1, no padding, one group,
/// `c_in` in whole 16-byte chunks, at most [`MAX_CHANNELS`] outputs, AVX-512 VNNI (and
/// symmetric weights, which the caller checks through the direct kernel's packing).
pub(crate) fn applies(g: &Conv2dGeometry) -> bool {
    g.kernel == (1, 1)
        && g.stride == (1, 1)
        && g.padding == (0, 0)
        && g.groups == 1
        && g.c_in.is_multiple_of(16)
        && (1..=MAX_CHANNELS).contains(&g.c_out)
        && super::direct::supported()
}

/// Convolves NHWC `x` (`xs`) with PyTorch-layout weights `w` (`[c_out, c_in]`) into NCHW
/// `y` (`xs.n * c_out * xs.h * xs.w` floats, every one of which it stores, so `y` may start
/// uninitialized), finishing with `epi` and dequantizing with
/// `y_q`. The caller has checked [`applies`] and the lengths.
pub(crate) fn run(
    g: &Conv2dGeometry,
    x: &[u8],
    xs: NhwcShape,
    w: &[i8],
    epi: &Epilogue,
    y_q: ActQuant,
    y: &mut [MaybeUninit<f32>],
) {
    let (c_in, c_out, plane) = (g.c_in, g.c_out, xs.h * xs.w);
    assert!(applies(g) && xs.c == c_in && x.len() == xs.len() && w.len() == c_out * c_in);
    assert_eq!(y.len(), xs.n * c_out * plane);
    if plane == 0 {
        return;
    }
    let mut tasks = Vec::new();
    for (image, out) in x.chunks_exact(plane * c_in).zip(y.chunks_exact_mut(plane * c_out)) {
        let mut planes: Vec<_> = out.chunks_exact_mut(plane).map(|p| p.chunks_mut(TASK_PIXELS)).collect();
        for t in 0..plane.div_ceil(TASK_PIXELS) {
            let slices: Vec<&mut [MaybeUninit<f32>]> = planes.iter_mut().filter_map(|p| p.next()).collect();
            let end = ((t + 1) * TASK_PIXELS).min(plane);
            tasks.push((&image[t * TASK_PIXELS * c_in..end * c_in], slices));
        }
    }
    crate::team::for_each_item(rayon::current_num_threads(), tasks, &|(src, mut planes)| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `applies` checked AVX-512 VNNI, `c_in % 16 == 0` and `c_out <= MAX_CHANNELS`;
        // `src` holds whole pixels of `c_in` bytes, each of the `c_out` planes one float per
        // pixel of `src`, and `w` holds `c_out * c_in` weights.
        unsafe {
            avx512::pixels(src, c_in, w, epi, y_q, &mut planes)
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("the pixel-lane kernel exists on x86_64 only: {src:?} {planes:?} {y_q:?}");
    });
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::requant::avx512::{requant16, requant16_in_range};
    use super::{ActQuant, Epilogue, MaybeUninit, MAX_CHANNELS};

    /// Converts the pixels of `src` into `planes` (16 at a time; a last partial block goes
    /// through a zero-filled copy and masked stores).
    ///
    /// # Safety
    /// The CPU supports AVX-512 F/BW/VNNI; `c_in % 16 == 0`; `src.len()` is a multiple of
    /// `c_in`; `1 <= planes.len() <= MAX_CHANNELS`, each plane holding `src.len() / c_in`
    /// floats; `w.len() == planes.len() * c_in`; `epi` has at least `planes.len()` channels.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn pixels(
        src: &[u8],
        c_in: usize,
        w: &[i8],
        epi: &Epilogue,
        y_q: ActQuant,
        planes: &mut [&mut [MaybeUninit<f32>]],
    ) {
        let pixels = src.len() / c_in;
        let mut out: [*mut f32; MAX_CHANNELS] = [std::ptr::null_mut(); MAX_CHANNELS];
        for (o, p) in out.iter_mut().zip(planes.iter_mut()) {
            debug_assert_eq!(p.len(), pixels);
            *o = p.as_mut_ptr().cast::<f32>();
        }
        macro_rules! go {
            ($($c:literal),*) => {
                match planes.len() {
                    $($c => {
                        let full = pixels / 16 * 16;
                        let mut p = 0;
                        while p < full {
                            // SAFETY: pixels `p..p + 16` are in `src` and every plane.
                            block::<$c>(src.as_ptr().add(p * c_in), c_in, w, epi, y_q, &out, p, !0);
                            p += 16;
                        }
                        if p < pixels {
                            let left = pixels - p;
                            let mut tail = vec![0u8; 16 * c_in];
                            tail[..left * c_in].copy_from_slice(&src[p * c_in..]);
                            // SAFETY: the copy holds 16 pixels; the mask stores `left` floats.
                            block::<$c>(tail.as_ptr(), c_in, w, epi, y_q, &out, p, (1u16 << left) - 1);
                        }
                    })*
                    n => unreachable!("{n} output channels"),
                }
            };
        }
        go!(1, 2, 3, 4, 5, 6, 7, 8);
    }

    /// 16 pixels at `x` (`c_in` bytes apart) into lanes `0..16` of every plane `out[o]` from
    /// pixel `p` on (the lanes of `mask` only).
    ///
    /// Safety: as [`pixels`]; `x` has 16 pixels of `c_in` bytes, and `out[o] + p` has room
    /// for the masked lanes for `o < C`.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn block<const C: usize>(
        x: *const u8,
        c_in: usize,
        w: &[i8],
        epi: &Epilogue,
        y_q: ActQuant,
        out: &[*mut f32; MAX_CHANNELS],
        p: usize,
        mask: __mmask16,
    ) {
        // SAFETY (loads below): `epi` vectors are padded to whole panels (>= C channels).
        let mut acc: [__m512i; C] = std::array::from_fn(|o| _mm512_set1_epi32(*epi.offset.get_unchecked(o)));
        let wd = w.as_ptr().cast::<i32>();
        for chunk in 0..c_in / 16 {
            // z[q] holds 16 bytes (4 groups) of pixels q, q + 4, q + 8, q + 12 in its four
            // 128-bit lanes; a 4x4 dword transpose inside each lane then leaves group k of
            // pixel 4l + q in dword q of lane l of g[k]: pixel order.
            let at = |pixel: usize| x.add(pixel * c_in + chunk * 16).cast::<__m128i>();
            // SAFETY: pixels 0..16 each have `c_in` bytes; `chunk * 16 + 16 <= c_in`.
            let z: [__m512i; 4] = std::array::from_fn(|q| {
                let v = _mm512_castsi128_si512(_mm_loadu_si128(at(q)));
                let v = _mm512_inserti32x4::<1>(v, _mm_loadu_si128(at(q + 4)));
                let v = _mm512_inserti32x4::<2>(v, _mm_loadu_si128(at(q + 8)));
                _mm512_inserti32x4::<3>(v, _mm_loadu_si128(at(q + 12)))
            });
            let t0 = _mm512_unpacklo_epi32(z[0], z[1]);
            let t1 = _mm512_unpackhi_epi32(z[0], z[1]);
            let t2 = _mm512_unpacklo_epi32(z[2], z[3]);
            let t3 = _mm512_unpackhi_epi32(z[2], z[3]);
            let g = [
                _mm512_unpacklo_epi64(t0, t2),
                _mm512_unpackhi_epi64(t0, t2),
                _mm512_unpacklo_epi64(t1, t3),
                _mm512_unpackhi_epi64(t1, t3),
            ];
            for (o, a) in acc.iter_mut().enumerate() {
                for (k, gk) in g.iter().enumerate() {
                    // SAFETY: weight dword `chunk * 4 + k` of output channel `o < C` lies in
                    // `w` (`c_out * c_in` bytes; read unaligned).
                    let wv = _mm512_set1_epi32(wd.add(o * c_in / 4 + chunk * 4 + k).read_unaligned());
                    *a = _mm512_dpbusd_epi32(*a, *gk, wv);
                }
            }
        }
        let zp = _mm512_set1_epi32(epi.zero_point);
        let (lo, hi) = (_mm512_set1_epi32(epi.lo), _mm512_set1_epi32(epi.hi));
        let (y_zp, scale) = (_mm512_set1_epi32(y_q.zero_point), _mm512_set1_ps(y_q.scale));
        for (o, a) in acc.iter().enumerate() {
            let bias = _mm512_set1_ps(*epi.bias_term.get_unchecked(o));
            let mul = _mm512_set1_ps(*epi.multiplier.get_unchecked(o));
            let q = if epi.float_clamp {
                requant16(*a, bias, mul, zp)
            } else {
                requant16_in_range(*a, bias, mul, zp)
            };
            let q = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);
            // dequantize_one: (q - y_zp) as f32 * scale (the difference is exact in i32 and f32).
            let f = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(q, y_zp)), scale);
            // SAFETY: the caller's bound on `out[o] + p` and `mask`.
            _mm512_mask_storeu_ps(out[o].add(p), mask, f);
        }
    }
}
