//! Quantized 2-D convolutions on channels-last (NHWC) `u8` activations with `i8` weights:
//! `Conv2d` (any stride, padding, dilation and groups; padding holds the input zero point),
//! depthwise convolutions through a direct kernel (whole output rows at a time), one-group
//! convolutions with symmetric weights through a direct implicit-GEMM kernel (`direct.rs`: no
//! im2col matrix; the default up to a 2304-deep reduction), the others through the shared GEMM,
//! and `ConvTranspose2d` with per-tensor or per-channel weights.
//!
//! Every path produces the integers of [`reference`](mod@reference), which follows PyTorch fbgemm's
//! `ReQuantizeOutput` (see [`requant`]). Weights are packed once ([`PackedConv2d::new`]); a call
//! takes the input and output quantization parameters and an optional fused ReLU / ReLU6. The
//! per-channel constants those parameters give (requantization multipliers and bias terms, each
//! kernel's epilogue layout) are kept for the last few parameter sets (`call_cache.rs`), so a
//! graph that calls a layer with the same parameters every time builds them once.
//!
//! A quantized add that reads a convolution's output (a residual connection) can run inside it
//! ([`PackedConv2d::forward_add`]): the direct kernel hands each finished output row to the
//! element-wise add while the row is still in L1, so the convolution's own output is never
//! stored as a tensor and read back; the bytes are those of the separate convolution and add.
//!
//! ```
//! use qkernels::conv::{ActQuant, Conv2dGeometry, ConvWeightQuant, FusedActivation, NhwcShape, PackedConv2d};
//!
//! let g = Conv2dGeometry::new(2, 2, (3, 3)).with_padding(1, 1).with_groups(2);
//! let w = vec![1i8; 2 * 9];
//! let conv = PackedConv2d::new(g, &w, ConvWeightQuant::per_tensor(0.1, 0).unwrap(), None).unwrap();
//! let xs = NhwcShape::new(1, 4, 4, 2);
//! let x = vec![130u8; xs.len()];
//! let (x_q, y_q) = (ActQuant::new(0.5, 128).unwrap(), ActQuant::new(0.25, 10).unwrap());
//! let (y, ys) = conv.forward(&x, xs, x_q, y_q, FusedActivation::None).unwrap();
//! assert_eq!(ys, NhwcShape::new(1, 4, 4, 2));
//! // centre pixel: 9 taps of (130 - 128) * 1 -> 18 * 0.5 * 0.1 / 0.25 = 3.6 -> 4 + 10
//! assert_eq!(y[ys.offset(0, 1, 1)], 14);
//! ```

mod call_cache;
pub mod depthwise;
#[cfg(target_arch = "x86_64")]
mod depthwise_avx512;
mod direct;
#[cfg(target_arch = "x86_64")]
mod direct_avx512;
pub mod geometry;
mod im2col;
pub mod layout;
mod pixel_lanes;
pub mod reference;
pub mod requant;
pub mod transpose;

pub use depthwise::{DepthwisePath, PackedDepthwise};
pub use geometry::{Conv2dGeometry, ConvTranspose2dGeometry};
pub use layout::{nchw_f32_to_nhwc_u8, nhwc_u8_to_nchw_f32};
pub use requant::{ActQuant, ConvRequant, ConvWeightQuant, FusedActivation};
pub use transpose::PackedConvTranspose2d;

use crate::eltwise::add_mul::InPlaceAdd;
use crate::eltwise::cat::ConcatRows;
use crate::eltwise::pool::{Pool2d, PooledRows};
use crate::eltwise::{AddOperand, EltwisePath, FloatRule};
use crate::gemm::{self, KernelPath};
use crate::{KernelError, Result};
use call_cache::{get_or_try_init, CallCache, CallKey, ConvCall};

