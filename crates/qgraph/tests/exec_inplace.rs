//! Element-wise ops that overwrite the buffer of their input (when they are its last reader)
//! give the same bits as the copying path, and never overwrite a value someone still reads.

use qgraph::{ops, GeluApprox, GraphBuilder, Value};
use qtensor::Tensor;

#[test]
fn in_place_ops_match_the_copying_ops_and_leave_shared_values_intact() {
    let (rows, d) = (3, 8);
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[rows, d]);
    // `x` has three readers: only the last (the Add) may take its buffer.
    let g = b.gelu("gelu", x, GeluApprox::Erf);
    let r = b.relu("relu", x);
    let s = b.add("sum", g, r);
    let y = b.add("residual", s, x);
    let n = b.layer_norm("norm", y, &[d], 1e-5);
    b.output(n);
    b.output(g);
    let mut graph = b.build().unwrap();
    let norm = graph.find("norm").unwrap();
    let weight = Tensor::new([d], (0..d).map(|i| 0.5 + i as f32 * 0.1).collect()).unwrap();
    let bias = Tensor::new([d], (0..d).map(|i| i as f32 * -0.05).collect()).unwrap();
    graph.node_mut(norm).params.insert("weight".into(), weight);
    graph.node_mut(norm).params.insert("bias".into(), bias);

    let data: Vec<f32> = (0..rows * d).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
    let input = Value::F32(Tensor::new([rows, d], data).unwrap());
    let out = graph.run(vec![input.clone()]).unwrap();

    // The same nodes through the copying forward, one by one.
    let mut values = vec![input];
    for node in graph.nodes().iter().skip(1) {
        let args: Vec<&Value> = node.inputs.iter().map(|id| &values[id.0]).collect();
        let v = ops::forward(node, &args).unwrap();
        values.push(v);
    }
    let want_norm = values[graph.find("norm").unwrap().0].as_f32().unwrap();
    let want_gelu = values[graph.find("gelu").unwrap().0].as_f32().unwrap();
    assert_eq!(out[0].as_f32().unwrap().data(), want_norm.data());
    assert_eq!(out[1].as_f32().unwrap().data(), want_gelu.data());
}

#[test]
fn batch_norm_and_concatenation_in_place_match_the_copying_ops() {
    // `bn_2` last-reads its input (in place), `bn` does not; the first Cat joins whole tensors
    // on channels (appended to its first input's buffer), the second joins batch-2 tensors
    // (copied), and the first input of the third is still read later (copied).
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[1, 3, 4, 5]);
    let z = b.input("z", &[2, 2, 4, 5]);
    let bn = b.batch_norm2d("bn", x, 3);
    let r = b.relu("relu", bn);
    let joined = b.cat("cat", &[r, x, bn], 1);
    let pair = b.cat("cat_batch", &[z, z], 1);
    let kept = b.cat("cat_kept", &[joined, x], 1);
    let again = b.relu("relu_2", joined);
    let fresh = b.relu("relu_3", x);
    let normed = b.batch_norm2d("bn_2", fresh, 3);
    for out in [kept, pair, again, normed] {
        b.output(out);
    }
    let mut graph = b.build().unwrap();
    let per_channel = |base: f32| Tensor::new([3], (0..3).map(|i| base + i as f32 * 0.25).collect()).unwrap();
    for bn in ["bn", "bn_2"] {
        let id = graph.find(bn).unwrap();
        for (name, base) in [
            ("weight", 0.8),
            ("bias", -0.1),
            ("running_mean", 0.3),
            ("running_var", 1.5),
        ] {
            graph.node_mut(id).params.insert(name.into(), per_channel(base));
        }
    }
    let x_data: Vec<f32> = (0..60).map(|i| (i as f32 * 0.41).sin() * 2.0).collect();
    let z_data: Vec<f32> = (0..80).map(|i| (i as f32 * 0.23).cos()).collect();
    let inputs = vec![
        Value::F32(Tensor::new([1, 3, 4, 5], x_data).unwrap()),
        Value::F32(Tensor::new([2, 2, 4, 5], z_data).unwrap()),
    ];
    let out = graph.run(inputs.clone()).unwrap();

    let mut values = inputs;
    for node in graph.nodes().iter().skip(2) {
        let args: Vec<&Value> = node.inputs.iter().map(|id| &values[id.0]).collect();
        let v = ops::forward(node, &args).unwrap();
        values.push(v);
    }
    for (got, name) in out.iter().zip(["cat_kept", "cat_batch", "relu_2", "bn_2"]) {
        let want = values[graph.find(name).unwrap().0].as_f32().unwrap();
        assert_eq!(got.as_f32().unwrap().shape(), want.shape(), "{name}");
        assert_eq!(got.as_f32().unwrap().data(), want.data(), "{name}");
    }
}
