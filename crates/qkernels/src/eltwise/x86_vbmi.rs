//! AVX-512 VBMI byte tables: any `u8 -> u8` map given as its 256 values (a requantization
//! from one activation's parameters to another's, an activation table) applied 64 bytes at a
//! time. The table fills four vectors; two two-source byte permutes look every byte up in
//! entries 0..127 and 128..255 by its low seven bits, and its top bit picks between the two.
//! The table holds the reference's own values, so the result is the reference's byte for byte.
//!
//! Safety contract of every function here: the CPU has AVX-512 F/BW and VBMI (callers check
//! `EltwisePath::Avx512Vbmi` first), and the slice lengths stated on each function hold.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

/// A 256-entry byte table in four vectors (entries `64 * i..` in `t[i]`).
#[derive(Clone, Copy)]
pub(super) struct ByteTable {
    t: [__m512i; 4],
}

impl ByteTable {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub(super) unsafe fn load(table: &[u8; 256]) -> ByteTable {
        let p = table.as_ptr();
        // SAFETY: the four loads read `table`'s 256 bytes.
        let t = unsafe { [0, 64, 128, 192].map(|at| _mm512_loadu_si512(p.add(at).cast())) };
        ByteTable { t }
    }

    /// `table[v]` for each byte `v` of `idx`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    unsafe fn lookup(&self, idx: __m512i) -> __m512i {
        let low = _mm512_permutex2var_epi8(self.t[0], idx, self.t[1]);
        let high = _mm512_permutex2var_epi8(self.t[2], idx, self.t[3]);
        _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), low, high)
    }
}

