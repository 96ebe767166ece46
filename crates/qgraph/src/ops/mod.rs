//! fp32 forward implementations and shape rules, one file per op family (backward passes for
//! training will sit beside each forward). Layout is NCHW, as in PyTorch.

pub mod activation;
pub mod attention;
pub mod conv;
pub mod elementwise;
pub mod embedding;
pub mod gemm;
#[cfg(target_arch = "x86_64")]
mod gemm_avx512;
pub mod layout;
pub mod linear;
pub mod norm;
pub mod pool;
pub mod recurrent;
pub mod small_matmul;
pub mod vmath;

use qtensor::Tensor;

use crate::error::shape_err;
use crate::graph::Node;
use crate::op::Op;
use crate::value::Value;
use crate::{GraphError, Result};

/// Output shape of `node` for the given input shapes; errors name the node.
pub fn infer_shape(node: &Node, ins: &[&[usize]]) -> Result<Vec<usize>> {
    let name = node.name.as_str();
    let arity = |n: usize| -> Result<()> {
        if ins.len() == n {
            Ok(())
        } else {
            Err(shape_err(name, format!("expects {n} input(s), got {}", ins.len())))
        }
    };
    match &node.op {
        Op::Input { shape, .. } => Ok(shape.clone()),
        Op::Linear(a) => {
            arity(1)?;
            linear::linear_shape(name, a, ins[0])
        }
        Op::MatMul => {
            arity(2)?;
            linear::matmul_shape(name, ins[0], ins[1])
        }
        Op::Conv2d(a) => {
            arity(1)?;
            conv::conv2d_shape(name, a, ins[0])
        }
        Op::ConvTranspose2d(a) => {
            arity(1)?;
            conv::conv_transpose2d_shape(name, a, ins[0])
        }
        Op::BatchNorm(a) => {
            arity(1)?;
            norm::batch_norm_shape(name, a, ins[0])
        }
        Op::LayerNorm(a) => {
            arity(1)?;
            norm::layer_norm_shape(name, a, ins[0])
        }
        Op::Embedding { embedding_dim, .. } => {
            arity(1)?;
            Ok([ins[0], &[*embedding_dim]].concat())
        }
        Op::Relu
        | Op::Relu6
        | Op::Gelu(_)
        | Op::Silu
        | Op::Hardswish
        | Op::Sigmoid
        | Op::Tanh
        | Op::Dropout { .. }
        | Op::Identity => {
            arity(1)?;
            Ok(ins[0].to_vec())
        }
        Op::Softmax { dim } => {
            arity(1)?;
            layout::normalize_dim(name, *dim, ins[0].len())?;
            Ok(ins[0].to_vec())
        }
        Op::MaxPool2d(a) | Op::AvgPool2d(a) => {
            arity(1)?;
            pool::pool2d_shape(name, a, ins[0])
        }
        Op::AdaptiveAvgPool2d { output } => {
            arity(1)?;
            pool::adaptive_shape(name, *output, ins[0])
        }
        Op::Upsample { scale, .. } => {
            arity(1)?;
            pool::upsample_shape(name, *scale, ins[0])
        }
        Op::Add | Op::Mul => {
            arity(2)?;
            elementwise::broadcast_shape(name, ins[0], ins[1])
        }
        Op::Cat { dim } => layout::cat_shape(name, *dim, ins),
        Op::Flatten { start_dim, end_dim } => {
            arity(1)?;
            layout::flatten_shape(name, *start_dim, *end_dim, ins[0])
        }
        Op::Reshape { shape } => {
            arity(1)?;
            layout::reshape_shape(name, shape, ins[0])
        }
        Op::Permute { dims } => {
            arity(1)?;
            layout::permute_shape(name, dims, ins[0])
        }
        Op::Lstm(a) | Op::Gru(a) => {
            arity(1)?;
            recurrent::rnn_shape(name, a, ins[0])
        }
        Op::Attention(a) => attention::attention_shape(name, a, ins),
        Op::PositionIds => {
            arity(1)?;
            Ok(ins[0].to_vec())
        }
        Op::Custom(c) => c.infer_shape(ins).map_err(|m| shape_err(name, m)),
    }
}