/// Dimensions of an NHWC tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NhwcShape {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl NhwcShape {
    pub fn new(n: usize, h: usize, w: usize, c: usize) -> NhwcShape {
        NhwcShape { n, h, w, c }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.n * self.h * self.w * self.c
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Index of channel 0 of pixel `(n, h, w)`.
    #[inline]
    pub fn offset(&self, n: usize, h: usize, w: usize) -> usize {
        ((n * self.h + h) * self.w + w) * self.c
    }

    /// Checks that `data_len` matches and nothing is empty.
    pub fn check(&self, op: &'static str, what: &str, data_len: usize) -> Result<()> {
        if self.is_empty() {
            return Err(KernelError::Shape {
                op,
                detail: format!("{what} {self:?} is empty; every dimension must be positive"),
            });
        }
        if data_len != self.len() {
            return Err(KernelError::Shape {
                op,
                detail: format!("{what} {self:?} needs {} values, got {data_len}", self.len()),
            });
        }
        Ok(())
    }
}

/// A quantized add that follows a convolution (a residual connection, PyTorch
/// `quantized::add` / `quantized::add_relu`), fused into it by [`PackedConv2d::forward_add`].
#[derive(Debug, Clone, Copy)]
pub struct ResidualAdd<'a> {
    /// The other operand: NHWC, of the convolution's output shape.
    pub skip: &'a [u8],
    pub skip_shape: NhwcShape,
    pub skip_q: ActQuant,
    /// Which operand of the add the convolution's output is.
    pub conv_operand: AddOperand,
    /// The add's output parameters.
    pub y_q: ActQuant,
    /// `add_relu`: `max(dq(a) + dq(b), 0)` before quantizing.
    pub relu: bool,
    pub rule: FloatRule,
}

/// Whether `QFORGE_KERNEL=reference` forces the portable paths everywhere: the GEMM (which
/// parses the variable the same way), the convolutions, the element-wise kernels, and the fp32
/// kernels of crates built on this one.
pub fn forced_reference() -> bool {
    std::env::var("QFORGE_KERNEL").is_ok_and(|v| {
        matches!(
            crate::gemm::KernelPath::from_name(&v),
            Ok(crate::gemm::KernelPath::Reference)
        )
    })
}

/// Which integer arithmetic a convolution reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ConvArithmetic {
    /// PyTorch fbgemm, bit for bit: exact everywhere except fbgemm's depthwise kernel, whose
    /// i16 saturation of tap-pair sums is reproduced (see [`depthwise`]).
    #[default]
    FbgemmParity,
    /// `sum (x - x_zp) * (w - w_zp)` exactly, for every geometry.
    Exact,
}

/// How a [`PackedConv2d`] computes. Every path gives the integers of [`ConvPath::Reference`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConvPath {
    /// The portable oracle ([`reference::conv2d_reference`]).
    Reference,
    /// Direct depthwise kernel (depthwise geometries only).
    Depthwise(DepthwisePath),
    /// The shared GEMM on the given path: in place for 1x1 convolutions, through im2col blocks
    /// otherwise (every geometry but depthwise).
    Gemm(KernelPath),
    /// Direct AVX-512 VNNI convolution without an im2col matrix (one group, symmetric
    /// weights; see `direct.rs`).
    Direct,
}

#[derive(Debug, Clone)]
enum Packed {
    Depthwise(PackedDepthwise),
    Gemm(im2col::GemmConv, Option<direct::DirectConv>),
}

/// A `Conv2d` with its weights packed for the fastest path the geometry allows.
#[derive(Debug, Clone)]
pub struct PackedConv2d {
    geometry: Conv2dGeometry,
    /// PyTorch layout `[c_out, c_in / groups, kh, kw]`, kept for the reference path.
    weights: Vec<i8>,
    weight_quant: ConvWeightQuant,
    bias: Option<Vec<f32>>,
    arithmetic: ConvArithmetic,
    packed: Packed,
    /// The constants of recent calls' parameters (see `call_cache`).
    calls: CallCache<CallKey, ConvCall>,
}

