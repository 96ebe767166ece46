//! Weight-only 8-bit embedding tables for dynamic quantization, as PyTorch's quantized
//! `Embedding` under `float_qparams_weight_only_qconfig` (8-bit rowwise, fbgemm's
//! `Fused8BitRowwise` layout): every row of the table gets its own affine parameters with a
//! float zero point, lookups dequantize the selected rows to f32.
//!
//! Per row `r` with range `[min_r, max_r]` (PyTorch `PerChannelMinMaxObserver` with
//! `per_channel_affine_float_qparams`, quint8 `[0, 255]`):
//! `scale_r = (max_r - min_r) / 255` (1 when that is not above `f32::EPSILON`),
//! `zp_r = -min_r / scale_r` (a float), `q = clamp(round_half_even(x * (1 / scale_r) + zp_r), 0, 255)`
//! (ATen `quantize_val_float_qparams`). A lookup returns `q * scale_r + bias_r` with
//! `bias_r = -zp_r * scale_r` (fbgemm's rowwise embedding lookup form).

use std::any::Any;

use qgraph::{CustomOp, GraphError, Node, Value};
use qtensor::Tensor;

use crate::{ApiError, Result};

/// An embedding table stored as u8 codes with a float scale and zero point per row.
#[derive(Debug, Clone, PartialEq)]
pub struct RowwiseQuantizedTable {
    rows: usize,
    dim: usize,
    codes: Vec<u8>,
    scales: Vec<f32>,
    zero_points: Vec<f32>,
    /// `-zp_r * scale_r`, kept so a lookup is one multiply-add per value.
    biases: Vec<f32>,
}

impl RowwiseQuantizedTable {
    /// Quantizes a `[rows, dim]` f32 table row by row (see the module docs for the formula).
    pub fn quantize(table: &Tensor) -> Result<RowwiseQuantizedTable> {
        let [rows, dim] = table.shape() else {
            return Err(ApiError::BadTensor {
                name: "weight".into(),
                detail: format!("expected a 2-d [num_embeddings, dim] table, got {:?}", table.shape()),
            });
        };
        let (rows, dim) = (*rows, *dim);
        if rows == 0 || dim == 0 {
            return Err(ApiError::BadTensor {
                name: "weight".into(),
                detail: format!("embedding table [{rows}, {dim}] is empty"),
            });
        }
        table.check_finite("embedding table")?;
        let mut codes = vec![0u8; rows * dim];
        let mut scales = Vec::with_capacity(rows);
        let mut zero_points = Vec::with_capacity(rows);
        for (row, out) in table.data().chunks_exact(dim).zip(codes.chunks_exact_mut(dim)) {
            let (lo, hi) = qtensor::min_max(row);
            let (scale, zp) = row_qparams(lo, hi);
            let inv = 1.0 / scale;
            for (q, &x) in out.iter_mut().zip(row) {
                *q = (x * inv + zp).round_ties_even().clamp(0.0, 255.0) as u8;
            }
            scales.push(scale);
            zero_points.push(zp);
        }
        RowwiseQuantizedTable::from_parts(rows, dim, codes, scales, zero_points)
    }

    /// Rebuilds a table from stored codes and per-row parameters; checks their lengths.
    pub fn from_parts(
        rows: usize,
        dim: usize,
        codes: Vec<u8>,
        scales: Vec<f32>,
        zero_points: Vec<f32>,
    ) -> Result<RowwiseQuantizedTable> {
        let finite = scales.iter().chain(&zero_points).all(|v| v.is_finite());
        if codes.len() != rows * dim || scales.len() != rows || zero_points.len() != rows || !finite {
            return Err(ApiError::BadTensor {
                name: "weight".into(),
                detail: format!(
                    "rowwise table [{rows}, {dim}] needs {} codes and {rows} finite scales and zero points, got {}, {}, {}",
                    rows * dim,
                    codes.len(),
                    scales.len(),
                    zero_points.len()
                ),
            });
        }
        let biases = scales.iter().zip(&zero_points).map(|(&s, &z)| -z * s).collect();
        Ok(RowwiseQuantizedTable {
            rows,
            dim,
            codes,
            scales,
            zero_points,
            biases,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The u8 codes, row-major `[rows, dim]`.
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }

    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    pub fn zero_points(&self) -> &[f32] {
        &self.zero_points
    }

    /// Bytes stored: one per code plus an f32 scale and zero point per row.
    pub fn size_bytes(&self) -> usize {
        self.codes.len() + 8 * self.rows
    }

    /// Row `r` dequantized into `out` (`dim` values): `q * scale_r + bias_r`.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let (s, b) = (self.scales[r], self.biases[r]);
        let codes = &self.codes[r * self.dim..(r + 1) * self.dim];
        for (y, &q) in out.iter_mut().zip(codes) {
            *y = q as f32 * s + b;
        }
    }
}

/// Per-row float qparams: `scale = (max - min) / 255` (1 at or below `f32::EPSILON`), `zp = -min / scale`.
fn row_qparams(lo: f32, hi: f32) -> (f32, f32) {
    let scale = (hi - lo) / 255.0;
    let scale = if scale > f32::EPSILON { scale } else { 1.0 };
    (scale, -lo / scale)
}

/// A dynamically quantized `Embedding` node: u8 rowwise table, f32 rows out (PyTorch
/// `torch.ao.nn.quantized.Embedding`).
#[derive(Debug, Clone)]
pub struct DynamicEmbeddingOp {
    table: RowwiseQuantizedTable,
}

impl DynamicEmbeddingOp {
    /// Quantizes the `weight` of an Embedding node.
    pub fn from_node(node: &Node) -> Result<DynamicEmbeddingOp> {
        Ok(DynamicEmbeddingOp {
            table: RowwiseQuantizedTable::quantize(node.param("weight")?)?,
        })
    }

