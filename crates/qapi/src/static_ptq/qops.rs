//! The int8 implementations that static quantization puts into a graph, as `CustomOp`s.
//!
//! Layout convention inside a quantized region: a value is `Value::Quant` holding a per-tensor
//! quint8 `QTensor`; 4-d values are channels-last, stored with shape `[N, H, W, C]` (the graph's
//! shape inference keeps reporting the logical NCHW shape). [`Quantize`] and [`Dequantize`] are
//! the only places where the layout changes, once at each float/int8 boundary.

use std::any::Any;

use qgraph::{CustomOp, GraphError, Value};
use qkernels::conv::{
    nchw_f32_to_nhwc_u8, nhwc_u8_to_nchw_f32, ActQuant, FusedActivation, NhwcShape, PackedConv2d,
    PackedConvTranspose2d, ResidualAdd,
};
use qkernels::eltwise::{self, ActivationLut, AddOperand, FloatRule, Pool2d, PoolRounding};
use qkernels::gemm::{gemm_u8s8, ActivationQuant, Epilogue, GemmConfig, GemmOutput, PackedWeights, Requantize};
use qtensor::{DType, QData, QParams, QTensor, Tensor};

/// Maps a kernel or tensor error into the graph's error type, naming the op.
fn fail(op: &str, e: impl std::fmt::Display) -> GraphError {
    GraphError::Custom {
        op: op.to_string(),
        detail: e.to_string(),
    }
}

/// Per-tensor quint8 parameters of an activation.
pub(crate) fn act_quant(q: &QParams) -> Result<ActQuant, GraphError> {
    match q {
        QParams::PerTensor { scale, zero_point } => ActQuant::new(*scale, *zero_point).map_err(|e| fail("quantize", e)),
        QParams::PerChannel { .. } => Err(fail("quantize", "activations must be quantized per tensor")),
    }
}

/// The u8 storage and parameters of a quantized input value.
fn quant_input<'a>(op: &str, v: &'a Value) -> Result<(&'a [u8], &'a [usize], ActQuant), GraphError> {
    match v {
        Value::Quant(q) => match q.data() {
            QData::U8(data) => Ok((data.as_slice(), q.shape(), act_quant(q.qparams())?)),
            _ => Err(fail(op, format!("expected quint8 activations, got {}", q.dtype()))),
        },
        other => Err(fail(op, format!("expected a quantized input, got a {}", other.kind()))),
    }
}

/// NHWC dimensions of a channels-last quantized value (`[N, H, W, C]`).
fn nhwc(op: &str, shape: &[usize]) -> Result<NhwcShape, GraphError> {
    match shape {
        [n, h, w, c] => Ok(NhwcShape::new(*n, *h, *w, *c)),
        [n, c] => Ok(NhwcShape::new(*n, 1, 1, *c)),
        other => Err(fail(
            op,
            format!("expected a 4-d channels-last input, got shape {other:?}"),
        )),
    }
}

fn quant_value(op: &str, shape: Vec<usize>, data: Vec<u8>, q: ActQuant) -> Result<Value, GraphError> {
    let qparams = QParams::PerTensor {
        scale: q.scale,
        zero_point: q.zero_point,
    };
    QTensor::from_data(shape, DType::QUInt8, qparams, QData::U8(data))
        .map(Value::Quant)
        .map_err(|e| fail(op, e))
}

fn nhwc_dims(s: NhwcShape) -> Vec<usize> {
    vec![s.n, s.h, s.w, s.c]
}

fn same_shape(inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
    match inputs {
        [a] => Ok(a.to_vec()),
        [a, b] if a == b => Ok(a.to_vec()),
        _ => Err(format!("expected one input or two of the same shape, got {inputs:?}")),
    }
}

macro_rules! custom_op_boilerplate {
    () => {
        fn as_any(&self) -> &dyn Any {
            self
        }
    };
}

/// f32 -> quint8 at a region's entry (NCHW f32 -> NHWC u8 for 4-d values).
#[derive(Debug, Clone)]
pub struct Quantize {
    pub q: ActQuant,
}

