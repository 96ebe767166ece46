//! Dynamic quantization of a BERT-shaped graph: 8-bit rowwise embedding tables, the fused
//! query/key/value projection (bit-identical to separate layers), and save/load of both.

use qapi::dynamic::DynamicConfig;
use qapi::dynamic_embedding::DynamicEmbeddingOp;
use qapi::models::bert::{build_bert, last_hidden_state, randomize, BertConfig};
use qapi::models::tokenizer::Encoded;
use qapi::{quantize_dynamic, quantize_dynamic_unfused, DynamicLinearOp, NodeStatus};
use qgraph::{Graph, Op, OpKind};

fn small_bert() -> (Graph, BertConfig) {
    let config = BertConfig {
        vocab_size: 500,
        hidden_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 128,
        hidden_act: "gelu".into(),
        layer_norm_eps: 1e-12,
        max_position_embeddings: 64,
        type_vocab_size: 2,
    };
    let mut g = build_bert(&config, "").unwrap();
    randomize(&mut g, 7);
    (g, config)
}

/// Two sentences of 20 tokens, the second padded after 13.
fn batch(vocab: usize) -> Encoded {
    let (b, s) = (2, 20);
    Encoded {
        batch: b,
        seq: s,
        input_ids: (0..b * s).map(|i| ((i * 7919 + 11) % vocab) as i64).collect(),
        attention_mask: (0..b * s).map(|i| i64::from(i < s + 13)).collect(),
        token_type_ids: (0..b * s).map(|i| i64::from(i % s >= 10)).collect(),
    }
}

fn custom<T: 'static>(g: &Graph) -> Vec<&T> {
    g.nodes()
        .iter()
        .filter_map(|n| match &n.op {
            Op::Custom(c) => c.as_any().downcast_ref::<T>(),
            _ => None,
        })
        .collect()
}

#[test]
fn fused_qkv_gives_the_same_bits_as_separate_projections() {
    let (g, config) = small_bert();
    let enc = batch(config.vocab_size);
    for kinds in [&[OpKind::Linear][..], &[OpKind::Linear, OpKind::Embedding][..]] {
        let (fused, report) = quantize_dynamic(&g, kinds, DynamicConfig::qforge()).unwrap();
        let (separate, _) = quantize_dynamic_unfused(&g, kinds, DynamicConfig::qforge()).unwrap();
        let linears = custom::<DynamicLinearOp>(&fused);
        assert_eq!(
            linears.len(),
            4 * config.num_hidden_layers,
            "3 + 1 Linears per layer once fused"
        );
        assert!(linears.iter().any(|l| l.attrs().out_features == 3 * config.hidden_size));
        assert_eq!(
            fused.nodes().len(),
            separate.nodes().len() - 2 * config.num_hidden_layers
        );
        let id = fused
            .find("encoder.layer.1.attention.self.qkv")
            .expect("fused node named after the attention");
        assert_eq!(fused.consumers()[id.0].len(), 1);
        let status = &report
            .nodes
            .iter()
            .find(|n| n.name.ends_with("layer.0.attention.self.key"))
            .unwrap()
            .status;
        assert!(
            matches!(status, NodeStatus::Quantized { detail } if detail.contains("fused")),
            "{status:?}"
        );
        let a = last_hidden_state(&fused, &enc).unwrap();
        let b = last_hidden_state(&separate, &enc).unwrap();
        assert_eq!(a.data(), b.data(), "fusion must not change any output bit");
    }
    // Per-tensor weights (PyTorch parity) are not stacked.
    let (q, _) = quantize_dynamic(&g, &[OpKind::Linear], DynamicConfig::pytorch_fbgemm()).unwrap();
    assert_eq!(custom::<DynamicLinearOp>(&q).len(), 6 * config.num_hidden_layers);
}

