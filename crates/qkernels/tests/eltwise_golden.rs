//! Element-wise, pooling and activation kernels against PyTorch golden vectors
//! (tests/golden/elementwise.*), bit for bit. The conv+bn folding case of that suite belongs to
//! qgraph and is skipped here.

mod common;

use common::{f, i, nchw_to_nhwc, Golden};
use qkernels::conv::{ActQuant, NhwcShape};
use qkernels::eltwise::{self, ActivationLut, FloatRule, Pool2d, PoolRounding};

fn q(case: &serde_json::Value, p: &str) -> ActQuant {
    ActQuant::new(
        f(case, &format!("{p}_scale")),
        i(case, &format!("{p}_zero_point")) as i32,
    )
    .unwrap()
}

/// PyTorch's element-wise loops run the vector code on the first `len / 128 * 128` elements and
/// the scalar code on the rest (AVX-512 build, 64-byte vectors unrolled twice).
fn vector_part(len: usize) -> usize {
    len / 128 * 128
}

#[test]
fn binary_ops_match_pytorch() {
    let g = Golden::load("elementwise");
    for case in g
        .cases
        .iter()
        .filter(|c| c["op"].as_str().unwrap().starts_with("quantized_add") || c["op"] == "quantized_mul")
    {
        let (a, b, expected) = (g.u8s(case, "a_q"), g.u8s(case, "b_q"), g.u8s(case, "y_q"));
        let (aq, bq, yq) = (q(case, "a"), q(case, "b"), q(case, "y"));
        let op = case["op"].as_str().unwrap();
        let split = vector_part(a.len());
        let mut y = vec![0u8; a.len()];
        if op == "quantized_mul" {
            eltwise::mul(&a, aq, &b, bq, yq, false, &mut y).unwrap();
            assert_eq!(y, expected, "{op}");
            continue;
        }
        let relu = op == "quantized_add_relu";
        let mut tail = vec![0u8; a.len()];
        eltwise::add(&a, aq, &b, bq, yq, relu, FloatRule::Vectorized, &mut y).unwrap();
        eltwise::add(&a, aq, &b, bq, yq, relu, FloatRule::Scalar, &mut tail).unwrap();
        assert_eq!(y[..split], expected[..split], "{op} vector part");
        assert_eq!(tail[split..], expected[split..], "{op} scalar tail");
    }
}

#[test]
fn pooling_and_activations_match_pytorch() {
    let g = Golden::load("elementwise");
    let mut seen = 0;
    for case in &g.cases {
        let op = case["op"].as_str().unwrap();
        if op == "fuse_conv_bn" || op.starts_with("quantized_add") || op == "quantized_mul" {
            continue;
        }
        let shape = g.shape(case, "x_q");
        let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
        let x = nchw_to_nhwc(&g.u8s(case, "x_q"), n, c, h, w);
        let xs = NhwcShape::new(n, h, w, c);
        let yshape = g.shape(case, "y_q");
        let expected = nchw_to_nhwc(&g.u8s(case, "y_q"), yshape[0], yshape[1], yshape[2], yshape[3]);
        let xq = q(case, "x");
        let zp = xq.zero_point;
        // The golden inputs are contiguous NCHW tensors, so PyTorch took its NCHW branches.
        let nchw = PoolRounding::ContiguousNchw;
        let y = match op {
            "quantized_max_pool2d_k3s2p1" => {
                eltwise::max_pool2d(&x, xs, &Pool2d::new(3, 3).with_stride(2, 2).with_padding(1, 1))
                    .unwrap()
                    .0
            }
            "quantized_avg_pool2d_k2s2" => {
                eltwise::avg_pool2d(&x, xs, zp, &Pool2d::new(2, 2), true, None, nchw)
                    .unwrap()
                    .0
            }
            "quantized_adaptive_avg_pool2d_1" => eltwise::adaptive_avg_pool2d(&x, xs, zp, (1, 1), nchw).unwrap().0,
            "quantized_hardswish" => {
                // PyTorch takes the reciprocal of its f64 output scale (0.03 here is not an f32).
                let inv = (1.0 / case["y_scale"].as_f64().unwrap()) as f32;
                let yzp = i(case, "y_zero_point") as i32;
                let lut = ActivationLut::with_inverse(xq, yzp, inv, FloatRule::Vectorized, |v| {
                    v * (v + 3.0).clamp(0.0, 6.0) / 6.0
                })
                .unwrap();
                let mut y = vec![0u8; x.len()];
                lut.apply(&x, &mut y).unwrap();
                y
            }
            "quantized_relu6" => {
                let mut y = vec![0u8; x.len()];
                ActivationLut::relu6(xq).apply(&x, &mut y).unwrap();
                y
            }
            other => panic!("unexpected case {other}"),
        };
        assert_eq!(y, expected, "{op}");
        seen += 1;
    }
    assert_eq!(seen, 5);
}
