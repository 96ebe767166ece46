//! Quantized `add` (optionally fused with ReLU) and `mul` with requantization to given output
//! parameters (PyTorch `quantized::add`, `quantized::add_relu`, `quantized::mul`, x86 kernels in
//! `QuantizedOpKernels.cpp`).
//!
//! add: `a' = dq(a)`, `b' = dq(b)` under the [`FloatRule`], `c = a' + b'` (f32), ReLU
//! `c = max(c, 0)`, `y = clamp(zp_y + round_half_even(c * (1 / s_y)), 0, 255)` with the f32
//! reciprocal. mul: integer product `p = (a - zp_a) * (b - zp_b)`, `m = s_a * s_b * (1 / s_y)`
//! (f32, left to right), `y = clamp(zp_y + round_half_even(p as f32 * m), 0, 255)`, ReLU raising
//! the lower bound to `zp_y`; the mul has one rule only (PyTorch's two loops agree).
//!
//! `AddParams::one` and `MulParams::one` are the reference, one element at a time. The
//! vector paths evaluate the same f32 operations in the same order on 8 or 16 lanes (`fma`
//! for the fused dequantize, `vcvtps2dq` rounding half to even, clamping in f32 before the
//! conversion, which equals clamping after it because the bounds are integers; a NaN sum clamps
//! to the lower bound as the reference does) and leave the last `len % lanes` elements to the
//! reference. Large inputs are split into chunks across rayon threads; each element is
//! independent, so neither the path nor the thread count changes a result.
//!
//! The add also runs in place, on a buffer holding one operand ([`add_in_place_on`], and a
//! convolution's output rows as they are produced): the vector loops store each element after
//! loading both of its operands, so the output may be an input, and the bytes are [`add_on`]'s.

use rayon::prelude::*;

use super::{check_same_len, quantize_u8, EltwisePath, FloatRule};
use crate::conv::ActQuant;
use crate::Result;

/// Elements per rayon task (a multiple of every vector width).
const CHUNK: usize = 1 << 15;

/// Per-call constants of a quantized add, as every path uses them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AddParams {
    pub a_scale: f32,
    pub a_zero_point: i32,
    /// `a_scale * -(a_zero_point as f32)` (the fused dequantize's addend).
    pub a_premul: f32,
    pub b_scale: f32,
    pub b_zero_point: i32,
    pub b_premul: f32,
    /// `1 / s_y` in f32.
    pub inv_scale: f32,
    pub y_zero_point: i32,
    pub relu: bool,
    pub rule: FloatRule,
}

impl AddParams {
    fn new(a_q: ActQuant, b_q: ActQuant, y_q: ActQuant, relu: bool, rule: FloatRule) -> AddParams {
        AddParams {
            a_scale: a_q.scale,
            a_zero_point: a_q.zero_point,
            a_premul: a_q.scale * -(a_q.zero_point as f32),
            b_scale: b_q.scale,
            b_zero_point: b_q.zero_point,
            b_premul: b_q.scale * -(b_q.zero_point as f32),
            inv_scale: 1.0 / y_q.scale,
            y_zero_point: y_q.zero_point,
            relu,
            rule,
        }
    }

    /// The reference: one output element.
    #[inline]
    pub fn one(&self, qa: u8, qb: u8) -> u8 {
        let c = self.rule.dequantize(qa as i32, self.a_scale, self.a_zero_point)
            + self.rule.dequantize(qb as i32, self.b_scale, self.b_zero_point);
        let c = if self.relu { c.max(0.0) } else { c };
        quantize_u8(c, self.inv_scale, self.y_zero_point)
    }
}

/// Per-call constants of a quantized mul.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MulParams {
    pub a_zero_point: i32,
    pub b_zero_point: i32,
    /// `s_a * s_b * (1 / s_y)` in f32.
    pub multiplier: f32,
    pub y_zero_point: i32,
    /// Lower output bound: `zp_y` with ReLU, else 0.
    pub lo: i32,
}

impl MulParams {
    fn new(a_q: ActQuant, b_q: ActQuant, y_q: ActQuant, relu: bool) -> MulParams {
        MulParams {
            a_zero_point: a_q.zero_point,
            b_zero_point: b_q.zero_point,
            multiplier: a_q.scale * b_q.scale * (1.0 / y_q.scale),
            y_zero_point: y_q.zero_point,
            lo: if relu { y_q.zero_point } else { 0 },
        }
    }

