//! HF `BertModel` as a qgraph [`Graph`], built from its `config.json`, with node names equal to
//! the module paths of `transformers` so `model.safetensors` loads as is
//! (`embeddings.word_embeddings.weight`, `encoder.layer.{i}.attention.self.query.weight`, ...;
//! checkpoints saved from `BertFor*` heads carry a `bert.` prefix, detected on load).
//!
//! Inputs `input_ids`, `attention_mask`, `token_type_ids` (i64 `[B, S]`), output
//! `last_hidden_state` `[B, S, hidden]`:
//! embeddings `LayerNorm(word[ids] + position[0..S] + token_type[types])`, then per layer
//! `h = LayerNorm(h + dense(Attention(query(h), key(h), value(h), mask)))`,
//! `h = LayerNorm(h + output(act(intermediate(h))))` (post-norm, as BERT). Sentence embeddings
//! (sentence-transformers' mean pooling) are [`mean_pool_normalize`] of the output.

use std::path::Path;

use qgraph::{GeluApprox, Graph, GraphBuilder, IdTensor, NodeId, Op, Value};
use qtensor::Tensor;

use super::tokenizer::Encoded;
use crate::{ApiError, Result};

/// The fields of a BERT `config.json` the graph depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f32,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
}

impl BertConfig {
    /// all-MiniLM-L6-v2's shape (6 layers, hidden 384, 12 heads, intermediate 1536).
    pub fn minilm_l6() -> BertConfig {
        BertConfig {
            vocab_size: 30522,
            hidden_size: 384,
            num_hidden_layers: 6,
            num_attention_heads: 12,
            intermediate_size: 1536,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-12,
            max_position_embeddings: 512,
            type_vocab_size: 2,
        }
    }

    /// Parses a `config.json` text.
    pub fn from_json(text: &str) -> Result<BertConfig> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| ApiError::Config {
            detail: format!("config.json does not parse: {e}"),
        })?;
        let missing = |field: &str| ApiError::Config {
            detail: format!("config.json has no usable `{field}`; is this a BERT config?"),
        };
        let int = |field: &str| -> Result<usize> {
            v[field]
                .as_u64()
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| missing(field))
        };
        let config = BertConfig {
            vocab_size: int("vocab_size")?,
            hidden_size: int("hidden_size")?,
            num_hidden_layers: int("num_hidden_layers")?,
            num_attention_heads: int("num_attention_heads")?,
            intermediate_size: int("intermediate_size")?,
            hidden_act: v["hidden_act"].as_str().unwrap_or("gelu").to_string(),
            layer_norm_eps: v["layer_norm_eps"].as_f64().unwrap_or(1e-12) as f32,
            max_position_embeddings: int("max_position_embeddings")?,
            type_vocab_size: int("type_vocab_size")?,
        };
        if let Some(kind) = v["position_embedding_type"].as_str().filter(|k| *k != "absolute") {
            return Err(ApiError::Config {
                detail: format!("position_embedding_type `{kind}` is not supported; only `absolute`"),
            });
        }
        config.activation()?;
        Ok(config)
    }

    /// Reads `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<BertConfig> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ApiError::Io {
            path: path.display().to_string(),
            source,
        })?;
        BertConfig::from_json(&text)
    }

    fn activation(&self) -> Result<Op> {
        match self.hidden_act.as_str() {
            "gelu" => Ok(Op::Gelu(GeluApprox::Erf)),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Op::Gelu(GeluApprox::Tanh)),
            "relu" => Ok(Op::Relu),
            other => Err(ApiError::Config {
                detail: format!("hidden_act `{other}` is not supported; use gelu, gelu_new or relu"),
            }),
        }
    }

    /// Parameter count of the graph (pooler excluded).
    pub fn param_count(&self) -> usize {
        let h = self.hidden_size;
        let emb = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * h + 2 * h;
        let layer = 4 * (h * h + h) + 2 * (h * self.intermediate_size) + self.intermediate_size + h + 4 * h;
        emb + self.num_hidden_layers * layer
    }
}

/// Builds the graph; `prefix` (`""` or `"bert."`) is put before every node name.
pub fn build_bert(config: &BertConfig, prefix: &str) -> Result<Graph> {
    let h = config.hidden_size;
    let eps = config.layer_norm_eps;
    let act = config.activation()?;
    let n = |s: &str| format!("{prefix}{s}");
    let mut b = GraphBuilder::new();
    let ids = b.input_ids("input_ids", &[1, 8]);
    let mask = b.input_ids("attention_mask", &[1, 8]);
    let types = b.input_ids("token_type_ids", &[1, 8]);
    let word = b.embedding(&n("embeddings.word_embeddings"), ids, config.vocab_size, h);
    let pos_ids = b.position_ids(&n("embeddings.position_ids"), ids);
    let pos = b.embedding(
        &n("embeddings.position_embeddings"),
        pos_ids,
        config.max_position_embeddings,
        h,
    );
    let typ = b.embedding(&n("embeddings.token_type_embeddings"), types, config.type_vocab_size, h);
    let sum = b.add(&n("embeddings.add_position"), word, pos);
    let sum = b.add(&n("embeddings.add_token_type"), sum, typ);
    let mut x: NodeId = b.layer_norm(&n("embeddings.LayerNorm"), sum, &[h], eps);
    for i in 0..config.num_hidden_layers {
        let l = |s: &str| n(&format!("encoder.layer.{i}.{s}"));
        let q = b.linear(&l("attention.self.query"), x, h, h);
        let k = b.linear(&l("attention.self.key"), x, h, h);
        let v = b.linear(&l("attention.self.value"), x, h, h);
        let ctx = b.attention(&l("attention.self"), [q, k, v, mask], config.num_attention_heads, h);
        let proj = b.linear(&l("attention.output.dense"), ctx, h, h);
        let res = b.add(&l("attention.output.residual"), proj, x);
        let x1 = b.layer_norm(&l("attention.output.LayerNorm"), res, &[h], eps);
        let up = b.linear(&l("intermediate.dense"), x1, h, config.intermediate_size);
        let a = b.node(&l("intermediate.intermediate_act_fn"), act.clone(), &[up]);
        let down = b.linear(&l("output.dense"), a, config.intermediate_size, h);
        let res = b.add(&l("output.residual"), down, x1);
        x = b.layer_norm(&l("output.LayerNorm"), res, &[h], eps);
    }
    b.output(x);
    Ok(b.build()?)
}