impl CustomOp for Quantize {
    fn kind_name(&self) -> &str {
        "Quantize"
    }
    fn infer_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        same_shape(inputs)
    }
    fn forward(&self, inputs: &[&Value]) -> qgraph::Result<Value> {
        let x = match inputs {
            [Value::F32(t)] => t,
            _ => return Err(fail("Quantize", "expected one f32 input")),
        };
        match x.shape() {
            // The layout conversion rejects non-finite inputs itself (one scan, not two).
            [n, c, h, w] => {
                let s = NhwcShape::new(*n, *h, *w, *c);
                let data = nchw_f32_to_nhwc_u8(x.data(), s, self.q).map_err(|e| fail("Quantize", e))?;
                quant_value("Quantize", nhwc_dims(s), data, self.q)
            }
            shape => {
                if let Some((index, value)) = qtensor::quantize::first_non_finite(x.data()) {
                    return Err(fail("Quantize", format!("non-finite input {value} at index {index}")));
                }
                let mut data = vec![0u8; x.numel()];
                let affine = qtensor::quantize::Affine::new(self.q.scale, self.q.zero_point, DType::QUInt8)
                    .map_err(|e| fail("Quantize", e))?;
                qtensor::quantize::quantize_into(x.data(), &mut data, &affine).map_err(|e| fail("Quantize", e))?;
                quant_value("Quantize", shape.to_vec(), data, self.q)
            }
        }
    }
    custom_op_boilerplate!();
}

/// quint8 -> f32 at a region's exit (NHWC u8 -> NCHW f32 for 4-d values).
#[derive(Debug, Clone)]
pub struct Dequantize;

impl CustomOp for Dequantize {
    fn kind_name(&self) -> &str {
        "Dequantize"
    }
    fn infer_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        same_shape(inputs)
    }
    fn forward(&self, inputs: &[&Value]) -> qgraph::Result<Value> {
        let [x] = inputs else {
            return Err(fail("Dequantize", "expected one input"));
        };
        let (data, shape, q) = quant_input("Dequantize", x)?;
        let (out_shape, values) = match shape {
            [n, h, w, c] => {
                let s = NhwcShape::new(*n, *h, *w, *c);
                (
                    vec![*n, *c, *h, *w],
                    nhwc_u8_to_nchw_f32(data, s, q).map_err(|e| fail("Dequantize", e))?,
                )
            }
            other => {
                let mut out = vec![0f32; data.len()];
                qtensor::quantize::dequantize_into(data, &mut out, q.scale, q.zero_point)
                    .map_err(|e| fail("Dequantize", e))?;
                (other.to_vec(), out)
            }
        };
        Tensor::new(out_shape, values)
            .map(Value::F32)
            .map_err(|e| fail("Dequantize", e))
    }
    custom_op_boilerplate!();
}

/// Quantized Conv2d (with fused ReLU/ReLU6): NHWC u8 in, NHWC u8 out (NCHW f32 out with
/// `dequantize`).
#[derive(Debug)]
pub struct QConv2d {
    pub conv: PackedConv2d,
    pub weight: QTensor,
    pub bias: Option<Vec<f32>>,
    pub output: ActQuant,
    pub activation: FusedActivation,
    /// A `cat` fused into the convolution: the inputs are concatenated along channels,
    /// requantized to these parameters (exactly as `QuantizedCat` does), as the kernel reads
    /// them, without storing the concatenation.
    pub concat: Option<ActQuant>,
    /// The output leaves the quantized region here: NCHW f32, the bits [`Dequantize`] would
    /// give for the quint8 output (`PackedConv2d::forward_dequantized`).
    pub dequantize: bool,
    /// A quantized add (or add_relu) that alone reads this convolution's output, fused into it
    /// (`PackedConv2d::forward_add`): the node's last input is the add's other operand, and its
    /// output is the add's, the bytes of the convolution (requantized to `output`) followed by
    /// [`QBinary`].
    pub residual: Option<FusedAdd>,
    /// A max pooling that alone feeds this convolution, fused into it
    /// (`PackedConv2d::forward_pooled`): the node's input is the pooling's, and each pooled row is
    /// made as the kernel reads it (the pooling keeps its input's parameters).
    pub pool: Option<Pool2d>,
}

