//! ReLU6 folding into the convolution before it (for static quantization).

use qgraph::{Conv2dAttrs, GraphBuilder, Value};
use qtensor::Tensor;

#[test]
fn relu6_folds_into_conv_and_keeps_outputs() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[1, 2, 5, 5]);
    let c = b.conv2d("conv", x, Conv2dAttrs::new(2, 3, 3).padding(1));
    let r = b.relu6("act", c);
    let shared = b.conv2d("conv2", r, Conv2dAttrs::new(3, 3, 1));
    let r2 = b.relu6("act2", shared);
    let out = b.add("sum", r2, shared);
    b.output(out);
    let mut g = b.build().unwrap();
    for i in 0..g.nodes().len() {
        let node = g.node_mut(qgraph::NodeId(i));
        for t in node.params.values_mut() {
            t.data_mut()
                .iter_mut()
                .enumerate()
                .for_each(|(k, v)| *v = ((k * 7 % 11) as f32 - 5.0) * 0.9);
        }
    }
    let input = || {
        vec![Value::F32(
            Tensor::new([1, 2, 5, 5], (0..50).map(|i| (i as f32 - 25.0) * 0.3).collect()).unwrap(),
        )]
    };
    let before = g.run(input()).unwrap()[0].as_f32().unwrap().clone();
    let report = g.fuse_relu6().unwrap();
    // `conv2` has two readers, so only the first pair folds.
    assert_eq!(report.groups.len(), 1, "{report:?}");
    assert!(g.find("act").is_none() && g.find("act2").is_some());
    assert_eq!(g.node(g.find("conv").unwrap()).op.display_name(), "Conv2d+ReLU6");
    let after = g.run(input()).unwrap()[0].as_f32().unwrap().clone();
    assert_eq!(before, after);
    assert!(
        after.data().iter().any(|&v| v == 12.0 || v > 6.0),
        "the test should exercise the clamp"
    );
}