    /// The reference: one output element.
    #[inline]
    pub fn one(&self, qa: u8, qb: u8) -> u8 {
        let p = (qa as i32 - self.a_zero_point) * (qb as i32 - self.b_zero_point);
        // The f32 -> i64 conversion saturates (an overflowing product lands on 255, not wraps).
        let r = ((p as f32 * self.multiplier).round_ties_even() as i64).saturating_add(self.y_zero_point as i64);
        r.clamp(self.lo as i64, 255) as u8
    }
}

/// `y = quantize(dq(a) + dq(b))`, with an optional fused ReLU, on the fastest path. See the
/// module docs.
#[allow(clippy::too_many_arguments)]
pub fn add(
    a: &[u8],
    a_q: ActQuant,
    b: &[u8],
    b_q: ActQuant,
    y_q: ActQuant,
    relu: bool,
    rule: FloatRule,
    y: &mut [u8],
) -> Result<()> {
    add_on(EltwisePath::best(), a, a_q, b, b_q, y_q, relu, rule, y)
}

/// [`add`] on a chosen path (tests force each one the CPU supports).
#[allow(clippy::too_many_arguments)]
pub fn add_on(
    path: EltwisePath,
    a: &[u8],
    a_q: ActQuant,
    b: &[u8],
    b_q: ActQuant,
    y_q: ActQuant,
    relu: bool,
    rule: FloatRule,
    y: &mut [u8],
) -> Result<()> {
    check_same_len("add", a.len(), b.len())?;
    check_same_len("add", a.len(), y.len())?;
    path.check("add")?;
    let p = AddParams::new(a_q, b_q, y_q, relu, rule);
    for_chunks(a, b, y, |a, b, y| add_chunk(path, a, b, y, &p));
    Ok(())
}

/// Which operand of a quantized add a buffer updated in place holds (the add's f32 sum is
/// commutative, but the operands keep their order so the code path is the two-input one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddOperand {
    First,
    Second,
}

/// [`add`] in place: `y` holds one operand (`y_operand`, with parameters `y_in_q`) and receives
/// `quantize(dq(a) + dq(b))` with parameters `y_q`, the bytes [`add_on`] writes for the same
/// operands on the same path. A residual connection fused into the convolution that produces
/// one operand applies it this way (`PackedConv2d::forward_add`).
#[allow(clippy::too_many_arguments)]
pub fn add_in_place_on(
    path: EltwisePath,
    y: &mut [u8],
    y_operand: AddOperand,
    y_in_q: ActQuant,
    other: &[u8],
    other_q: ActQuant,
    y_q: ActQuant,
    relu: bool,
    rule: FloatRule,
) -> Result<()> {
    check_same_len("add", y.len(), other.len())?;
    InPlaceAdd::new(path, y_operand, y_in_q, other_q, y_q, relu, rule)?.apply_all(y, other);
    Ok(())
}

/// A quantized add applied in place to pieces of one operand (rows of a convolution's output
/// as they are produced), each on the calling thread.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InPlaceAdd {
    path: EltwisePath,
    params: AddParams,
    y_first: bool,
}

impl InPlaceAdd {
    /// The add of operand `y_operand` (parameters `y_in_q`) and another (`other_q`) into `y_q`
    /// on `path` (an error unless the CPU runs it).
    pub(crate) fn new(
        path: EltwisePath,
        y_operand: AddOperand,
        y_in_q: ActQuant,
        other_q: ActQuant,
        y_q: ActQuant,
        relu: bool,
        rule: FloatRule,
    ) -> Result<InPlaceAdd> {
        path.check("add")?;
        let y_first = y_operand == AddOperand::First;
        let (a_q, b_q) = if y_first { (y_in_q, other_q) } else { (other_q, y_in_q) };
        Ok(InPlaceAdd {
            path,
            params: AddParams::new(a_q, b_q, y_q, relu, rule),
            y_first,
        })
    }

    /// [`InPlaceAdd::apply`] over a whole tensor, in chunks across rayon threads.
    pub(crate) fn apply_all(&self, y: &mut [u8], other: &[u8]) {
        if y.len() <= CHUNK {
            self.apply(y, other);
        } else {
            y.par_chunks_mut(CHUNK)
                .zip(other.par_chunks(CHUNK))
                .for_each(|(y, o)| self.apply(y, o));
        }
    }

