//! Time per op kind of MiniLM (or a random model of its shape) at batch 1, sequence 128, in
//! fp32 and dynamic int8: `cargo run --release -p qapi --example profile_minilm [reps]`.
//! The time of a node is measured from the previous node's end to its own end.

use std::collections::BTreeMap;
use std::time::Instant;

use qapi::dynamic::DynamicConfig;
use qapi::models::bert::{bert_inputs, build_bert, load_bert, randomize, BertConfig};
use qapi::models::tokenizer::Encoded;
use qgraph::{Graph, Op, OpKind};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let reps: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let root = std::env::var("QFORGE_MODELS").unwrap_or_else(|_| "target/models".into());
    let (graph, config) = match load_bert(format!("{root}/all-MiniLM-L6-v2")) {
        Ok(loaded) => loaded,
        Err(_) => {
            let config = BertConfig::minilm_l6();
            let mut g = build_bert(&config, "")?;
            randomize(&mut g, 1);
            (g, config)
        }
    };
    let seq = 128;
    let enc = Encoded {
        batch: 1,
        seq,
        input_ids: (0..seq)
            .map(|i| ((i * 7919 + 101) % config.vocab_size) as i64)
            .collect(),
        attention_mask: vec![1; seq],
        token_type_ids: vec![0; seq],
    };
    let (int8, _) = qapi::quantize_dynamic(&graph, &[OpKind::Linear, OpKind::Embedding], DynamicConfig::qforge())?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    for (mode, g) in [("fp32", &graph), ("int8", &int8)] {
        pool.install(|| profile(mode, g, &enc, reps))?;
    }
    Ok(())
}

fn profile(mode: &str, g: &Graph, enc: &Encoded, reps: usize) -> Result<(), qapi::ApiError> {
    let mut per_kind: BTreeMap<String, f64> = BTreeMap::new();
    let mut total = 0.0;
    for rep in 0..reps + 2 {
        let start = Instant::now();
        let mut last = start;
        let mut times = Vec::new();
        g.run_with(bert_inputs(enc)?, |node, _| {
            let now = Instant::now();
            let kind = match &node.op {
                Op::Custom(c) => c.kind_name().to_string(),
                op => op.display_name(),
            };
            times.push((kind, (now - last).as_secs_f64() * 1e3));
            last = now;
            Ok(())
        })?;
        if rep >= 2 {
            total += start.elapsed().as_secs_f64() * 1e3;
            for (k, t) in times {
                *per_kind.entry(k).or_default() += t;
            }
        }
    }
    println!("{mode}: {:.2} ms per run", total / reps as f64);
    let mut rows: Vec<_> = per_kind.into_iter().collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (k, t) in rows {
        println!("  {k:<32} {:7.3} ms", t / reps as f64);
    }
    Ok(())
}
