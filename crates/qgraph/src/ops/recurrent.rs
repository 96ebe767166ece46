//! LSTM and GRU (unidirectional, stacked, zero initial state), PyTorch gate order and formulas:
//!
//! LSTM, gates `(i, f, g, o)`: `i, f, o = sigmoid(.)`, `g = tanh(.)`, `c' = f c + i g`,
//! `h' = o tanh(c')`, where each gate is `W_ih x + b_ih + W_hh h + b_hh`.
//! GRU, gates `(r, z, n)`: `r, z = sigmoid(W_i x + b_i + W_h h + b_h)`,
//! `n = tanh(W_in x + b_in + r (W_hn h + b_hn))`, `h' = (1 - z) n + z h`.
//!
//! The output is the last layer's hidden state at every step (`output` of `torch.nn.LSTM`).

use qtensor::Tensor;

use super::activation::sigmoid;
use super::gemm::sgemm_weight;
use crate::error::shape_err;
use crate::graph::Node;
use crate::op::RnnAttrs;
use crate::{GraphError, Result};

pub fn rnn_shape(node: &str, a: &RnnAttrs, x: &[usize]) -> Result<Vec<usize>> {
    if x.len() != 3 || x[2] != a.input_size || a.num_layers == 0 {
        let layout = if a.batch_first {
            "[batch, seq, features]"
        } else {
            "[seq, batch, features]"
        };
        return Err(shape_err(
            node,
            format!(
                "recurrent layer expects {layout} with {} features and >= 1 layer, got {x:?}",
                a.input_size
            ),
        ));
    }
    Ok(vec![x[0], x[1], a.hidden_size])
}

/// Sequence-major `[T, B, F]` data of the input.
fn to_seq_major(a: &RnnAttrs, x: &Tensor) -> (usize, usize, Vec<f32>) {
    let s = x.shape();
    if a.batch_first {
        (s[1], s[0], super::layout::permute(x, &[1, 0, 2]).into_data())
    } else {
        (s[0], s[1], x.data().to_vec())
    }
}

fn from_seq_major(a: &RnnAttrs, t: usize, b: usize, h: usize, data: Vec<f32>) -> Result<Tensor> {
    let y = Tensor::new([t, b, h], data)?;
    Ok(if a.batch_first {
        super::layout::permute(&y, &[1, 0, 2])
    } else {
        y
    })
}

/// `x W^T + b` for all rows of `x` (`rows x in`), weight `[gates * h, in]`.
fn project(x: &[f32], rows: usize, w: &Tensor, b: Option<&Tensor>) -> Vec<f32> {
    let (n, k) = (w.shape()[0], w.shape()[1]);
    let mut y = vec![0.0f32; rows * n];
    if let Some(b) = b {
        for row in y.chunks_exact_mut(n) {
            row.copy_from_slice(b.data());
        }
    }
    sgemm_weight(x, rows, w, n, k, &mut y, b.is_some());
    y
}

struct LayerParams<'a> {
    w_ih: &'a Tensor,
    w_hh: &'a Tensor,
    b_ih: Option<&'a Tensor>,
    b_hh: Option<&'a Tensor>,
}

fn layer_params<'a>(node: &'a Node, a: &RnnAttrs, l: usize) -> Result<LayerParams<'a>> {
    Ok(LayerParams {
        w_ih: node.param(&format!("weight_ih_l{l}"))?,
        w_hh: node.param(&format!("weight_hh_l{l}"))?,
        b_ih: if a.bias {
            Some(node.param(&format!("bias_ih_l{l}"))?)
        } else {
            None
        },
        b_hh: if a.bias {
            Some(node.param(&format!("bias_hh_l{l}"))?)
        } else {
            None
        },
    })
}

/// Which weight of a layer a projection applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RnnWeight {
    /// `W_ih`, `b_ih`: the layer input.
    InputHidden,
    /// `W_hh`, `b_hh`: the previous hidden state.
    HiddenHidden,
}

pub fn lstm(node: &Node, a: &RnnAttrs, x: &Tensor) -> Result<Tensor> {
    let params = all_layer_params(node, a)?;
    lstm_with(a, x, |l, w, rows_data, rows| {
        Ok(fp32_projection(&params[l], w, rows_data, rows))
    })
}

pub fn gru(node: &Node, a: &RnnAttrs, x: &Tensor) -> Result<Tensor> {
    let params = all_layer_params(node, a)?;
    gru_with(a, x, |l, w, rows_data, rows| {
        Ok(fp32_projection(&params[l], w, rows_data, rows))
    })
}