/// The add of a [`QConv2d`] with a fused residual connection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FusedAdd {
    /// The add's output parameters.
    pub output: ActQuant,
    /// `add_relu`.
    pub relu: bool,
    /// Whether the convolution's output is the add's first operand (else its second).
    pub conv_first: bool,
}

/// Logical NCHW output shape of a packed convolution.
fn conv_out_shape(input: &[usize], conv: &PackedConv2d) -> Result<Vec<usize>, String> {
    let [n, c, h, w] = input else {
        return Err(format!("expected an NCHW input, got {input:?}"));
    };
    let s = conv
        .output_shape(NhwcShape::new(*n, *h, *w, *c))
        .map_err(|e| e.to_string())?;
    Ok(vec![s.n, s.c, s.h, s.w])
}

impl CustomOp for QConv2d {
    fn kind_name(&self) -> &str {
        match self.residual {
            None => "QuantizedConv2d",
            Some(FusedAdd { relu: false, .. }) => "QuantizedConv2dAdd",
            Some(FusedAdd { relu: true, .. }) => "QuantizedConv2dAddReLU",
        }
    }
    fn infer_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        if self.residual.is_some() {
            let [x, skip] = inputs else {
                return Err(format!(
                    "expected the convolution's input and the added tensor, got {inputs:?}"
                ));
            };
            let y = conv_out_shape(x, &self.conv)?;
            if y != *skip {
                return Err(format!(
                    "the added tensor has shape {skip:?}, the convolution's output {y:?}; they must match"
                ));
            }
            return Ok(y);
        }
        if let Some(pool) = &self.pool {
            let [[n, c, h, w]] = inputs else {
                return Err(format!("expected one NCHW input, got {inputs:?}"));
            };
            let (oh, ow) = pool.output_hw("max_pool2d", *h, *w).map_err(|e| e.to_string())?;
            return conv_out_shape(&[*n, *c, oh, ow], &self.conv);
        }
        match (inputs, self.concat) {
            ([x], None) => conv_out_shape(x, &self.conv),
            (_, Some(q)) => conv_out_shape(&QCat { output: q }.infer_shape(inputs)?, &self.conv),
            _ => Err("expected one input".into()),
        }
    }
    fn forward(&self, inputs: &[&Value]) -> qgraph::Result<Value> {
        const OP: &str = "QuantizedConv2d";
        if self.pool.is_some() && (self.dequantize || self.residual.is_some() || self.concat.is_some()) {
            return Err(fail(
                OP,
                "a fused max pool with a fused cat, dequantize or add is not supported; convert again",
            ));
        }
        if self.dequantize {
            return self.forward_dequantized(inputs);
        }
        if let Some(add) = self.residual {
            return self.forward_add(inputs, add);
        }
        if let Some(pool) = &self.pool {
            let [x] = inputs else {
                return Err(fail(OP, "expected one input"));
            };
            let (data, shape, xq) = quant_input(OP, x)?;
            let xs = nhwc(OP, shape)?;
            let (y, ys) = self
                .conv
                .forward_pooled(data, xs, pool, xq, self.output, self.activation)
                .map_err(|e| fail(OP, e))?;
            return quant_value(OP, nhwc_dims(ys), y, self.output);
        }
        let (y, ys) = match (inputs, self.concat) {
            (_, Some(x_q)) => {
                let parts = cat_parts(OP, inputs)?;
                self.conv.forward_concat(&parts, x_q, self.output, self.activation)
            }
            ([x], None) => {
                let (data, shape, xq) = quant_input(OP, x)?;
                let xs = nhwc(OP, shape)?;
                self.conv.forward(data, xs, xq, self.output, self.activation)
            }
            _ => return Err(fail(OP, "expected one input")),
        }
        .map_err(|e| fail(OP, e))?;
        quant_value(OP, nhwc_dims(ys), y, self.output)
    }
    custom_op_boilerplate!();
}