/// The low `n` bits (`n <= 64`).
#[inline]
fn low_bits(n: usize) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// Writes `src.len() / width` rows of `width` bytes to `dst` every `stride >= width` bytes,
/// each byte `v` as `table[v]`. `dst.len() >= (rows - 1) * stride + width`.
///
/// Rows of 64 bytes or more go 64 bytes at a time with a masked tail; rows of 22 to 63 bytes
/// one masked load and store each. Narrower rows are consecutive in `src`, so one load takes
/// `64 / width` of them, and each next row is moved down to byte 0 by a byte permute before its
/// masked store (a whole-vector store placed so that its selected bytes land on the row, with
/// the vector's other bytes over the rows around it, measured up to twice as slow). Rows of 32
/// bytes, UNet's, go two per load, stored as the vector's 256-bit halves.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
pub(super) unsafe fn map_rows(src: &[u8], width: usize, dst: &mut [MaybeUninit<u8>], stride: usize, table: &ByteTable) {
    if width == 0 {
        return;
    }
    let rows = src.len() / width;
    assert!(
        stride >= width && (rows == 0 || dst.len() >= (rows - 1) * stride + width),
        "map_rows: destination too short"
    );
    // Bytes are only written through `d` (the destination may be uninitialized).
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr() as *mut u8);
    if width >= 64 {
        let tail: __mmask64 = low_bits(width % 64);
        for r in 0..rows {
            // SAFETY: row `r` spans `src[r * width..][..width]` and `dst[r * stride..][..width]`
            // (checked above); masked accesses touch only the selected bytes.
            unsafe {
                let (s, d) = (s.add(r * width), d.add(r * stride));
                let mut c = 0;
                while c + 64 <= width {
                    let v = table.lookup(_mm512_loadu_si512(s.add(c).cast()));
                    _mm512_storeu_si512(d.add(c).cast(), v);
                    c += 64;
                }
                if tail != 0 {
                    let v = table.lookup(_mm512_maskz_loadu_epi8(tail, s.add(c).cast()));
                    _mm512_mask_storeu_epi8(d.add(c).cast(), tail, v);
                }
            }
        }
        return;
    }
    let mut r = 0;
    if width == 32 {
        // Two rows per load, each stored as a 256-bit half: a whole-vector masked store placed
        // half a vector early would straddle one more cache line than the row does.
        while r + 2 <= rows {
            // SAFETY: the load reads `src[r * 32..][..64]` (rows `r`, `r + 1`), the stores
            // write `dst[(r + j) * stride..][..32]` for `j` = 0, 1, inside the slices as
            // `r + 2 <= rows`.
            unsafe {
                let v = table.lookup(_mm512_loadu_si512(s.add(r * 32).cast()));
                let d = d.add(r * stride);
                _mm256_storeu_si256(d.cast(), _mm512_castsi512_si256(v));
                _mm256_storeu_si256(d.add(stride).cast(), _mm512_extracti64x4_epi64::<1>(v));
            }
            r += 2;
        }
    }
    let row_mask = low_bits(width);
    if width > 21 {
        // One row per load: measured faster than two rows and a shift from 24 bytes on.
        while r < rows {
            // SAFETY: the masked load and store select row `r`'s bytes, `src[r * width..]
            // [..width]` and `dst[r * stride..][..width]`, inside the slices as `r < rows`.
            unsafe {
                let v = table.lookup(_mm512_maskz_loadu_epi8(row_mask, s.add(r * width).cast()));
                _mm512_mask_storeu_epi8(d.add(r * stride).cast(), row_mask, v);
            }
            r += 1;
        }
        return;
    }
    let per_load = 64 / width;
    // Byte `i` of a vector moved down by one row: byte `i + width` (mod 64; the bytes that
    // wrap around are masked out of the store).
    let step = _mm512_add_epi8(
        _mm512_set_epi64(
            0x3f3e3d3c3b3a3938,
            0x3736353433323130,
            0x2f2e2d2c2b2a2928,
            0x2726252423222120,
            0x1f1e1d1c1b1a1918,
            0x1716151413121110,
            0x0f0e0d0c0b0a0908,
            0x0706050403020100,
        ),
        _mm512_set1_epi8(width as i8),
    );
    while r < rows {
        let k = per_load.min(rows - r);
        // SAFETY: the load selects `src[r * width..][..k * width]`, inside `src` as
        // `r + k <= rows`; store `j` selects `dst[(r + j) * stride..][..width]`, inside `dst`.
        unsafe {
            let mut v = table.lookup(_mm512_maskz_loadu_epi8(low_bits(k * width), s.add(r * width).cast()));
            let d = d.add(r * stride);
            _mm512_mask_storeu_epi8(d.cast(), row_mask, v);
            for j in 1..k {
                v = _mm512_permutexvar_epi8(step, v);
                _mm512_mask_storeu_epi8(d.add(j * stride).cast(), row_mask, v);
            }
        }
        r += k;
    }
}

/// `y[i] = table[x[i]]`; `x.len() == y.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
pub(super) unsafe fn map(x: &[u8], y: &mut [u8], table: &ByteTable) {
    assert_eq!(x.len(), y.len(), "map: lengths differ");
    // SAFETY: `u8` and `MaybeUninit<u8>` share a layout; `map_rows` writes initialized bytes.
    let y = unsafe { &mut *(y as *mut [u8] as *mut [MaybeUninit<u8>]) };
    // SAFETY: one row of `x.len()` bytes, as long as `y`.
    unsafe { map_rows(x, x.len().max(1), y, x.len().max(1), table) }
}

/// `x[i] = table[x[i]]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
pub(super) unsafe fn map_in_place(x: &mut [u8], table: &ByteTable) {
    let p = x.as_mut_ptr();
    let mut i = 0;
    while i < x.len() {
        let mask = low_bits(x.len() - i);
        // SAFETY: the masked load and store select `x[i..][..min(64, len - i)]`.
        unsafe {
            let v = table.lookup(_mm512_maskz_loadu_epi8(mask, p.add(i).cast()));
            _mm512_mask_storeu_epi8(p.add(i).cast(), mask, v);
        }
        i += 64;
    }
}