/// Loads a BERT folder (`config.json`, `model.safetensors`): builds the graph and loads every
/// parameter it uses (the pooler and other heads in the file are ignored).
pub fn load_bert(dir: impl AsRef<Path>) -> Result<(Graph, BertConfig)> {
    let dir = dir.as_ref();
    let config = BertConfig::from_file(dir.join("config.json"))?;
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).map_err(|source| ApiError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let names = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| ApiError::Corrupt {
            detail: format!("{}: {e}", path.display()),
        })?
        .1
        .tensors()
        .into_keys()
        .collect::<Vec<_>>();
    let prefix = if names.iter().any(|k| k == "bert.embeddings.word_embeddings.weight") {
        "bert."
    } else {
        ""
    };
    let mut graph = build_bert(&config, prefix)?;
    graph.load_safetensors(&bytes, false)?;
    Ok((graph, config))
}

/// Gives every parameter a deterministic pseudo-random value (weights uniform in +-0.05,
/// LayerNorm scales 1 and shifts 0): a BERT-shaped model for offline demos and benchmarks.
pub fn randomize(graph: &mut Graph, seed: u64) {
    let mut state = seed;
    for i in 0..graph.nodes().len() {
        let node = graph.node_mut(NodeId(i));
        let is_norm = matches!(node.op, Op::LayerNorm(_));
        for (name, t) in node.params.iter_mut() {
            for v in t.data_mut() {
                *v = if is_norm {
                    if name == "weight" {
                        1.0
                    } else {
                        0.0
                    }
                } else {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
                };
            }
        }
    }
}

/// The graph inputs of an encoded batch.
pub fn bert_inputs(enc: &Encoded) -> Result<Vec<Value>> {
    let shape = [enc.batch, enc.seq];
    let id = |v: &[i64], what: &str| {
        IdTensor::new(shape, v.to_vec())
            .map(Value::I64)
            .ok_or_else(|| ApiError::BadTensor {
                name: what.into(),
                detail: format!("expected {} values for {shape:?}, got {}", enc.batch * enc.seq, v.len()),
            })
    };
    Ok(vec![
        id(&enc.input_ids, "input_ids")?,
        id(&enc.attention_mask, "attention_mask")?,
        id(&enc.token_type_ids, "token_type_ids")?,
    ])
}

/// Runs the graph on an encoded batch: `last_hidden_state` `[B, S, hidden]`.
pub fn last_hidden_state(graph: &Graph, enc: &Encoded) -> Result<Tensor> {
    let out = graph.run(bert_inputs(enc)?)?;
    out.into_iter()
        .next()
        .and_then(Value::into_f32)
        .ok_or_else(|| ApiError::Config {
            detail: "the graph's first output is not an f32 tensor".into(),
        })
}

/// Sentence-transformers mean pooling, then L2 normalization:
/// `e = sum_s(h[b, s] m[b, s]) / sum_s(m[b, s])`, `e / max(|e|, 1e-12)` (as
/// `torch.nn.functional.normalize`). `hidden` `[B, S, H]`, `mask` `[B, S]`; output `[B, H]`.
pub fn mean_pool_normalize(hidden: &Tensor, mask: &[i64]) -> Result<Tensor> {
    let [b, s, h] = hidden.shape() else {
        return Err(ApiError::BadTensor {
            name: "hidden".into(),
            detail: format!("expected [batch, seq, hidden], got {:?}", hidden.shape()),
        });
    };
    let (b, s, h) = (*b, *s, *h);
    if mask.len() != b * s {
        return Err(ApiError::BadTensor {
            name: "attention_mask".into(),
            detail: format!("expected {} values for [{b}, {s}], got {}", b * s, mask.len()),
        });
    }
    let mut out = vec![0.0f32; b * h];
    for (bi, e) in out.chunks_exact_mut(h).enumerate() {
        let mut count = 0.0f32;
        for si in 0..s {
            let m = mask[bi * s + si] as f32;
            if m != 0.0 {
                let row = &hidden.data()[(bi * s + si) * h..][..h];
                e.iter_mut().zip(row).for_each(|(a, &v)| *a += v * m);
                count += m;
            }
        }
        if count == 0.0 {
            return Err(ApiError::BadTensor {
                name: "attention_mask".into(),
                detail: format!("sentence {bi} has no unmasked token to pool"),
            });
        }
        e.iter_mut().for_each(|v| *v /= count);
        let norm = e.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        e.iter_mut().for_each(|v| *v /= norm);
    }
    Ok(Tensor::new([b, h], out)?)
}