impl PackedConv2d {
    /// Validates and packs `weights` (`[c_out, c_in / groups, kh, kw]`, `qint8`) with their
    /// quantization (per tensor or per output channel) and an optional f32 bias.
    pub fn new(
        geometry: Conv2dGeometry,
        weights: &[i8],
        weight_quant: ConvWeightQuant,
        bias: Option<Vec<f32>>,
    ) -> Result<PackedConv2d> {
        let _span = tracing::debug_span!("pack_conv2d", ?geometry).entered();
        geometry.validate()?;
        let expected = geometry.c_out * geometry.depth();
        if weights.len() != expected {
            return Err(KernelError::Shape {
                op: "conv2d",
                detail: format!(
                    "weights have {} values, expected c_out * c_in/groups * kh * kw = {expected}",
                    weights.len()
                ),
            });
        }
        weight_quant.check_channels("conv2d", geometry.c_out)?;
        if let Some(b) = &bias {
            // Checked again per call with the scales; fail early on the obvious mistakes.
            if b.len() != geometry.c_out {
                return Err(KernelError::Shape {
                    op: "conv2d",
                    detail: format!("bias has {} values for {} output channels", b.len(), geometry.c_out),
                });
            }
        }
        let packed = if geometry.is_depthwise() {
            Packed::Depthwise(PackedDepthwise::new(
                geometry,
                weights,
                &weight_quant,
                ConvArithmetic::default(),
            )?)
        } else {
            gemm::check_k("conv2d", geometry.depth())?;
            Packed::Gemm(
                im2col::GemmConv::new(&geometry, weights, &weight_quant)?,
                direct::DirectConv::new(&geometry, weights, &weight_quant),
            )
        };
        Ok(PackedConv2d {
            geometry,
            weights: weights.to_vec(),
            weight_quant,
            bias,
            arithmetic: ConvArithmetic::default(),
            packed,
            calls: CallCache::new(),
        })
    }

    /// The same convolution with another arithmetic (repacks depthwise weights).
    pub fn with_arithmetic(mut self, arithmetic: ConvArithmetic) -> Result<PackedConv2d> {
        if let Packed::Depthwise(_) = self.packed {
            self.packed = Packed::Depthwise(PackedDepthwise::new(
                self.geometry,
                &self.weights,
                &self.weight_quant,
                arithmetic,
            )?);
        }
        self.arithmetic = arithmetic;
        self.calls.clear();
        Ok(self)
    }

    pub fn arithmetic(&self) -> ConvArithmetic {
        self.arithmetic
    }

    pub fn geometry(&self) -> &Conv2dGeometry {
        &self.geometry
    }

    /// The paths this convolution can run on this CPU, slowest first.
    pub fn paths(&self) -> Vec<ConvPath> {
        let mut paths = vec![ConvPath::Reference];
        match self.packed {
            Packed::Depthwise(_) => paths.extend(DepthwisePath::available().into_iter().map(ConvPath::Depthwise)),
            Packed::Gemm(_, ref direct) => {
                paths.extend(gemm::available_paths().into_iter().map(ConvPath::Gemm));
                if direct.is_some() && direct::supported() {
                    paths.push(ConvPath::Direct);
                }
            }
        }
        paths
    }

    /// The path [`PackedConv2d::run`] takes.
    pub fn default_path(&self) -> ConvPath {
        if forced_reference() {
            return match self.packed {
                Packed::Depthwise(_) => ConvPath::Depthwise(DepthwisePath::Portable),
                Packed::Gemm(..) => ConvPath::Gemm(KernelPath::Reference),
            };
        }
        match self.packed {
            Packed::Depthwise(_) => ConvPath::Depthwise(DepthwisePath::best()),
            Packed::Gemm(_, Some(_)) if direct::supported() && self.geometry.depth() <= direct::MAX_PREFERRED_DEPTH => {
                ConvPath::Direct
            }
            Packed::Gemm(..) => ConvPath::Gemm(gemm::best_path()),
        }
    }

    /// Output shape for an input shape.
    pub fn output_shape(&self, xs: NhwcShape) -> Result<NhwcShape> {
        let (oh, ow) = self.geometry.output_hw(xs.h, xs.w)?;
        Ok(NhwcShape::new(xs.n, oh, ow, self.geometry.c_out))
    }

