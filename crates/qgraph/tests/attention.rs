//! Attention and position ids against a naive per-element reference (HF BertSelfAttention).

use qgraph::{GraphBuilder, IdTensor, Value};
use qtensor::Tensor;

fn pseudo(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) % 1000) as f32 / 250.0 - 2.0)
        .collect()
}

/// `dims` = (batch, seq, hidden, heads).
fn naive(q: &[f32], k: &[f32], v: &[f32], mask: &[i64], dims: (usize, usize, usize, usize)) -> Vec<f32> {
    let (b, s, hidden, heads) = dims;
    let dh = hidden / heads;
    let mut y = vec![0.0f32; b * s * hidden];
    for bi in 0..b {
        for h in 0..heads {
            for i in 0..s {
                let at = |t: &[f32], pos: usize, d: usize| t[(bi * s + pos) * hidden + h * dh + d] as f64;
                let scores: Vec<f64> = (0..s)
                    .map(|j| {
                        let dot: f64 = (0..dh).map(|d| at(q, i, d) * at(k, j, d)).sum();
                        dot / (dh as f64).sqrt() + (1.0 - mask[bi * s + j] as f64) * f32::MIN as f64
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
                let sum: f64 = e.iter().sum();
                for d in 0..dh {
                    let o: f64 = (0..s).map(|j| e[j] / sum * at(v, j, d)).sum();
                    y[(bi * s + i) * hidden + h * dh + d] = o as f32;
                }
            }
        }
    }
    y
}

#[test]
fn attention_matches_naive_reference_with_padding() {
    let (b, s, hidden, heads) = (2, 5, 12, 3);
    let mut g = GraphBuilder::new();
    let q = g.input("q", &[b, s, hidden]);
    let k = g.input("k", &[b, s, hidden]);
    let v = g.input("v", &[b, s, hidden]);
    let m = g.input_ids("mask", &[b, s]);
    let y = g.attention("attn", [q, k, v, m], heads, hidden);
    g.output(y);
    let graph = g.build().unwrap();
    let n = b * s * hidden;
    let (qd, kd, vd) = (pseudo(n, 1), pseudo(n, 2), pseudo(n, 3));
    let mask = vec![1, 1, 1, 1, 1, 1, 1, 1, 0, 0];
    let out = graph
        .run(vec![
            Value::F32(Tensor::new([b, s, hidden], qd.clone()).unwrap()),
            Value::F32(Tensor::new([b, s, hidden], kd.clone()).unwrap()),
            Value::F32(Tensor::new([b, s, hidden], vd.clone()).unwrap()),
            Value::I64(IdTensor::new([b, s], mask.clone()).unwrap()),
        ])
        .unwrap();
    let want = naive(&qd, &kd, &vd, &mask, (b, s, hidden, heads));
    let got = out[0].as_f32().unwrap();
    assert_eq!(got.shape(), &[b, s, hidden]);
    for (i, (a, w)) in got.data().iter().zip(&want).enumerate() {
        assert!((a - w).abs() < 1e-5, "element {i}: {a} vs {w}");
    }
}

#[test]
fn packed_qkv_gives_the_same_bits_as_separate_inputs() {
    let (b, s, hidden, heads) = (2, 5, 12, 3);
    let n = b * s * hidden;
    let (qd, kd, vd) = (pseudo(n, 1), pseudo(n, 2), pseudo(n, 3));
    let mask = IdTensor::new([b, s], vec![1, 1, 1, 1, 1, 1, 1, 1, 0, 0]).unwrap();
    let mut g = GraphBuilder::new();
    let ins = ["q", "k", "v"].map(|name| g.input(name, &[b, s, hidden]));
    let m = g.input_ids("mask", &[b, s]);
    let y = g.attention("attn", [ins[0], ins[1], ins[2], m], heads, hidden);
    g.output(y);
    let separate = g.build().unwrap();
    let mut g = GraphBuilder::new();
    let qkv = g.input("qkv", &[b, s, 3 * hidden]);
    let m = g.input_ids("mask", &[b, s]);
    let y = g.node(
        "attn",
        qgraph::Op::Attention(qgraph::AttentionAttrs {
            num_heads: heads,
            hidden_size: hidden,
        }),
        &[qkv, m],
    );
    g.output(y);
    let packed = g.build().unwrap();
    // Row t of the packed input is q[t] | k[t] | v[t].
    let rows: Vec<f32> = (0..b * s)
        .flat_map(|t| {
            [&qd, &kd, &vd]
                .into_iter()
                .flat_map(move |x| x[t * hidden..(t + 1) * hidden].to_vec())
        })
        .collect();
    let f = |d: &[f32], w: usize| Value::F32(Tensor::new([b, s, w], d.to_vec()).unwrap());
    let want = separate
        .run(vec![
            f(&qd, hidden),
            f(&kd, hidden),
            f(&vd, hidden),
            Value::I64(mask.clone()),
        ])
        .unwrap();
    let got = packed.run(vec![f(&rows, 3 * hidden), Value::I64(mask)]).unwrap();
    assert_eq!(got[0].as_f32().unwrap(), want[0].as_f32().unwrap());
    // A packed input of the wrong width is rejected.
    let mut g = GraphBuilder::new();
    let qkv = g.input("qkv", &[b, s, 2 * hidden]);
    let m = g.input_ids("mask", &[b, s]);
    let attrs = qgraph::AttentionAttrs {
        num_heads: heads,
        hidden_size: hidden,
    };
    let y = g.node("attn", qgraph::Op::Attention(attrs), &[qkv, m]);
    g.output(y);
    assert!(g.build().unwrap_err().to_string().contains("packed"));
}

#[test]
fn attention_rejects_bad_shapes() {
    let mut g = GraphBuilder::new();
    let q = g.input("q", &[1, 4, 12]);
    let k = g.input("k", &[1, 4, 12]);
    let m = g.input_ids("mask", &[1, 3]);
    let y = g.attention("attn", [q, k, k, m], 3, 12);
    g.output(y);
    let err = g.build().unwrap_err().to_string();
    assert!(err.contains("attn") && err.contains("mask"), "{err}");

    let mut g = GraphBuilder::new();
    let q = g.input("q", &[1, 4, 12]);
    let m = g.input_ids("mask", &[1, 4]);
    let y = g.attention("attn", [q, q, q, m], 5, 12);
    g.output(y);
    assert!(g.build().unwrap_err().to_string().contains("multiple"));
}

#[test]
fn position_ids_count_along_the_sequence() {
    let mut g = GraphBuilder::new();
    let ids = g.input_ids("ids", &[2, 3]);
    let p = g.position_ids("pos", ids);
    let e = g.embedding("emb", p, 4, 2);
    g.output(p);
    g.output(e);
    let mut graph = g.build().unwrap();
    let id = graph.find("emb").unwrap();
    graph.node_mut(id).params.insert(
        "weight".into(),
        Tensor::new([4, 2], (0..8).map(|i| i as f32).collect()).unwrap(),
    );
    let out = graph
        .run(vec![Value::I64(IdTensor::new([2, 3], vec![7, 8, 9, 7, 8, 9]).unwrap())])
        .unwrap();
    assert_eq!(
        out[0],
        Value::I64(IdTensor::new([2, 3], vec![0, 1, 2, 0, 1, 2]).unwrap())
    );
    assert_eq!(
        out[1].as_f32().unwrap().data(),
        &[0., 1., 2., 3., 4., 5., 0., 1., 2., 3., 4., 5.]
    );
}

#[test]
fn attention_matches_the_reference_at_tiled_sizes_for_every_thread_count() {
    // Head sizes 32 (one full column tile) and 20 (a 16-wide tile plus single columns); 37
    // tokens leave partial row blocks; batch item 1 has padding.
    for (hidden, heads) in [(96, 3), (40, 2)] {
        let (b, s) = (2, 37);
        let n = b * s * hidden;
        let (qd, kd, vd) = (pseudo(n, 4), pseudo(n, 5), pseudo(n, 6));
        let mask: Vec<i64> = (0..b * s).map(|i| i64::from(i < s || i % s < 30)).collect();
        let mut g = GraphBuilder::new();
        let ins = ["q", "k", "v"].map(|name| g.input(name, &[b, s, hidden]));
        let m = g.input_ids("mask", &[b, s]);
        let y = g.attention("attn", [ins[0], ins[1], ins[2], m], heads, hidden);
        g.output(y);
        let graph = g.build().unwrap();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let f = |d: &[f32]| Value::F32(Tensor::new([b, s, hidden], d.to_vec()).unwrap());
                let mask = Value::I64(IdTensor::new([b, s], mask.clone()).unwrap());
                graph.run(vec![f(&qd), f(&kd), f(&vd), mask]).unwrap().remove(0)
            })
        };
        let one = run(1);
        let got = one.as_f32().unwrap();
        for threads in [2, 3] {
            assert_eq!(
                run(threads).as_f32().unwrap(),
                got,
                "{threads} threads, hidden {hidden}"
            );
        }
        let want = naive(&qd, &kd, &vd, &mask, (b, s, hidden, heads));
        for (i, (a, w)) in got.data().iter().zip(&want).enumerate() {
            assert!((a - w).abs() < 1e-5, "hidden {hidden}, element {i}: {a} vs {w}");
        }
    }
}
