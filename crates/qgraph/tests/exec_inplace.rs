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