    /// Allocating form of [`PackedConv2d::run`]: returns the output and its shape.
    pub fn forward(
        &self,
        x: &[u8],
        xs: NhwcShape,
        x_q: ActQuant,
        y_q: ActQuant,
        activation: FusedActivation,
    ) -> Result<(Vec<u8>, NhwcShape)> {
        let ys = self.output_shape(xs)?;
        if let (Packed::Gemm(_, Some(dc)), ConvPath::Direct) = (&self.packed, self.default_path()) {
            if direct::supported() {
                xs.check("conv2d", "input", x.len())?;
                return filled(ys, |y| {
                    self.run_direct(dc, direct::InputRows::Tensor(x), xs, x_q, y_q, activation, y, None)
                });
            }
        }
        let mut y = vec![0u8; ys.len()];
        self.run(x, xs, x_q, y_q, activation, &mut y)?;
        Ok((y, ys))
    }

    /// Convolves NHWC `x` into NHWC `y` on the default path.
    pub fn run(
        &self,
        x: &[u8],
        xs: NhwcShape,
        x_q: ActQuant,
        y_q: ActQuant,
        activation: FusedActivation,
        y: &mut [u8],
    ) -> Result<()> {
        self.run_with(self.default_path(), x, xs, x_q, y_q, activation, y)
    }

    /// Allocating form of [`PackedConv2d::run_concat`]: returns the output and its shape.
    pub fn forward_concat(
        &self,
        inputs: &[(&[u8], NhwcShape, ActQuant)],
        x_q: ActQuant,
        y_q: ActQuant,
        activation: FusedActivation,
    ) -> Result<(Vec<u8>, NhwcShape)> {
        let Some(&(_, first, _)) = inputs.first() else {
            return Err(KernelError::Shape {
                op: "conv2d",
                detail: "no inputs to concatenate".into(),
            });
        };
        let ys = self.output_shape(NhwcShape::new(first.n, first.h, first.w, self.geometry.c_in))?;
        if let Some(direct) = self.concat_kernel() {
            let (rows, xs) = ConcatRows::new(EltwisePath::best(), inputs, x_q)?;
            let _span = tracing::debug_span!("conv2d_concat", ?xs, c_out = self.geometry.c_out).entered();
            return filled(ys, |y| {
                self.run_direct(
                    direct,
                    direct::InputRows::Concat(&rows),
                    xs,
                    x_q,
                    y_q,
                    activation,
                    y,
                    None,
                )
            });
        }
        let mut y = vec![0u8; ys.len()];
        self.run_concat(inputs, x_q, y_q, activation, &mut y)?;
        Ok((y, ys))
    }

    /// Allocating form of [`PackedConv2d::run_pooled`]: returns the output and its shape.
    pub fn forward_pooled(
        &self,
        x: &[u8],
        xs: NhwcShape,
        pool: &Pool2d,
        x_q: ActQuant,
        y_q: ActQuant,
        activation: FusedActivation,
    ) -> Result<(Vec<u8>, NhwcShape)> {
        if let Some(direct) = self.concat_kernel() {
            let (rows, ps) = PooledRows::new(EltwisePath::best(), x, xs, *pool)?;
            let ys = self.output_shape(ps)?;
            return filled(ys, |y| {
                self.run_pooled_direct(direct, &rows, ps, x_q, y_q, activation, y)
            });
        }
        let (p, ps) = crate::eltwise::max_pool2d(x, xs, pool)?;
        self.forward(&p, ps, x_q, y_q, activation)
    }

    /// Convolves the max pooling of `x` by `pool` (which keeps `x`'s parameters `x_q`): the
    /// same integers as [`crate::eltwise::max_pool2d`] then [`PackedConv2d::run`]. Where the
    /// direct kernel copies its input rows (padded layers), each pooled row is computed into
    /// its row copy and the pooled tensor is never stored; the pooling's reads then overlap the
    /// convolution's arithmetic instead of making a pass of their own.
    #[allow(clippy::too_many_arguments)]
    pub fn run_pooled(
        &self,
        x: &[u8],
        xs: NhwcShape,
        pool: &Pool2d,
        x_q: ActQuant,
        y_q: ActQuant,
        activation: FusedActivation,
        y: &mut [u8],
    ) -> Result<()> {
        let Some(direct) = self.concat_kernel() else {
            let (p, ps) = crate::eltwise::max_pool2d(x, xs, pool)?;
            return self.run(&p, ps, x_q, y_q, activation, y);
        };
        let (rows, ps) = PooledRows::new(EltwisePath::best(), x, xs, *pool)?;
        self.run_pooled_direct(direct, &rows, ps, x_q, y_q, activation, as_uninit(y))
    }