/// Whether [`forward_inplace`] can reuse the buffer of the first input of an op of this kind.
pub fn reuses_first_input(op: &Op) -> bool {
    matches!(
        op,
        Op::Gelu(_)
            | Op::Relu
            | Op::Relu6
            | Op::Silu
            | Op::Hardswish
            | Op::Sigmoid
            | Op::Tanh
            | Op::LayerNorm(_)
            | Op::BatchNorm(_)
            | Op::Cat { .. }
            | Op::Add
            | Op::Mul
            | Op::Dropout { .. }
            | Op::Identity
            | Op::Flatten { .. }
            | Op::Reshape { .. }
    )
}

/// [`forward`] for an op of a kind [`reuses_first_input`] accepts, given its first input by
/// value (`x`, which no one else reads) and the others by reference: element-wise ops write
/// their result over `x`, which saves allocating (and first touching) a new buffer. The values
/// are those [`forward`] computes.
pub fn forward_inplace(node: &Node, x: Tensor, rest: &[&Value]) -> Result<Value> {
    let mut shapes: Vec<&[usize]> = vec![x.shape()];
    shapes.extend(rest.iter().map(|v| v.shape()));
    let out_shape = infer_shape(node, &shapes)?;
    let mut y = x;
    let same_shape_operand = match rest {
        [Value::F32(b)] if b.shape() == y.shape() => Some(b),
        _ => None,
    };
    match &node.op {
        Op::Gelu(approx) => activation::gelu_inplace(y.data_mut(), *approx),
        Op::Relu => y.data_mut().iter_mut().for_each(|v| *v = activation::relu(*v)),
        Op::Relu6 => y.data_mut().iter_mut().for_each(|v| *v = activation::relu6(*v)),
        Op::Silu => y.data_mut().iter_mut().for_each(|v| *v = activation::silu(*v)),
        Op::Hardswish => y.data_mut().iter_mut().for_each(|v| *v = activation::hardswish(*v)),
        Op::Sigmoid => y.data_mut().iter_mut().for_each(|v| *v = activation::sigmoid(*v)),
        Op::Tanh => y.data_mut().iter_mut().for_each(|v| *v = v.tanh()),
        Op::LayerNorm(a) => norm::layer_norm_inplace(node, a, &mut y)?,
        Op::BatchNorm(a) => norm::batch_norm_inplace(node, a, &mut y)?,
        // Concatenation of whole tensors (nothing before the joined dimension but size-1 ones):
        // the others are appended to the first one's buffer.
        Op::Cat { dim }
            if layout::normalize_dim(&node.name, *dim, y.rank())
                .is_ok_and(|d| out_shape[..d].iter().all(|&s| s == 1))
                && rest.iter().all(|v| matches!(v, Value::F32(_))) =>
        {
            let mut data = y.into_data();
            data.reserve_exact(out_shape.iter().product::<usize>() - data.len());
            for v in rest {
                data.extend_from_slice(v.as_f32().expect("checked by the guard").data());
            }
            y = Tensor::new(out_shape, data)?;
        }
        Op::Add | Op::Mul if same_shape_operand.is_some() => {
            let b = same_shape_operand.expect("checked by the guard").data();
            match node.op {
                Op::Add => elementwise::binary_same_shape_inplace(y.data_mut(), b, |a, b| a + b),
                _ => elementwise::binary_same_shape_inplace(y.data_mut(), b, |a, b| a * b),
            }
        }
        Op::Dropout { .. } | Op::Identity => {}
        Op::Flatten { .. } | Op::Reshape { .. } => y = y.reshape(out_shape)?,
        _ => {
            let first = Value::F32(y);
            let mut args = vec![&first];
            args.extend_from_slice(rest);
            return forward(node, &args);
        }
    }
    Ok(Value::F32(y))
}

