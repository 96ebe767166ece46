//! Time per op kind of MiniLM (or a random model of its shape) at batch 1, sequence 128, in
//! fp32 and dynamic int8: `cargo run --release -p qapi --example profile_minilm [reps] [threads]` (one thread unless told).
//! The time of a node is measured from the previous node's end to its own end; each kind is
//! shown as its mean per run and as the sum of its nodes' fastest times.

use std::collections::BTreeMap;
use std::time::Instant;

use qapi::dynamic::DynamicConfig;
use qapi::models::bert::{bert_inputs, build_bert, load_bert, randomize, BertConfig};
use qapi::models::tokenizer::Encoded;
use qgraph::{Graph, Op, OpKind};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let reps: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let threads: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(1);
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
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    for (mode, g) in [("fp32", &graph), ("int8", &int8)] {
        pool.install(|| profile(mode, g, &enc, reps))?;
    }
    Ok(())
}

fn profile(mode: &str, g: &Graph, enc: &Encoded, reps: usize) -> Result<(), qapi::ApiError> {
    // Per node: the sum of its times over the timed runs, and its fastest time (on a shared
    // machine the fastest run of each node is the steadier figure).
    let mut nodes: Vec<(String, f64, f64)> = Vec::new();
    let mut runs = Vec::new();
    for rep in 0..reps + 2 {
        let start = Instant::now();
        let mut last = start;
        let mut i = 0;
        g.run_with(bert_inputs(enc)?, |node, _| {
            let now = Instant::now();
            let t = (now - last).as_secs_f64() * 1e3;
            last = now;
            if i == nodes.len() {
                let kind = match &node.op {
                    Op::Custom(c) => c.kind_name().to_string(),
                    op => op.display_name(),
                };
                nodes.push((kind, 0.0, f64::INFINITY));
            }
            if rep >= 2 {
                nodes[i].1 += t;
                nodes[i].2 = nodes[i].2.min(t);
            }
            i += 1;
            Ok(())
        })?;
        if rep >= 2 {
            runs.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    runs.sort_by(f64::total_cmp);
    let mean = runs.iter().sum::<f64>() / reps as f64;
    println!(
        "{mode}: {mean:.2} ms per run (best run {:.2}, median {:.2}; sum of per-node bests {:.2})",
        runs[0],
        runs[reps / 2],
        nodes.iter().map(|n| n.2).sum::<f64>()
    );
    let mut per_kind: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for (kind, sum, best) in nodes {
        let e = per_kind.entry(kind).or_default();
        e.0 += sum / reps as f64;
        e.1 += best;
    }
    let mut rows: Vec<_> = per_kind.into_iter().collect();
    rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    println!("  {:<32} {:>9} {:>9}", "op", "mean ms", "best ms");
    for (k, (mean, best)) in rows {
        println!("  {k:<32} {mean:9.3} {best:9.3}");
    }
    Ok(())
}