    /// [`PackedConv2d::run_pooled`] on the direct kernel `dc` (this layer's, copying its rows)
    /// from the pooled `rows` of shape `ps`.
    #[allow(clippy::too_many_arguments)]
    fn run_pooled_direct(
        &self,
        dc: &direct::DirectConv,
        rows: &PooledRows<'_>,
        ps: NhwcShape,
        x_q: ActQuant,
        y_q: ActQuant,
        activation: FusedActivation,
        y: &mut [std::mem::MaybeUninit<u8>],
    ) -> Result<()> {
        let _span = tracing::debug_span!("conv2d_pooled", ?ps, c_out = self.geometry.c_out).entered();
        self.run_direct(dc, direct::InputRows::Pooled(rows), ps, x_q, y_q, activation, y, None)
    }

    /// The convolution followed by dequantization to NCHW `f32` (shape `(n, c_out, oh, ow)`):
    /// the bits of [`PackedConv2d::forward`] then [`nhwc_u8_to_nchw_f32`] with `y_q`. A 1x1
    /// convolution with at most 8 output channels (a segmentation head) runs on a kernel with
    /// pixels in the vector lanes that writes the floats from its accumulators (`pixel_lanes.rs`)
    /// where the CPU has it, unless `QFORGE_KERNEL=reference`.
    pub fn forward_dequantized(
        &self,
        x: &[u8],
        xs: NhwcShape,
        x_q: ActQuant,
        y_q: ActQuant,
        activation: FusedActivation,
    ) -> Result<(Vec<f32>, NhwcShape)> {
        self.forward_dequantized_on(self.dequantizes_in_kernel(), x, xs, x_q, y_q, activation)
    }

    /// Whether [`PackedConv2d::forward_dequantized`] dequantizes inside the pixel-lane kernel on
    /// this CPU (otherwise it runs the convolution and then the separate dequantization).
    pub fn dequantizes_in_kernel(&self) -> bool {
        !forced_reference() && matches!(self.packed, Packed::Gemm(_, Some(_))) && pixel_lanes::applies(&self.geometry)
    }

    /// [`PackedConv2d::forward_dequantized`] with the pixel-lane kernel (`in_kernel`, an error
    /// where [`PackedConv2d::dequantizes_in_kernel`] is false) or the default path followed by
    /// the separate dequantization (tests compare the two).
    pub fn forward_dequantized_on(
        &self,
        in_kernel: bool,
        x: &[u8],
        xs: NhwcShape,
        x_q: ActQuant,
        y_q: ActQuant,
        activation: FusedActivation,
    ) -> Result<(Vec<f32>, NhwcShape)> {
        if !in_kernel {
            let (y, ys) = self.forward(x, xs, x_q, y_q, activation)?;
            return Ok((nhwc_u8_to_nchw_f32(&y, ys, y_q)?, ys));
        }
        let g = &self.geometry;
        let dc = match &self.packed {
            Packed::Gemm(_, Some(dc)) if pixel_lanes::applies(g) => dc,
            _ => {
                return Err(KernelError::Param {
                    op: "conv2d",
                    detail: format!(
                        "{g:?} has no in-kernel dequantization on this CPU (1x1, stride 1, no padding, one group, c_in a multiple of 16, at most 8 outputs, symmetric weights, AVX-512 VNNI); use forward_dequantized"
                    ),
                })
            }
        };
        xs.check("conv2d", "input", x.len())?;
        let ys = self.output_shape(xs)?;
        let call = self.call_for(xs, x_q, y_q, activation, ys.len())?;
        let _span = tracing::debug_span!("conv2d_dequantized", ?xs, c_out = g.c_out).entered();
        let epi = call.direct.get_or_init(|| dc.epilogue(x_q.zero_point, &call.rq));
        let mut y = Vec::with_capacity(ys.len());
        pixel_lanes::run(
            g,
            x,
            xs,
            &self.weights,
            epi,
            y_q,
            &mut y.spare_capacity_mut()[..ys.len()],
        );
        // SAFETY: `pixel_lanes::run` stores every float of its output (each pixel block of
        // every plane; the partial last block through a mask of exactly its pixels).
        unsafe { y.set_len(ys.len()) };
        Ok((y, ys))
    }