/// Runs `node` on fp32 inputs (token ids for `Embedding`).
pub fn forward(node: &Node, args: &[&Value]) -> Result<Value> {
    if let Op::Custom(c) = &node.op {
        return c.forward(args);
    }
    let shapes: Vec<&[usize]> = args.iter().map(|v| v.shape()).collect();
    let out_shape = infer_shape(node, &shapes)?;
    if let Op::Embedding { .. } = &node.op {
        return match args[0] {
            Value::I64(ids) => embedding::embedding(node, ids, out_shape).map(Value::F32),
            other => Err(shape_err(
                &node.name,
                format!("expects i64 token ids, got a {}", other.kind()),
            )),
        };
    }
    if let Op::PositionIds = &node.op {
        return Ok(Value::I64(attention::position_ids(&out_shape)));
    }
    if let Op::Attention(a) = &node.op {
        let bias = attention::mask_bias(&node.name, args[args.len() - 1])?;
        let qkv = args[..args.len() - 1]
            .iter()
            .map(|v| {
                v.as_f32().ok_or_else(|| GraphError::Unsupported {
                    node: node.name.clone(),
                    what: format!("{} as attention query/key/value (expects f32)", v.kind()),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let views = match qkv[..] {
            [packed] => attention::QkvViews::packed(packed),
            [q, k, v] => attention::QkvViews::separate(q, k, v),
            _ => unreachable!("arity checked by attention_shape"),
        };
        let (b, s) = (out_shape[0], out_shape[1]);
        return Ok(Value::F32(attention::attention(a, b, s, views, &bias)));
    }
    let x: Vec<&Tensor> = args
        .iter()
        .map(|v| {
            v.as_f32().ok_or_else(|| GraphError::Unsupported {
                node: node.name.clone(),
                what: format!("input of kind {} for the fp32 {} op", v.kind(), node.op.display_name()),
            })
        })
        .collect::<Result<_>>()?;
    let y = match &node.op {
        Op::Linear(a) => linear::linear(node, a, x[0], out_shape)?,
        Op::MatMul => linear::matmul(x[0], x[1], out_shape),
        Op::Conv2d(a) => conv::conv2d(node, a, x[0], out_shape)?,
        Op::ConvTranspose2d(a) => conv::conv_transpose2d(node, a, x[0], out_shape)?,
        Op::BatchNorm(a) => norm::batch_norm(node, a, x[0])?,
        Op::LayerNorm(a) => norm::layer_norm(node, a, x[0])?,
        Op::Relu => activation::map(x[0], activation::relu),
        Op::Relu6 => activation::map(x[0], activation::relu6),
        Op::Gelu(approx) => activation::gelu(x[0], *approx),
        Op::Silu => activation::map(x[0], activation::silu),
        Op::Hardswish => activation::map(x[0], activation::hardswish),
        Op::Sigmoid => activation::map(x[0], activation::sigmoid),
        Op::Tanh => activation::map(x[0], f32::tanh),
        Op::Softmax { dim } => activation::softmax(x[0], layout::normalize_dim(&node.name, *dim, x[0].rank())?),
        Op::MaxPool2d(a) => pool::max_pool2d(a, x[0], out_shape),
        Op::AvgPool2d(a) => pool::avg_pool2d(a, x[0], out_shape),
        Op::AdaptiveAvgPool2d { .. } => pool::adaptive_avg_pool2d(x[0], out_shape),
        Op::Upsample { mode, .. } => pool::upsample(*mode, x[0], out_shape),
        Op::Add => elementwise::binary(x[0], x[1], out_shape, |a, b| a + b),
        Op::Mul => elementwise::binary(x[0], x[1], out_shape, |a, b| a * b),
        Op::Cat { dim } => layout::cat(&x, layout::normalize_dim(&node.name, *dim, x[0].rank())?, out_shape),
        Op::Flatten { .. } | Op::Reshape { .. } => x[0].clone().reshape(out_shape)?,
        Op::Permute { dims } => layout::permute(x[0], dims),
        Op::Dropout { .. } | Op::Identity => x[0].clone(),
        Op::Lstm(a) => recurrent::lstm(node, a, x[0])?,
        Op::Gru(a) => recurrent::gru(node, a, x[0])?,
        Op::Input { .. } | Op::Embedding { .. } | Op::Attention(_) | Op::PositionIds | Op::Custom(_) => {
            unreachable!("handled above")
        }
    };
    Ok(Value::F32(y))
}