impl QConv2d {
    /// The convolution and the add fused after it: inputs `[x, skip]`.
    fn forward_add(&self, inputs: &[&Value], add: FusedAdd) -> qgraph::Result<Value> {
        let op = self.kind_name();
        if self.concat.is_some() {
            return Err(fail(
                op,
                "a fused add after a fused cat is not supported; convert again",
            ));
        }
        let [x, skip] = inputs else {
            return Err(fail(
                op,
                "expected two inputs: the convolution's input and the tensor added to its output",
            ));
        };
        let (data, shape, xq) = quant_input(op, x)?;
        let xs = nhwc(op, shape)?;
        let (skip, skip_shape, skip_q) = quant_input(op, skip)?;
        let residual = ResidualAdd {
            skip,
            skip_shape: nhwc(op, skip_shape)?,
            skip_q,
            conv_operand: if add.conv_first {
                AddOperand::First
            } else {
                AddOperand::Second
            },
            y_q: add.output,
            relu: add.relu,
            rule: FloatRule::Vectorized,
        };
        let (y, ys) = self
            .conv
            .forward_add(data, xs, xq, self.output, self.activation, &residual)
            .map_err(|e| fail(op, e))?;
        quant_value(op, nhwc_dims(ys), y, add.output)
    }

    /// The convolution and its output's dequantization (`dequantize`): NCHW f32.
    fn forward_dequantized(&self, inputs: &[&Value]) -> qgraph::Result<Value> {
        const OP: &str = "QuantizedConv2d";
        let (y, ys) = match (inputs, self.concat) {
            (_, Some(x_q)) => {
                let parts = cat_parts(OP, inputs)?;
                self.conv
                    .forward_concat(&parts, x_q, self.output, self.activation)
                    .and_then(|(q, ys)| Ok((nhwc_u8_to_nchw_f32(&q, ys, self.output)?, ys)))
            }
            ([x], None) => {
                let (data, shape, xq) = quant_input(OP, x)?;
                let xs = nhwc(OP, shape)?;
                self.conv
                    .forward_dequantized(data, xs, xq, self.output, self.activation)
            }
            _ => return Err(fail(OP, "expected one input")),
        }
        .map_err(|e| fail(OP, e))?;
        Tensor::new(vec![ys.n, ys.c, ys.h, ys.w], y)
            .map(Value::F32)
            .map_err(|e| fail(OP, e))
    }
}

/// Quantized ConvTranspose2d (per-tensor or per-channel weights).
#[derive(Debug)]
pub struct QConvTranspose2d {
    pub conv: PackedConvTranspose2d,
    pub weight: QTensor,
    pub bias: Option<Vec<f32>>,
    pub output: ActQuant,
    pub activation: FusedActivation,
}

impl CustomOp for QConvTranspose2d {
    fn kind_name(&self) -> &str {
        "QuantizedConvTranspose2d"
    }
    fn infer_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let [[n, c, h, w]] = inputs else {
            return Err(format!("expected one NCHW input, got {inputs:?}"));
        };
        let s = self
            .conv
            .output_shape(NhwcShape::new(*n, *h, *w, *c))
            .map_err(|e| e.to_string())?;
        Ok(vec![s.n, s.c, s.h, s.w])
    }
    fn forward(&self, inputs: &[&Value]) -> qgraph::Result<Value> {
        let [x] = inputs else {
            return Err(fail("QuantizedConvTranspose2d", "expected one input"));
        };
        let (data, shape, xq) = quant_input("QuantizedConvTranspose2d", x)?;
        let xs = nhwc("QuantizedConvTranspose2d", shape)?;
        let (y, ys) = self
            .conv
            .forward(data, xs, xq, self.output, self.activation)
            .map_err(|e| fail("QuantizedConvTranspose2d", e))?;
        quant_value("QuantizedConvTranspose2d", nhwc_dims(ys), y, self.output)
    }
    custom_op_boilerplate!();
}

/// Quantized Linear (with fused ReLU): `[..., K]` u8 in, `[..., N]` u8 out.
#[derive(Debug)]
pub struct QLinear {
    pub packed: PackedWeights,
    pub weight: QTensor,
    pub bias: Option<Vec<f32>>,
    pub output: ActQuant,
    pub relu: bool,
}