    /// The convolution followed by a quantized add with `add.skip` (a residual connection):
    /// the bytes of [`PackedConv2d::forward`] (requantized to `y_q` with `activation`) then
    /// [`crate::eltwise::add`] of that output and the skip, in the operand order
    /// `add.conv_operand` says, into `add.y_q`. On the direct kernel the add runs on each output
    /// row right after the kernel stores it, while the row is in L1 (the same vector code, in
    /// place), so the convolution's own output is never stored as a tensor and read back; other
    /// paths add over the whole output afterwards ([`PackedConv2d::adds_in_rows`] says which).
    pub fn forward_add(
        &self,
        x: &[u8],
        xs: NhwcShape,
        x_q: ActQuant,
        y_q: ActQuant,
        activation: FusedActivation,
        add: &ResidualAdd<'_>,
    ) -> Result<(Vec<u8>, NhwcShape)> {
        self.forward_add_on(
            self.default_path(),
            EltwisePath::best(),
            x,
            xs,
            x_q,
            y_q,
            activation,
            add,
        )
    }

    /// Whether [`PackedConv2d::forward_add`] adds each output row as the kernel finishes it on
    /// this CPU (the direct kernel), rather than over the whole output afterwards.
    pub fn adds_in_rows(&self) -> bool {
        matches!(
            (&self.packed, self.default_path()),
            (Packed::Gemm(_, Some(_)), ConvPath::Direct)
        ) && direct::supported()
    }

