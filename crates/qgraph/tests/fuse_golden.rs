//! Conv+BN folding against PyTorch's `fuse_conv_bn_eval` (tests/golden/elementwise.*, case
//! `fuse_conv_bn`): the folded weight and bias must be bit-identical.

use qgraph::fuse::fold_batch_norm;
use qgraph::{BatchNormAttrs, Conv2dAttrs, FusedActivation, GraphBuilder};
use qtensor::Tensor;
use safetensors::SafeTensors;
use serde_json::Value as Json;

const JSON: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/golden/elementwise.json"
));
const TENSORS: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/golden/elementwise.safetensors"
));

fn f32_tensor(st: &SafeTensors, name: &str) -> Tensor {
    let v = st.tensor(name).unwrap();
    let data = v
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    Tensor::new(v.shape().to_vec(), data).unwrap()
}

#[test]
fn conv_bn_folding_is_bit_exact() {
    let cases: Json = serde_json::from_str(JSON).unwrap();
    let st = SafeTensors::deserialize(TENSORS).unwrap();
    let case = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["op"] == "fuse_conv_bn")
        .unwrap();
    let t = |k: &str| f32_tensor(&st, case["tensors"][k].as_str().unwrap());
    let conv_w = t("conv_w");
    let (o, c, k) = (conv_w.shape()[0], conv_w.shape()[1], conv_w.shape()[2]);

    let mut b = GraphBuilder::new();
    let x = b.input("x", &[1, c, 8, 8]);
    let y = b.conv2d("conv", x, Conv2dAttrs::new(c, o, k));
    let y = b.batch_norm2d("bn", y, o);
    b.output(y);
    let graph = b.build().unwrap();
    let mut conv = graph.nodes()[1].clone();
    let mut bn = graph.nodes()[2].clone();
    conv.params.insert("weight".into(), conv_w);
    conv.params.insert("bias".into(), t("conv_b"));
    for (local, key) in [
        ("weight", "bn_w"),
        ("bias", "bn_b"),
        ("running_mean", "bn_mean"),
        ("running_var", "bn_var"),
    ] {
        bn.params.insert(local.into(), t(key));
    }
    let attrs = BatchNormAttrs {
        num_features: o,
        eps: case["eps"].as_f64().unwrap() as f32,
        dims: 2,
        activation: FusedActivation::None,
    };
    fold_batch_norm(&mut conv, &bn, &attrs).unwrap();
    let bits = |t: &Tensor| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(conv.param("weight").unwrap()), bits(&t("fused_w")));
    assert_eq!(bits(conv.param("bias").unwrap()), bits(&t("fused_b")));
}