impl CustomOp for QLinear {
    fn kind_name(&self) -> &str {
        "QuantizedLinear"
    }
    fn infer_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        match inputs {
            [x] if x.last() == Some(&self.packed.k()) => {
                let mut s = x.to_vec();
                *s.last_mut().expect("non-empty") = self.packed.n();
                Ok(s)
            }
            _ => Err(format!("expected [..., {}], got {inputs:?}", self.packed.k())),
        }
    }
    fn forward(&self, inputs: &[&Value]) -> qgraph::Result<Value> {
        let [x] = inputs else {
            return Err(fail("QuantizedLinear", "expected one input"));
        };
        let (data, shape, xq) = quant_input("QuantizedLinear", x)?;
        let k = self.packed.k();
        if shape.len() == 4 || shape.last() != Some(&k) {
            return Err(fail(
                "QuantizedLinear",
                format!("expected [..., {k}] (not channels-last), got {shape:?}"),
            ));
        }
        let m = data.len() / k;
        let n = self.packed.n();
        let mut y = vec![0u8; m * n];
        let act = ActivationQuant::PerTensor {
            scale: xq.scale,
            zero_point: xq.zero_point,
        };
        let epilogue = Epilogue::Requantize(Requantize {
            bias: self.bias.as_deref(),
            out_scale: self.output.scale,
            out_zero_point: self.output.zero_point,
            relu: self.relu,
            clamp: None,
        });
        gemm_u8s8(
            data,
            m,
            &act,
            &self.packed,
            &epilogue,
            GemmOutput::U8(&mut y),
            &GemmConfig::default(),
        )
        .map_err(|e| fail("QuantizedLinear", e))?;
        let mut out_shape = shape.to_vec();
        *out_shape.last_mut().expect("non-empty") = n;
        quant_value("QuantizedLinear", out_shape, y, self.output)
    }
    custom_op_boilerplate!();
}

/// Element-wise add or multiply of two quantized tensors of the same shape, requantized to the
/// output parameters.
#[derive(Debug, Clone)]
pub struct QBinary {
    pub mul: bool,
    pub relu: bool,
    pub output: ActQuant,
}

impl CustomOp for QBinary {
    fn kind_name(&self) -> &str {
        match (self.mul, self.relu) {
            (true, false) => "QuantizedMul",
            (true, true) => "QuantizedMulReLU",
            (false, false) => "QuantizedAdd",
            (false, true) => "QuantizedAddReLU",
        }
    }
    fn infer_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        match inputs {
            [a, b] if a == b => Ok(a.to_vec()),
            _ => Err(format!("expected two inputs of the same shape, got {inputs:?}")),
        }
    }
    fn forward(&self, inputs: &[&Value]) -> qgraph::Result<Value> {
        let op = self.kind_name();
        let [a, b] = inputs else {
            return Err(fail(op, "expected two inputs"));
        };
        let (a, a_shape, aq) = quant_input(op, a)?;
        let (b, b_shape, bq) = quant_input(op, b)?;
        if a_shape != b_shape {
            return Err(fail(op, format!("shapes differ: {a_shape:?} vs {b_shape:?}")));
        }
        let mut y = vec![0u8; a.len()];
        let r = if self.mul {
            eltwise::mul(a, aq, b, bq, self.output, self.relu, &mut y)
        } else {
            eltwise::add(a, aq, b, bq, self.output, self.relu, FloatRule::Vectorized, &mut y)
        };
        r.map_err(|e| fail(op, e))?;
        quant_value(op, a_shape.to_vec(), y, self.output)
    }
    custom_op_boilerplate!();
}

/// Channel concatenation (NCHW dim 1, or dim 1 of `[N, C]`), requantized to the output params.
#[derive(Debug, Clone)]
pub struct QCat {
    pub output: ActQuant,
}