    /// [`PackedConv2d::forward_add`] with the convolution on `path` and the add on `add_path`
    /// (tests force each pair the CPU runs).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_add_on(
        &self,
        path: ConvPath,
        add_path: EltwisePath,
        x: &[u8],
        xs: NhwcShape,
        x_q: ActQuant,
        y_q: ActQuant,
        activation: FusedActivation,
        add: &ResidualAdd<'_>,
    ) -> Result<(Vec<u8>, NhwcShape)> {
        xs.check("conv2d", "input", x.len())?;
        let ys = self.output_shape(xs)?;
        if add.skip_shape != ys {
            return Err(KernelError::Shape {
                op: "conv2d",
                detail: format!(
                    "the residual operand has shape {:?} but the convolution's output is {ys:?}; an added tensor must match it",
                    add.skip_shape
                ),
            });
        }
        ys.check("conv2d", "residual operand", add.skip.len())?;
        let adder = InPlaceAdd::new(add_path, add.conv_operand, y_q, add.skip_q, add.y_q, add.relu, add.rule)?;
        let _span = tracing::debug_span!("conv2d_add", ?path, ?xs, c_out = self.geometry.c_out).entered();
        if let (ConvPath::Direct, Packed::Gemm(_, Some(dc))) = (path, &self.packed) {
            if direct::supported() {
                let row = ys.w * ys.c;
                let finish = |r: usize, y_row: &mut [u8]| adder.apply(y_row, &add.skip[r * row..][..row]);
                return filled(ys, |y| {
                    self.run_direct(
                        dc,
                        direct::InputRows::Tensor(x),
                        xs,
                        x_q,
                        y_q,
                        activation,
                        y,
                        Some(&finish),
                    )
                });
            }
        }
        let mut y = vec![0u8; ys.len()];
        self.run_with(path, x, xs, x_q, y_q, activation, &mut y)?;
        adder.apply_all(&mut y, add.skip);
        Ok((y, ys))
    }

    /// Convolves the channel concatenation of `inputs` (each with its own parameters, all
    /// requantized to `x_q` as [`crate::eltwise::cat_channels`] does): the same integers as
    /// concatenating first and then calling [`PackedConv2d::run`]. Where the direct kernel
    /// copies its input rows (padded layers), the concatenation is made inside those row copies
    /// and never stored, which saves writing and reading back the whole concatenated tensor.
    pub fn run_concat(
        &self,
        inputs: &[(&[u8], NhwcShape, ActQuant)],
        x_q: ActQuant,
        y_q: ActQuant,
        activation: FusedActivation,
        y: &mut [u8],
    ) -> Result<()> {
        let Some(direct) = self.concat_kernel() else {
            let (x, xs) = crate::eltwise::cat_channels(inputs, x_q)?;
            return self.run(&x, xs, x_q, y_q, activation, y);
        };
        let (rows, xs) = ConcatRows::new(EltwisePath::best(), inputs, x_q)?;
        let _span = tracing::debug_span!("conv2d_concat", ?xs, c_out = self.geometry.c_out).entered();
        self.run_direct(
            direct,
            direct::InputRows::Concat(&rows),
            xs,
            x_q,
            y_q,
            activation,
            as_uninit(y),
            None,
        )
    }

    /// The direct kernel `dc` (this layer's) on `rows` of shape `xs` into `y`, with the call
    /// constants of these parameters (checked and cached by `call_for`).
    /// `finish` runs on each output row once it is complete (see `direct::RowFinish`).
    #[allow(clippy::too_many_arguments)]
    fn run_direct(
        &self,
        dc: &direct::DirectConv,
        rows: direct::InputRows<'_>,
        xs: NhwcShape,
        x_q: ActQuant,
        y_q: ActQuant,
        activation: FusedActivation,
        y: &mut [std::mem::MaybeUninit<u8>],
        finish: Option<&direct::RowFinish<'_>>,
    ) -> Result<()> {
        let call = self.call_for(xs, x_q, y_q, activation, y.len())?;
        let epi = call.direct.get_or_init(|| dc.epilogue(x_q.zero_point, &call.rq));
        dc.run(rows, xs, x_q.zero_point, epi, y, finish)
    }

    /// Whether [`PackedConv2d::run_concat`] (and [`PackedConv2d::run_pooled`]) builds the
    /// concatenation (the pooling) inside the kernel's row copies on this CPU (otherwise it
    /// stores it first).
    pub fn fuses_concat(&self) -> bool {
        self.concat_kernel().is_some()
    }

    fn concat_kernel(&self) -> Option<&direct::DirectConv> {
        match (&self.packed, self.default_path()) {
            (Packed::Gemm(_, Some(dc)), ConvPath::Direct) if direct::supported() && dc.copies_rows() => Some(dc),
            _ => None,
        }
    }

    /// Checks an input shape's channels and the output's length; returns the constants of the
    /// call's parameters, built only when they are not cached (see `call_cache`).
    fn call_for(
        &self,
        xs: NhwcShape,
        x_q: ActQuant,
        y_q: ActQuant,
        activation: FusedActivation,
        y_len: usize,
    ) -> Result<std::sync::Arc<ConvCall>> {
        let g = &self.geometry;
        if xs.c != g.c_in {
            return Err(KernelError::Shape {
                op: "conv2d",
                detail: format!("input has {} channels, the convolution expects {}", xs.c, g.c_in),
            });
        }
        let ys = self.output_shape(xs)?;
        ys.check("conv2d", "output", y_len)?;
        self.calls.get_or_try_insert(CallKey::new(x_q, y_q, activation), || {
            let rq = ConvRequant::new(
                "conv2d",
                x_q,
                &self.weight_quant,
                g.c_out,
                self.bias.as_deref(),
                y_q,
                activation,
            )?;
            Ok(ConvCall::new(rq))
        })
    }

    /// [`PackedConv2d::run`] on a chosen path (tests force each one).
    #[allow(clippy::too_many_arguments)]
    pub fn run_with(
        &self,
        path: ConvPath,
        x: &[u8],
        xs: NhwcShape,
        x_q: ActQuant,
        y_q: ActQuant,
        activation: FusedActivation,
        y: &mut [u8],
    ) -> Result<()> {
        let g = &self.geometry;
        let _span = tracing::debug_span!("conv2d", ?path, ?xs, c_out = g.c_out).entered();
        xs.check("conv2d", "input", x.len())?;
        let call = self.call_for(xs, x_q, y_q, activation, y.len())?;
        let rq = &call.rq;
        match (path, &self.packed) {
            (ConvPath::Reference, Packed::Depthwise(dw)) if dw.saturating_pairs => {
                let (w, wq) = (&self.weights, &self.weight_quant);
                reference::depthwise_fbgemm_reference(g, x, xs, x_q.zero_point, w, wq, rq, y);
                Ok(())
            }
            (ConvPath::Reference, _) => {
                reference::conv2d_reference(g, x, xs, x_q.zero_point, &self.weights, &self.weight_quant, rq, y);
                Ok(())
            }
            (ConvPath::Depthwise(p), Packed::Depthwise(dw)) => {
                dw.run_prepared(p, x, xs, x_q.zero_point, rq, &call.depthwise, y)
            }
            (ConvPath::Direct, Packed::Gemm(_, Some(dc))) if direct::supported() => {
                let epi = call.direct.get_or_init(|| dc.epilogue(x_q.zero_point, rq));
                dc.run(
                    direct::InputRows::Tensor(x),
                    xs,
                    x_q.zero_point,
                    epi,
                    as_uninit(y),
                    None,
                )
            }
            (ConvPath::Gemm(p), Packed::Gemm(gc, _)) => {
                let stages = get_or_try_init(&call.gemm, || {
                    gc.requant_stages(g, x_q, y_q, activation, self.bias.as_deref())
                })?;
                gc.run(p, g, x, xs, x_q, stages, y)
            }
            (path, _) => Err(KernelError::Param {
                op: "conv2d",
                detail: format!("path {path:?} does not apply to {g:?}; pick one of {:?}", self.paths()),
            }),
        }
    }
}

