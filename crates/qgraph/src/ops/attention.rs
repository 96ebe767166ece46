//! Multi-head self-attention core and position ids, the two pieces of a BERT layer that are not
//! Linear, LayerNorm, GELU or Add.
//!
//! Attention follows HF `BertSelfAttention` (eager): for each batch item and head,
//! `scores = q_h k_h^T * (1 / sqrt(head_dim)) + bias`, `bias_j = (1 - mask_j) * f32::MIN`
//! (`torch.finfo(float32).min`, HF's extended attention mask), `probs = softmax(scores)` along
//! the keys, `out_h = probs v_h`, heads written back side by side. Heads are read in place from
//! the `[B, S, hidden]` projections through strided views (each head's keys are copied to
//! `[head_dim, S]` and its values to a dense `[S, head_dim]` block), and both products use
//! [`super::small_matmul`], eight query rows at a time; (batch, head) pairs run as independent
//! rayon tasks, each computing exactly what a sequential loop would, so the result does not
//! depend on the thread count.

use qtensor::Tensor;
use rayon::prelude::*;

use super::small_matmul::{matmul, RowMajor};
use super::vmath::{scaled_softmax_rows, with_simd};
use crate::error::shape_err;
use crate::op::AttentionAttrs;
use crate::value::{IdTensor, Value};
use crate::Result;

/// Shape rule: `q`, `k`, `v` `[B, S, hidden]` and mask `[B, S]`, or the packed form `qkv`
/// `[B, S, 3 hidden]` (query, key and value side by side in each row, as a fused projection
/// writes them) and mask `[B, S]`; output `[B, S, hidden]`.
pub fn attention_shape(node: &str, a: &AttentionAttrs, ins: &[&[usize]]) -> Result<Vec<usize>> {
    if ins.len() != 4 && ins.len() != 2 {
        return Err(shape_err(
            node,
            format!(
                "Attention expects 4 inputs (query, key, value, mask) or 2 (packed qkv, mask), got {}",
                ins.len()
            ),
        ));
    }
    if a.num_heads == 0 || !a.hidden_size.is_multiple_of(a.num_heads) {
        return Err(shape_err(
            node,
            format!(
                "hidden size {} is not a multiple of the {} heads",
                a.hidden_size, a.num_heads
            ),
        ));
    }
    let q = ins[0];
    let mask = ins[ins.len() - 1];
    if ins.len() == 2 {
        if q.len() != 3 || q[2] != 3 * a.hidden_size {
            return Err(shape_err(
                node,
                format!(
                    "packed attention input must be [batch, seq, {}] (query, key, value side by side), got {q:?}",
                    3 * a.hidden_size
                ),
            ));
        }
    } else if q.len() != 3 || q[2] != a.hidden_size || ins[1] != q || ins[2] != q {
        return Err(shape_err(
            node,
            format!(
                "Attention expects query, key and value of the same shape [batch, seq, {}], got {:?}, {:?}, {:?}",
                a.hidden_size, ins[0], ins[1], ins[2]
            ),
        ));
    }
    if mask != &q[..2] {
        return Err(shape_err(
            node,
            format!("attention mask must be [batch, seq] = {:?}, got {:?}", &q[..2], mask),
        ));
    }
    Ok(vec![q[0], q[1], a.hidden_size])
}

/// The additive bias of each key position: 0 where `mask` is 1, `f32::MIN` where it is 0
/// (`(1 - mask) * finfo(float32).min`, as HF).
pub fn mask_bias(node: &str, mask: &Value) -> Result<Vec<f32>> {
    let ones: Vec<f32> = match mask {
        Value::I64(ids) => ids.data().iter().map(|&m| m as f32).collect(),
        Value::F32(t) => t.data().to_vec(),
        other => {
            return Err(shape_err(
                node,
                format!("attention mask must be i64 or f32, got a {}", other.kind()),
            ))
        }
    };
    Ok(ones.into_iter().map(|m| (1.0 - m) * f32::MIN).collect())
}