    /// `y = add(y, other)` element by element (operands in the order given to `new`): the
    /// vector path's loop with the output on its input, then [`AddParams::one`] on the tail,
    /// as in [`add_on`]. `y` and `other` have the same length.
    pub(crate) fn apply(&self, y: &mut [u8], other: &[u8]) {
        debug_assert_eq!(y.len(), other.len());
        let p = &self.params;
        let done = match self.path {
            EltwisePath::Portable => 0,
            // SAFETY: `new` checked that the CPU has the path's features; `apply`'s callers pass
            // slices of equal length.
            #[cfg(target_arch = "x86_64")]
            EltwisePath::Avx2 => unsafe { super::x86_avx2::add_in_place(y, other, self.y_first, p) },
            #[cfg(target_arch = "x86_64")]
            EltwisePath::Avx512 | EltwisePath::Avx512Vbmi => unsafe {
                super::x86_avx512::add_in_place(y, other, self.y_first, p)
            },
            #[cfg(not(target_arch = "x86_64"))]
            _ => 0,
        };
        for (o, &q) in y[done..].iter_mut().zip(&other[done..]) {
            *o = if self.y_first { p.one(*o, q) } else { p.one(q, *o) };
        }
    }
}

/// `y = requantize((a - zp_a) * (b - zp_b))`, with an optional fused ReLU, on the fastest path.
/// See the module docs.
pub fn mul(a: &[u8], a_q: ActQuant, b: &[u8], b_q: ActQuant, y_q: ActQuant, relu: bool, y: &mut [u8]) -> Result<()> {
    mul_on(EltwisePath::best(), a, a_q, b, b_q, y_q, relu, y)
}

/// [`mul`] on a chosen path.
#[allow(clippy::too_many_arguments)]
pub fn mul_on(
    path: EltwisePath,
    a: &[u8],
    a_q: ActQuant,
    b: &[u8],
    b_q: ActQuant,
    y_q: ActQuant,
    relu: bool,
    y: &mut [u8],
) -> Result<()> {
    check_same_len("mul", a.len(), b.len())?;
    check_same_len("mul", a.len(), y.len())?;
    path.check("mul")?;
    let p = MulParams::new(a_q, b_q, y_q, relu);
    // A non-finite multiplier (extreme scales) turns `0 * m` into NaN, which the reference
    // sends to the zero point; only the reference handles that case.
    let path = if p.multiplier.is_finite() {
        path
    } else {
        EltwisePath::Portable
    };
    for_chunks(a, b, y, |a, b, y| mul_chunk(path, a, b, y, &p));
    Ok(())
}

/// Runs `f` on matching chunks of `a`, `b`, `y`, in parallel when there is more than one.
fn for_chunks(a: &[u8], b: &[u8], y: &mut [u8], f: impl Fn(&[u8], &[u8], &mut [u8]) + Sync) {
    if y.len() <= CHUNK {
        return f(a, b, y);
    }
    y.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(y, (a, b))| f(a, b, y));
}

fn add_chunk(path: EltwisePath, a: &[u8], b: &[u8], y: &mut [u8], p: &AddParams) {
    let done = match path {
        EltwisePath::Portable => 0,
        // SAFETY: `add_on` checked that the CPU has the path's features; slices have equal
        // lengths.
        #[cfg(target_arch = "x86_64")]
        EltwisePath::Avx2 => unsafe { super::x86_avx2::add(a, b, y, p) },
        #[cfg(target_arch = "x86_64")]
        EltwisePath::Avx512 | EltwisePath::Avx512Vbmi => unsafe { super::x86_avx512::add(a, b, y, p) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => 0,
    };
    for ((o, &qa), &qb) in y[done..].iter_mut().zip(&a[done..]).zip(&b[done..]) {
        *o = p.one(qa, qb);
    }
}

fn mul_chunk(path: EltwisePath, a: &[u8], b: &[u8], y: &mut [u8], p: &MulParams) {
    let done = match path {
        EltwisePath::Portable => 0,
        // SAFETY: as in `add_chunk`; `mul_on` routes non-finite multipliers to the reference.
        #[cfg(target_arch = "x86_64")]
        EltwisePath::Avx2 => unsafe { super::x86_avx2::mul(a, b, y, p) },
        #[cfg(target_arch = "x86_64")]
        EltwisePath::Avx512 | EltwisePath::Avx512Vbmi => unsafe { super::x86_avx512::mul(a, b, y, p) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => 0,
    };
    for ((o, &qa), &qb) in y[done..].iter_mut().zip(&a[done..]).zip(&b[done..]) {
        *o = p.one(qa, qb);
    }
}