/// Every layer's parameters, looked up once per call rather than once per time step.
fn all_layer_params<'a>(node: &'a Node, a: &RnnAttrs) -> Result<Vec<LayerParams<'a>>> {
    (0..a.num_layers).map(|l| layer_params(node, a, l)).collect()
}

fn fp32_projection(p: &LayerParams<'_>, w: RnnWeight, x: &[f32], rows: usize) -> Vec<f32> {
    match w {
        RnnWeight::InputHidden => project(x, rows, p.w_ih, p.b_ih),
        RnnWeight::HiddenHidden => project(x, rows, p.w_hh, p.b_hh),
    }
}

/// LSTM gate math with the projections supplied by `project(layer, weight, rows, n_rows)`,
/// which returns `rows W^T + b` (`n_rows x 4 hidden`); the fp32 op passes sgemm, dynamic
/// quantization passes int8 GEMMs.
pub fn lstm_with<E, P>(a: &RnnAttrs, x: &Tensor, mut project: P) -> std::result::Result<Tensor, E>
where
    E: From<GraphError>,
    P: FnMut(usize, RnnWeight, &[f32], usize) -> std::result::Result<Vec<f32>, E>,
{
    let (t, b, mut seq) = to_seq_major(a, x);
    let h = a.hidden_size;
    for l in 0..a.num_layers {
        let xin = project(l, RnnWeight::InputHidden, &seq, t * b)?;
        let mut hs = vec![0.0f32; b * h];
        let mut cs = vec![0.0f32; b * h];
        let mut out = Vec::with_capacity(t * b * h);
        for step in 0..t {
            let rec = project(l, RnnWeight::HiddenHidden, &hs, b)?;
            for bi in 0..b {
                let gx = &xin[(step * b + bi) * 4 * h..][..4 * h];
                let gh = &rec[bi * 4 * h..][..4 * h];
                for j in 0..h {
                    let i = sigmoid(gx[j] + gh[j]);
                    let f = sigmoid(gx[h + j] + gh[h + j]);
                    let g = (gx[2 * h + j] + gh[2 * h + j]).tanh();
                    let o = sigmoid(gx[3 * h + j] + gh[3 * h + j]);
                    let c = f * cs[bi * h + j] + i * g;
                    cs[bi * h + j] = c;
                    hs[bi * h + j] = o * c.tanh();
                }
            }
            out.extend_from_slice(&hs);
        }
        seq = out;
    }
    Ok(from_seq_major(a, t, b, h, seq)?)
}

/// GRU gate math with supplied projections, as [`lstm_with`] (`n_rows x 3 hidden`).
pub fn gru_with<E, P>(a: &RnnAttrs, x: &Tensor, mut project: P) -> std::result::Result<Tensor, E>
where
    E: From<GraphError>,
    P: FnMut(usize, RnnWeight, &[f32], usize) -> std::result::Result<Vec<f32>, E>,
{
    let (t, b, mut seq) = to_seq_major(a, x);
    let h = a.hidden_size;
    for l in 0..a.num_layers {
        let xin = project(l, RnnWeight::InputHidden, &seq, t * b)?;
        let mut hs = vec![0.0f32; b * h];
        let mut out = Vec::with_capacity(t * b * h);
        for step in 0..t {
            let rec = project(l, RnnWeight::HiddenHidden, &hs, b)?;
            for bi in 0..b {
                let gx = &xin[(step * b + bi) * 3 * h..][..3 * h];
                let gh = &rec[bi * 3 * h..][..3 * h];
                for j in 0..h {
                    let r = sigmoid(gx[j] + gh[j]);
                    let z = sigmoid(gx[h + j] + gh[h + j]);
                    let n = (gx[2 * h + j] + r * gh[2 * h + j]).tanh();
                    let prev = hs[bi * h + j];
                    hs[bi * h + j] = (1.0 - z) * n + z * prev;
                }
            }
            out.extend_from_slice(&hs);
        }
        seq = out;
    }
    Ok(from_seq_major(a, t, b, h, seq)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_rejects_wrong_features() {
        let a = RnnAttrs {
            input_size: 3,
            hidden_size: 2,
            num_layers: 1,
            bias: true,
            batch_first: false,
        };
        assert!(rnn_shape("rnn", &a, &[5, 1, 4]).is_err());
        assert_eq!(rnn_shape("rnn", &a, &[5, 1, 3]).unwrap(), vec![5, 1, 2]);
    }
}