/// Where query, key and value live: each is `[B, S, hidden]` read at `offset` into its slice
/// with `row_stride` values between consecutive tokens.
#[derive(Debug, Clone, Copy)]
pub struct QkvViews<'a> {
    pub q: (&'a [f32], usize),
    pub k: (&'a [f32], usize),
    pub v: (&'a [f32], usize),
    pub row_stride: usize,
}

impl<'a> QkvViews<'a> {
    /// Three separate dense `[B, S, hidden]` tensors.
    pub fn separate(q: &'a Tensor, k: &'a Tensor, v: &'a Tensor) -> QkvViews<'a> {
        QkvViews {
            q: (q.data(), 0),
            k: (k.data(), 0),
            v: (v.data(), 0),
            row_stride: q.shape()[2],
        }
    }

    /// One packed `[B, S, 3 hidden]` tensor (query, key, value side by side).
    pub fn packed(qkv: &'a Tensor) -> QkvViews<'a> {
        let hidden = qkv.shape()[2] / 3;
        QkvViews {
            q: (qkv.data(), 0),
            k: (qkv.data(), hidden),
            v: (qkv.data(), 2 * hidden),
            row_stride: 3 * hidden,
        }
    }
}

/// Query rows per step of a head: their scores, probabilities and outputs are computed one
/// after the other while the `[QUERY_ROWS, S]` block of scores sits in L1 (a whole `[S, S]`
/// score matrix at S = 128 is larger than L1 and went through L2 twice). Eight rows also make
/// one register tile of the products and one block of the softmax.
const QUERY_ROWS: usize = 8;

/// Runs attention on `[B, S]` tokens; shapes must satisfy [`attention_shape`].
pub fn attention<'a>(a: &AttentionAttrs, batch: usize, seq: usize, qkv: QkvViews<'a>, bias: &[f32]) -> Tensor {
    let (b, s, hidden) = (batch, seq, a.hidden_size);
    let heads = a.num_heads;
    let dh = hidden / heads;
    let scale = 1.0 / (dh as f32).sqrt();
    let stride = qkv.row_stride;
    // Each (batch, head) task writes its `[S, dh]` result to its own block of `per_head`; the
    // blocks are interleaved into `[B, S, hidden]` afterwards.
    let mut per_head = vec![0.0f32; b * heads * s * dh];
    per_head.par_chunks_mut(s * dh).enumerate().for_each_init(
        || (vec![0.0f32; QUERY_ROWS * s], vec![0.0f32; dh * s], vec![0.0f32; s * dh]),
        |(scores, k_t, v_c), (task, out)| {
            let (bi, h) = (task / heads, task % heads);
            let view = |(data, offset): (&'a [f32], usize)| RowMajor {
                data: &data[bi * s * stride + offset + h * dh..],
                rows: s,
                cols: dh,
                stride,
            };
            // K^T of this head, [dh, S], so that each step of the product streams a contiguous
            // row of keys; and V of this head as a dense [S, dh] block: read in place, its rows
            // (a whole token row apart) would fall into a few L1 sets and evict each other. The
            // queries are read in place, a few rows at a time.
            transpose_head(view(qkv.k), k_t);
            for (dst, src) in v_c.chunks_exact_mut(dh).zip(view(qkv.v).data.chunks(stride)) {
                dst.copy_from_slice(&src[..dh]);
            }
            let k_t = RowMajor {
                data: k_t,
                rows: dh,
                cols: s,
                stride: s,
            };
            let v_c = RowMajor {
                data: v_c,
                rows: s,
                cols: dh,
                stride: dh,
            };
            let q = view(qkv.q);
            let bias = &bias[bi * s..(bi + 1) * s];
            for i0 in (0..s).step_by(QUERY_ROWS) {
                let rows = QUERY_ROWS.min(s - i0);
                let q_rows = RowMajor {
                    data: &q.data[i0 * stride..],
                    rows,
                    ..q
                };
                let scores = &mut scores[..rows * s];
                matmul(q_rows, k_t, scores);
                scaled_softmax_rows(scores, s, scale, bias);
                let probs = RowMajor {
                    data: scores,
                    rows,
                    cols: s,
                    stride: s,
                };
                matmul(probs, v_c, &mut out[i0 * dh..(i0 + rows) * dh]);
            }
        },
    );
    let mut y = Vec::with_capacity(b * s * hidden);
    for bi in 0..b {
        for i in 0..s {
            for h in 0..heads {
                let at = ((bi * heads + h) * s + i) * dh;
                y.extend_from_slice(&per_head[at..at + dh]);
            }
        }
    }
    Tensor::new([b, s, hidden], y).expect("shape from attention_shape")
}

/// `k_t[d][j] = k[j][d]` for the `[S, dh]` view `k` into the dense `[dh, S]` `k_t`: 16 x 16
/// blocks transposed in registers on AVX-512 when `dh` is a multiple of 16, else (and for the
/// keys past the last multiple of 16) [`transpose_head_portable`].
fn transpose_head(k: RowMajor<'_>, k_t: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if k.cols.is_multiple_of(16) && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked just above), and `dh` is a multiple of 16.
        unsafe { transpose_avx512::transpose_head(k, k_t) };
        return;
    }
    transpose_head_portable(k, k_t, 0);
}

/// [`transpose_head`] for keys `from..S`, sixteen keys at a time so that each store is a whole
/// vector (about a third faster than key by key).
fn transpose_head_portable(k: RowMajor<'_>, k_t: &mut [f32], from: usize) {
    const KEYS: usize = 16;
    let (s, dh) = (k.rows, k.cols);
    assert!(k_t.len() >= dh * s, "transposed keys too small");
    with_simd(
        #[inline(always)]
        || {
            let mut j0 = from;
            while j0 + KEYS <= s {
                let rows: [&[f32]; KEYS] = std::array::from_fn(|l| &k.data[(j0 + l) * k.stride..][..dh]);
                for d in 0..dh {
                    let dst: &mut [f32; KEYS] = (&mut k_t[d * s + j0..][..KEYS]).try_into().expect("KEYS values");
                    for (x, row) in dst.iter_mut().zip(&rows) {
                        *x = row[d];
                    }
                }
                j0 += KEYS;
            }
            for j in j0..s {
                for d in 0..dh {
                    k_t[d * s + j] = k.data[j * k.stride + d];
                }
            }
        },
    );
}

/// The AVX-512 transpose: 16 rows of 16 values in, 16 columns out, in three rounds of
/// shuffles (pairs of rows interleaved, then 4 x 4 blocks within each 128-bit lane, then the
/// 128-bit lanes themselves).
#[cfg(target_arch = "x86_64")]
mod transpose_avx512 {
    use std::arch::x86_64::*;

    use super::{transpose_head_portable, RowMajor};

    /// [`super::transpose_head`] on AVX-512.
    ///
    /// # Safety
    /// The CPU has AVX-512F and `k.cols` is a multiple of 16.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose_head(k: RowMajor<'_>, k_t: &mut [f32]) {
        let (s, dh) = (k.rows, k.cols);
        assert!(dh.is_multiple_of(16));
        // The bounds of every block below: row `s - 1` of `k` reaches column `dh`, `k_t` holds
        // `dh` rows of `s`.
        assert!(
            s == 0 || k.data.len() >= (s - 1) * k.stride + dh,
            "keys shorter than their shape"
        );
        assert!(k_t.len() >= dh * s, "transposed keys too small");
        let full = 16 * (s / 16);
        for j0 in (0..full).step_by(16) {
            for d0 in (0..dh).step_by(16) {
                // SAFETY: rows `j0..j0 + 16` (at most `s`) and columns `d0..d0 + 16` (at most
                // `dh`) of `k`, rows `d0..d0 + 16` and columns `j0..j0 + 16` of `k_t`, all within
                // the bounds asserted above; the CPU has AVX-512F (this function's contract).
                unsafe {
                    let mut r = [_mm512_setzero_ps(); 16];
                    for (l, r) in r.iter_mut().enumerate() {
                        *r = _mm512_loadu_ps(k.data.as_ptr().add((j0 + l) * k.stride + d0));
                    }
                    let c = block16(r);
                    for (d, c) in c.iter().enumerate() {
                        _mm512_storeu_ps(k_t.as_mut_ptr().add((d0 + d) * s + j0), *c);
                    }
                }
            }
        }
        transpose_head_portable(k, k_t, full);
    }

    /// The transpose of the 16 x 16 block whose rows are `r`: column `c` of the result is row `c`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn block16(r: [__m512; 16]) -> [__m512; 16] {
        // In every 128-bit lane `b`: t[2i] = r[2i][4b], r[2i+1][4b], r[2i][4b+1], r[2i+1][4b+1]
        // and t[2i+1] the same at 4b+2 and 4b+3.
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        // u[4g + c], lane `b`: rows 4g..4g+4 at column 4b + c.
        let mut u = [_mm512_setzero_ps(); 16];
        for g in 0..4 {
            let (lo, hi) = (4 * g, 4 * g + 2);
            u[4 * g] = _mm512_shuffle_ps::<0x44>(t[lo], t[hi]);
            u[4 * g + 1] = _mm512_shuffle_ps::<0xEE>(t[lo], t[hi]);
            u[4 * g + 2] = _mm512_shuffle_ps::<0x44>(t[lo + 1], t[hi + 1]);
            u[4 * g + 3] = _mm512_shuffle_ps::<0xEE>(t[lo + 1], t[hi + 1]);
        }
        // Column 4b + c gathers lane `b` of u[c], u[4 + c], u[8 + c], u[12 + c].
        let mut out = [_mm512_setzero_ps(); 16];
        for c in 0..4 {
            let even_lo = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
            let even_hi = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
            let odd_lo = _mm512_shuffle_f32x4::<0xDD>(u[c], u[4 + c]);
            let odd_hi = _mm512_shuffle_f32x4::<0xDD>(u[8 + c], u[12 + c]);
            out[c] = _mm512_shuffle_f32x4::<0x88>(even_lo, even_hi);
            out[8 + c] = _mm512_shuffle_f32x4::<0xDD>(even_lo, even_hi);
            out[4 + c] = _mm512_shuffle_f32x4::<0x88>(odd_lo, odd_hi);
            out[12 + c] = _mm512_shuffle_f32x4::<0xDD>(odd_lo, odd_hi);
        }
        out
    }
}