impl CustomOp for QCat {
    fn kind_name(&self) -> &str {
        "QuantizedCat"
    }
    fn infer_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let first = inputs.first().ok_or("cat needs inputs")?;
        let mut out = first.to_vec();
        if out.len() < 2 {
            return Err(format!("cat on channels needs rank >= 2, got {first:?}"));
        }
        out[1] = 0;
        for s in inputs {
            if s.len() != first.len() || s[0] != first[0] || s[2..] != first[2..] {
                return Err(format!("cat inputs disagree outside dim 1: {inputs:?}"));
            }
            out[1] += s[1];
        }
        Ok(out)
    }
    fn forward(&self, inputs: &[&Value]) -> qgraph::Result<Value> {
        let parts = cat_parts("QuantizedCat", inputs)?;
        let rank2 = inputs.first().is_some_and(|v| v.shape().len() == 2);
        let (y, ys) = eltwise::cat_channels(&parts, self.output).map_err(|e| fail("QuantizedCat", e))?;
        let shape = if rank2 { vec![ys.n, ys.c] } else { nhwc_dims(ys) };
        quant_value("QuantizedCat", shape, y, self.output)
    }
    custom_op_boilerplate!();
}

/// The NHWC data, shape and parameters of each quantized input of a concatenation.
fn cat_parts<'a>(op: &str, inputs: &[&'a Value]) -> qgraph::Result<Vec<(&'a [u8], NhwcShape, ActQuant)>> {
    inputs
        .iter()
        .map(|v| {
            let (d, s, q) = quant_input(op, v)?;
            Ok((d, nhwc(op, s)?, q))
        })
        .collect()
}

/// Ops whose output keeps the input's parameters: pools, ReLU, ReLU6, flatten, upsample.
#[derive(Debug, Clone)]
pub enum Passthrough {
    MaxPool(Pool2d),
    AvgPool {
        pool: Pool2d,
        count_include_pad: bool,
    },
    AdaptiveAvgPool {
        output: (usize, usize),
    },
    Relu,
    Relu6,
    /// `flatten(1)` of an NCHW tensor: reorders channels-last data into NCHW order.
    Flatten,
    UpsampleNearest {
        scale: (usize, usize),
    },
    UpsampleBilinear {
        scale: (usize, usize),
    },
    Identity,
}

#[derive(Debug, Clone)]
pub struct QPassthrough {
    pub op: Passthrough,
}

impl QPassthrough {
    fn name(&self) -> &'static str {
        match self.op {
            Passthrough::MaxPool(_) => "QuantizedMaxPool2d",
            Passthrough::AvgPool { .. } => "QuantizedAvgPool2d",
            Passthrough::AdaptiveAvgPool { .. } => "QuantizedAdaptiveAvgPool2d",
            Passthrough::Relu => "QuantizedReLU",
            Passthrough::Relu6 => "QuantizedReLU6",
            Passthrough::Flatten => "QuantizedFlatten",
            Passthrough::UpsampleNearest { .. } => "QuantizedUpsampleNearest",
            Passthrough::UpsampleBilinear { .. } => "QuantizedUpsampleBilinear",
            Passthrough::Identity => "QuantizedIdentity",
        }
    }
}