/// `y` as bytes a kernel may treat as uninitialized: the direct kernels only store into it
/// (initialized values), so it stays initialized.
pub(crate) fn as_uninit(y: &mut [u8]) -> &mut [std::mem::MaybeUninit<u8>] {
    // SAFETY: `MaybeUninit<u8>` has the layout of `u8`, and the callee writes only initialized
    // bytes (it never stores `MaybeUninit::uninit()`), so `y` holds initialized bytes afterwards.
    unsafe { &mut *(y as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) }
}

/// A band of output rows: its image, its index within the image, and its rows.
pub(crate) type Band<'a, T> = (usize, usize, &'a mut [T]);

/// Cuts an output of `images` images of `rows` rows (`row_len` elements each) into bands of
/// whole rows for `threads` threads: one band per image on one thread, otherwise about two per
/// thread. Returns the band height and each band with its image and its index in the image.
pub(crate) fn output_bands<T>(
    y: &mut [T],
    images: usize,
    rows: usize,
    row_len: usize,
    threads: usize,
) -> (usize, Vec<Band<'_, T>>) {
    let band = if threads > 1 {
        rows.div_ceil((2 * threads).div_ceil(images))
    } else {
        rows
    }
    .max(1);
    let bands = y
        .chunks_mut(rows * row_len)
        .enumerate()
        .flat_map(|(n, y_img)| {
            let bands = y_img.chunks_mut(band * row_len).enumerate();
            bands.map(move |(b, y_band)| (n, b, y_band))
        })
        .collect();
    (band, bands)
}

/// An output of `ys.len()` bytes that `store` writes completely (the direct kernels), without
/// zero-filling it first: writing a large output once instead of twice.
pub(crate) fn filled(
    ys: NhwcShape,
    store: impl FnOnce(&mut [std::mem::MaybeUninit<u8>]) -> Result<()>,
) -> Result<(Vec<u8>, NhwcShape)> {
    let mut y = Vec::with_capacity(ys.len());
    store(&mut y.spare_capacity_mut()[..ys.len()])?;
    // SAFETY: `store` returned Ok, and the kernels passed here store every byte of their output
    // (each output row's pixel tiles cover every pixel and its panels every channel, the last
    // panel's tail channels by masked stores).
    unsafe { y.set_len(ys.len()) };
    Ok((y, ys))
}