#[test]
fn embedding_tables_are_8_bit_and_close_to_fp32() {
    let (g, config) = small_bert();
    let enc = batch(config.vocab_size);
    let (q, report) = quantize_dynamic(&g, &[OpKind::Embedding], DynamicConfig::qforge()).unwrap();
    let tables = custom::<DynamicEmbeddingOp>(&q);
    assert_eq!(tables.len(), 3);
    assert_eq!(tables.iter().map(|t| t.table().rows()).sum::<usize>(), 500 + 64 + 2);
    assert!(report.nodes.iter().any(|n| n.name == "embeddings.word_embeddings"
        && matches!(&n.status, NodeStatus::Quantized { detail } if detail.contains("rowwise"))));
    // Looked-up rows are within half a quantization step of the fp32 table.
    let w = g
        .node(g.find("embeddings.word_embeddings").unwrap())
        .param("weight")
        .unwrap();
    let t = tables[0].table();
    let mut row = vec![0f32; t.dim()];
    for r in [0, 17, 499] {
        t.dequantize_row(r, &mut row);
        for (a, b) in row.iter().zip(&w.data()[r * t.dim()..]) {
            assert!((a - b).abs() <= 0.5 * t.scales()[r] * 1.0001, "row {r}: {a} vs {b}");
        }
    }
    let want = last_hidden_state(&g, &enc).unwrap();
    let got = last_hidden_state(&q, &enc).unwrap();
    let dot: f64 = want
        .data()
        .iter()
        .zip(got.data())
        .map(|(&a, &b)| a as f64 * b as f64)
        .sum();
    let norm = |v: &[f32]| v.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
    let cosine = dot / (norm(want.data()) * norm(got.data()));
    assert!(cosine > 0.999, "cosine {cosine}");
    // Float16 has no embedding kernel: the tables stay f32 and the report says why.
    let (f, report) = quantize_dynamic(&g, &[OpKind::Embedding], DynamicConfig::float16()).unwrap();
    assert!(custom::<DynamicEmbeddingOp>(&f).is_empty());
    assert_eq!(
        report.kept_float().len(),
        report
            .nodes
            .iter()
            .filter(|n| matches!(n.status, NodeStatus::Float { .. }))
            .count()
    );
    // Out-of-range token ids are an error.
    let mut bad = enc.clone();
    bad.input_ids[3] = 500;
    let err = last_hidden_state(&q, &bad).unwrap_err().to_string();
    assert!(err.contains("token id 500"), "{err}");
}

#[test]
fn quantized_bert_saves_and_loads_exactly() {
    let (g, config) = small_bert();
    let enc = batch(config.vocab_size);
    let dir = std::env::temp_dir().join(format!("qforge-dynamic-bert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (q, _) = quantize_dynamic(&g, &[OpKind::Linear, OpKind::Embedding], DynamicConfig::qforge()).unwrap();
    let (fp32, int8) = (dir.join("fp32.safetensors"), dir.join("int8.safetensors"));
    qapi::save_graph(&g, &fp32).unwrap();
    qapi::save_graph(&q, &int8).unwrap();
    let loaded = qapi::load_graph(&int8).unwrap();
    assert_eq!(custom::<DynamicEmbeddingOp>(&loaded).len(), 3);
    let a = last_hidden_state(&q, &enc).unwrap();
    let b = last_hidden_state(&loaded, &enc).unwrap();
    assert_eq!(a.data(), b.data());
    let ratio = std::fs::metadata(&int8).unwrap().len() as f64 / std::fs::metadata(&fp32).unwrap().len() as f64;
    let stored = qapi::stored_size_bytes(&q) as f64 / qapi::stored_size_bytes(&g) as f64;
    eprintln!("small BERT int8 file {ratio:.3}x fp32, parameters {stored:.3}x");
    // Small widths carry relatively more per-row scales, biases and LayerNorms than MiniLM.
    assert!(ratio < 0.34 && stored < 0.34, "{ratio:.3} / {stored:.3}");
    std::fs::remove_dir_all(&dir).unwrap();
}