impl CustomOp for QPassthrough {
    fn kind_name(&self) -> &str {
        self.name()
    }
    fn infer_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let [x] = inputs else {
            return Err("expected one input".into());
        };
        let spatial = |f: &dyn Fn(usize, usize) -> Result<(usize, usize), String>| match x {
            [n, c, h, w] => f(*h, *w).map(|(oh, ow)| vec![*n, *c, oh, ow]),
            _ => Err(format!("expected an NCHW input, got {x:?}")),
        };
        match &self.op {
            Passthrough::MaxPool(p) | Passthrough::AvgPool { pool: p, .. } => {
                spatial(&|h, w| p.output_hw("pool", h, w).map_err(|e| e.to_string()))
            }
            Passthrough::AdaptiveAvgPool { output } => spatial(&|_, _| Ok(*output)),
            Passthrough::UpsampleNearest { scale } | Passthrough::UpsampleBilinear { scale } => {
                spatial(&|h, w| Ok((h * scale.0, w * scale.1)))
            }
            Passthrough::Flatten => match x {
                [n, rest @ ..] if !rest.is_empty() => Ok(vec![*n, rest.iter().product()]),
                _ => Err(format!("cannot flatten {x:?}")),
            },
            Passthrough::Relu | Passthrough::Relu6 | Passthrough::Identity => Ok(x.to_vec()),
        }
    }
    fn forward(&self, inputs: &[&Value]) -> qgraph::Result<Value> {
        let op = self.name();
        let [x] = inputs else {
            return Err(fail(op, "expected one input"));
        };
        let (data, shape, q) = quant_input(op, x)?;
        let pooled = |r: qkernels::Result<(Vec<u8>, NhwcShape)>| -> qgraph::Result<Value> {
            let (y, ys) = r.map_err(|e| fail(op, e))?;
            quant_value(op, nhwc_dims(ys), y, q)
        };
        match &self.op {
            Passthrough::MaxPool(p) => pooled(eltwise::max_pool2d(data, nhwc(op, shape)?, p)),
            Passthrough::AvgPool {
                pool,
                count_include_pad,
            } => pooled(eltwise::avg_pool2d(
                data,
                nhwc(op, shape)?,
                q.zero_point,
                pool,
                *count_include_pad,
                None,
                PoolRounding::ChannelsLast,
            )),
            Passthrough::AdaptiveAvgPool { output } => pooled(eltwise::adaptive_avg_pool2d(
                data,
                nhwc(op, shape)?,
                q.zero_point,
                *output,
                PoolRounding::ChannelsLast,
            )),
            Passthrough::UpsampleNearest { scale } => {
                let s = nhwc(op, shape)?;
                pooled(eltwise::upsample_nearest2d(data, s, (s.h * scale.0, s.w * scale.1)))
            }
            Passthrough::UpsampleBilinear { scale } => {
                let s = nhwc(op, shape)?;
                pooled(eltwise::upsample_bilinear2d(
                    data,
                    s,
                    q.zero_point,
                    (s.h * scale.0, s.w * scale.1),
                ))
            }
            Passthrough::Relu | Passthrough::Relu6 => {
                let lo = q.zero_point.clamp(0, 255) as u8;
                let hi = if matches!(self.op, Passthrough::Relu6) {
                    q.quantize(6.0)
                } else {
                    255
                };
                let y = data.iter().map(|&v| v.clamp(lo, hi.max(lo))).collect();
                quant_value(op, shape.to_vec(), y, q)
            }
            Passthrough::Flatten => match shape {
                [n, h, w, c] if *h * *w > 1 => {
                    // Channels-last [N, H, W, C] -> NCHW order, flattened.
                    let (hw, chw) = (h * w, c * h * w);
                    let mut y = vec![0u8; data.len()];
                    for b in 0..*n {
                        for p in 0..hw {
                            for ch in 0..*c {
                                y[b * chw + ch * hw + p] = data[b * chw + p * c + ch];
                            }
                        }
                    }
                    quant_value(op, vec![*n, chw], y, q)
                }
                [n, rest @ ..] => quant_value(op, vec![*n, rest.iter().product()], data.to_vec(), q),
                [] => Err(fail(op, "cannot flatten a scalar")),
            },
            Passthrough::Identity => Ok((*x).clone()),
        }
    }
    custom_op_boilerplate!();
}

/// An element-wise activation as a 256-entry table from input to output parameters.
#[derive(Debug, Clone)]
pub struct QLut {
    pub name: &'static str,
    pub lut: ActivationLut,
    pub output: ActQuant,
}

impl CustomOp for QLut {
    fn kind_name(&self) -> &str {
        self.name
    }
    fn infer_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        same_shape(inputs)
    }
    fn forward(&self, inputs: &[&Value]) -> qgraph::Result<Value> {
        let [x] = inputs else {
            return Err(fail(self.name, "expected one input"));
        };
        let (data, shape, _) = quant_input(self.name, x)?;
        let mut y = vec![0u8; data.len()];
        self.lut.apply(data, &mut y).map_err(|e| fail(self.name, e))?;
        quant_value(self.name, shape.to_vec(), y, self.output)
    }
    custom_op_boilerplate!();
}