    pub fn new(table: RowwiseQuantizedTable) -> DynamicEmbeddingOp {
        DynamicEmbeddingOp { table }
    }

    pub fn table(&self) -> &RowwiseQuantizedTable {
        &self.table
    }
}

impl CustomOp for DynamicEmbeddingOp {
    fn kind_name(&self) -> &str {
        "QuantizedEmbedding"
    }

    fn infer_shape(&self, inputs: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
        match inputs {
            [ids] => Ok([*ids, &[self.table.dim][..]].concat()),
            _ => Err(format!("Embedding expects one token-id input, got {}", inputs.len())),
        }
    }

    fn forward(&self, inputs: &[&Value]) -> qgraph::Result<Value> {
        let ids = match inputs {
            [Value::I64(ids)] => ids,
            _ => {
                return Err(GraphError::Unsupported {
                    node: self.kind_name().into(),
                    what: format!(
                        "inputs {:?} (expects one i64 token-id tensor)",
                        inputs.iter().map(|v| v.kind()).collect::<Vec<_>>()
                    ),
                })
            }
        };
        let dim = self.table.dim;
        // Touch every cache line of the rows asked for (and their scale and bias) before
        // dequantizing them: the loads are independent, so all the rows (usually far apart in a
        // large table, out of cache) are fetched at once instead of one row's misses at a time
        // in the loop below (a third off the word-embedding lookup of a 128-token sequence).
        let mut touched = 0u32;
        for &id in ids.data() {
            if let Some(r) = usize::try_from(id).ok().filter(|&r| r < self.table.rows) {
                let row = &self.table.codes[r * dim..(r + 1) * dim];
                touched ^= row.iter().step_by(64).fold(0, |a, &b| a ^ b as u32);
                touched ^= self.table.scales[r].to_bits() ^ self.table.biases[r].to_bits();
            }
        }
        std::hint::black_box(touched);
        let mut y = vec![0f32; ids.data().len() * dim];
        for (i, (&id, out)) in ids.data().iter().zip(y.chunks_exact_mut(dim)).enumerate() {
            if id < 0 || id as usize >= self.table.rows {
                return Err(GraphError::Unsupported {
                    node: self.kind_name().into(),
                    what: format!(
                        "token id {id} at position {i}: the table has {} rows; check the tokenizer matches the model",
                        self.table.rows
                    ),
                });
            }
            self.table.dequantize_row(id as usize, out);
        }
        let shape = [ids.shape(), &[dim][..]].concat();
        Ok(Value::F32(Tensor::new(shape, y)?))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_within_half_a_step() {
        let data: Vec<f32> = (0..4 * 10).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.13).collect();
        let t = Tensor::new([4, 10], data.clone()).unwrap();
        let q = RowwiseQuantizedTable::quantize(&t).unwrap();
        let mut row = vec![0f32; 10];
        for r in 0..4 {
            q.dequantize_row(r, &mut row);
            let step = q.scales()[r];
            for (a, b) in row.iter().zip(&data[r * 10..]) {
                assert!((a - b).abs() <= 0.5 * step + 1e-6, "row {r}: {a} vs {b}");
            }
        }
        // The extremes of each row map to the ends of the code range.
        assert!(q.codes()[..10].contains(&0) && q.codes()[..10].contains(&255));
    }

    #[test]
    fn constant_rows_use_unit_scale() {
        let t = Tensor::new([2, 3], vec![0.5, 0.5, 0.5, 0.0, 0.0, 0.0]).unwrap();
        let q = RowwiseQuantizedTable::quantize(&t).unwrap();
        assert_eq!(q.scales(), &[1.0, 1.0]);
        let mut row = vec![0f32; 3];
        q.dequantize_row(1, &mut row);
        assert_eq!(row, vec![0.0; 3]);
    }

    #[test]
    fn bad_tables_are_rejected() {
        assert!(RowwiseQuantizedTable::quantize(&Tensor::new([2, 2], vec![0.0, f32::NAN, 1.0, 2.0]).unwrap()).is_err());
        assert!(RowwiseQuantizedTable::from_parts(2, 2, vec![0; 3], vec![1.0; 2], vec![0.0; 2]).is_err());
    }
}