/// `0, 1, .., S-1` along the last dimension of `shape`, repeated over the leading ones.
pub fn position_ids(shape: &[usize]) -> IdTensor {
    let s = shape.last().copied().unwrap_or(1).max(1);
    let n: usize = shape.iter().product();
    let data = (0..n).map(|i| (i % s) as i64).collect();
    IdTensor::new(shape.to_vec(), data).expect("element count from the shape")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposed_keys_match_the_portable_copy() {
        for &(s, dh, stride) in &[(128, 32, 1152), (37, 16, 50), (16, 64, 64), (5, 32, 32), (40, 12, 13)] {
            let data: Vec<f32> = (0..s * stride).map(|i| i as f32 * 0.5 - 3.0).collect();
            let k = RowMajor {
                data: &data,
                rows: s,
                cols: dh,
                stride,
            };
            let mut got = vec![f32::NAN; dh * s];
            transpose_head(k, &mut got);
            let want: Vec<f32> = (0..dh * s).map(|at| data[(at % s) * stride + at / s]).collect();
            assert_eq!(got, want, "{s} keys of {dh}");
            let mut portable = vec![f32::NAN; dh * s];
            transpose_head_portable(k, &mut portable, 0);
            assert_eq!(portable, want, "{s} keys of {dh}, portable");
        }
    }
}
