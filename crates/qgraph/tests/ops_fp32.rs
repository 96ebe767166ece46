//! Every fp32 op against hand-computed or well-known values on small cases; LSTM and GRU
//! against a hand-rolled step.

use qgraph::{
    Conv2dAttrs, ConvTranspose2dAttrs, FusedActivation, GeluApprox, GraphBuilder, IdTensor, LayerNormAttrs,
    LinearAttrs, Op, Pool2dAttrs, RnnAttrs, UpsampleMode, Value,
};
use qtensor::Tensor;

fn t(shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::new(shape.to_vec(), data.to_vec()).unwrap()
}

/// Runs one op on `inputs` with `params`, returning the output.
fn run(op: Op, inputs: Vec<Value>, params: &[(&str, Tensor)]) -> Tensor {
    let mut b = GraphBuilder::new();
    let ids: Vec<_> = inputs
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::I64(ids) => b.input_ids(&format!("in{i}"), ids.shape()),
            other => b.input(&format!("in{i}"), other.shape()),
        })
        .collect();
    let y = b.node("op", op, &ids);
    b.output(y);
    let mut g = b.build().unwrap();
    for (name, value) in params {
        g.node_mut(y).params.insert(name.to_string(), value.clone());
    }
    g.run(inputs).unwrap().remove(0).into_f32().unwrap()
}

fn run1(op: Op, x: Tensor, params: &[(&str, Tensor)]) -> Tensor {
    run(op, vec![Value::F32(x)], params)
}

fn close(got: &Tensor, want: &[f32], tol: f32) {
    assert_eq!(got.numel(), want.len(), "{:?}", got.shape());
    for (i, (a, b)) in got.data().iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol * (1.0 + b.abs()),
            "element {i}: {a} vs {b} ({:?})",
            got.data()
        );
    }
}

#[test]
fn linear_and_matmul() {
    let op = Op::Linear(LinearAttrs {
        in_features: 3,
        out_features: 2,
        bias: true,
        activation: Default::default(),
    });
    let w = t(&[2, 3], &[1., 2., 3., -1., 0., 1.]);
    let y = run1(
        op.clone(),
        t(&[2, 3], &[1., 1., 1., 0., 2., -1.]),
        &[("weight", w.clone()), ("bias", t(&[2], &[0.5, -0.5]))],
    );
    close(&y, &[6.5, -0.5, 1.5, -1.5], 0.0);
    // Many rows exercise the packed GEMM path as well as the row-dot path.
    let rows = 37;
    let x: Vec<f32> = (0..rows * 3).map(|i| (i % 7) as f32 - 3.0).collect();
    let y = run1(op, t(&[rows, 3], &x), &[("weight", w), ("bias", t(&[2], &[0.5, -0.5]))]);
    let want: Vec<f32> = x
        .chunks(3)
        .flat_map(|r| [r[0] + 2. * r[1] + 3. * r[2] + 0.5, -r[0] + r[2] - 0.5])
        .collect();
    close(&y, &want, 1e-6);

    // [2, 2, 3] @ [3, 2] broadcast over the batch.
    let a = t(&[2, 2, 3], &[1., 0., 0., 0., 1., 0., 1., 1., 1., 2., 0., 1.]);
    let b = t(&[3, 2], &[1., 2., 3., 4., 5., 6.]);
    let y = run(Op::MatMul, vec![Value::F32(a), Value::F32(b)], &[]);
    assert_eq!(y.shape(), &[2, 2, 2]);
    close(&y, &[1., 2., 3., 4., 9., 12., 7., 10.], 0.0);
}

#[test]
fn conv2d_groups_dilation_and_padding() {
    // 1x1 input channel, 3x3 image, 2x2 kernel of ones: sums of windows.
    let x = t(&[1, 1, 3, 3], &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
    let y = run1(
        Op::Conv2d(Conv2dAttrs::new(1, 1, 2)),
        x.clone(),
        &[("weight", t(&[1, 1, 2, 2], &[1.; 4])), ("bias", t(&[1], &[1.]))],
    );
    close(&y, &[13., 17., 25., 29.], 0.0);
    // Padding 1, stride 2, 3x3 kernel of ones.
    let y = run1(
        Op::Conv2d(Conv2dAttrs::new(1, 1, 3).padding(1).stride(2)),
        x.clone(),
        &[("weight", t(&[1, 1, 3, 3], &[1.; 9])), ("bias", t(&[1], &[0.]))],
    );
    close(&y, &[12., 16., 24., 28.], 0.0);
    // Dilation 2 with a 2x2 kernel picks the corners: 1 + 3 + 7 + 9.
    let y = run1(
        Op::Conv2d(Conv2dAttrs::new(1, 1, 2).dilation(2)),
        x.clone(),
        &[("weight", t(&[1, 1, 2, 2], &[1.; 4])), ("bias", t(&[1], &[0.]))],
    );
    close(&y, &[20.], 0.0);
    // Groups: 2 channels, 2 groups, each output scales its own channel (depthwise 1x1).
    let x2 = t(&[1, 2, 1, 2], &[1., 2., 3., 4.]);
    let y = run1(
        Op::Conv2d(Conv2dAttrs::new(2, 2, 1).groups(2)),
        x2.clone(),
        &[("weight", t(&[2, 1, 1, 1], &[2., -1.])), ("bias", t(&[2], &[0., 1.]))],
    );
    close(&y, &[2., 4., -2., -3.], 0.0);
    // Grouped (not depthwise): 4 in, 2 out, 2 groups, out g = sum of its two channels.
    let x4 = t(&[1, 4, 1, 1], &[1., 2., 3., 4.]);
    let y = run1(
        Op::Conv2d(Conv2dAttrs::new(4, 2, 1).groups(2)),
        x4,
        &[("weight", t(&[2, 2, 1, 1], &[1.; 4])), ("bias", t(&[2], &[0.; 2]))],
    );
    close(&y, &[3., 7.], 0.0);
}

/// Direct-loop f64 convolution, NCHW: the definition the blocked im2col path must agree with.
#[allow(clippy::too_many_arguments)]
fn conv_direct(
    x: &Tensor,
    w: &[f32],
    bias: &[f32],
    co: usize,
    k: usize,
    s: usize,
    p: usize,
    d: usize,
    g: usize,
) -> Vec<f32> {
    let [n, c, h, wd] = [x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]];
    let (oh, ow) = (
        (h + 2 * p - d * (k - 1) - 1) / s + 1,
        (wd + 2 * p - d * (k - 1) - 1) / s + 1,
    );
    let (cg, og) = (c / g, co / g);
    let mut y = Vec::with_capacity(n * co * oh * ow);
    for b in 0..n {
        for o in 0..co {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias[o] as f64;
                    for ci in 0..cg {
                        let ch = (o / og) * cg + ci;
                        for i in 0..k {
                            for j in 0..k {
                                let (iy, ix) = (
                                    (oy * s + i * d) as isize - p as isize,
                                    (ox * s + j * d) as isize - p as isize,
                                );
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                    let xv = x.data()[((b * c + ch) * h + iy as usize) * wd + ix as usize];
                                    acc += xv as f64 * w[((o * cg + ci) * k + i) * k + j] as f64;
                                }
                            }
                        }
                    }
                    y.push(acc as f32);
                }
            }
        }
    }
    y
}

#[test]
fn conv2d_blocks_of_output_pixels_match_direct_loops() {
    // Images large enough that the output pixels split into several blocks whose edges fall
    // inside output rows; pointwise, strided, dilated, grouped and depthwise.
    let cases = [
        // (n, c, co, k, stride, pad, dilation, groups, h, w)
        (2, 40, 12, 3, 1, 1, 1, 1, 21, 23),
        (1, 600, 8, 1, 1, 0, 1, 1, 15, 15),
        (1, 24, 10, 3, 2, 1, 1, 2, 33, 29),
        (1, 16, 6, 3, 1, 2, 2, 1, 40, 17),
        (1, 8, 8, 3, 2, 1, 1, 8, 19, 22),
        // A ResNet stem; stride 3 on a narrow image; taps far beyond a 3-wide row.
        (1, 3, 4, 7, 2, 3, 1, 1, 30, 31),
        (1, 5, 3, 5, 3, 2, 1, 1, 9, 4),
        (1, 4, 2, 3, 1, 2, 3, 1, 6, 3),
        // Wide stride-1 images (read as shifted rows of padded planes, without im2col):
        // dilated, grouped, a 5x5 kernel, padding wider than the kernel needs.
        (1, 6, 5, 3, 1, 2, 2, 1, 9, 50),
        (2, 8, 6, 3, 1, 1, 1, 2, 7, 30),
        (1, 3, 4, 5, 1, 2, 1, 1, 12, 45),
        (1, 5, 3, 3, 1, 3, 1, 1, 4, 40),
        (1, 70, 40, 3, 1, 1, 1, 1, 33, 64),
    ];
    for &(n, c, co, k, s, p, d, g, h, wd) in &cases {
        let x = t(
            &[n, c, h, wd],
            &(0..n * c * h * wd)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect::<Vec<_>>(),
        );
        let w: Vec<f32> = (0..co * (c / g) * k * k)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 20.0)
            .collect();
        let bias: Vec<f32> = (0..co).map(|i| i as f32 * 0.1 - 0.3).collect();
        let y = run1(
            Op::Conv2d(Conv2dAttrs::new(c, co, k).stride(s).padding(p).dilation(d).groups(g)),
            x.clone(),
            &[("weight", t(&[co, c / g, k, k], &w)), ("bias", t(&[co], &bias))],
        );
        let want = conv_direct(&x, &w, &bias, co, k, s, p, d, g);
        close(&y, &want, 1e-4);
        // The fused ReLU, applied as each block's rows are written.
        let mut attrs = Conv2dAttrs::new(c, co, k).stride(s).padding(p).dilation(d).groups(g);
        attrs.activation = FusedActivation::Relu;
        let y = run1(
            Op::Conv2d(attrs),
            x.clone(),
            &[("weight", t(&[co, c / g, k, k], &w)), ("bias", t(&[co], &bias))],
        );
        close(&y, &want.iter().map(|v| v.max(0.0)).collect::<Vec<_>>(), 1e-4);
    }
}

#[test]
fn conv_transpose2d() {
    // 2x2 input, 2x2 kernel of ones, stride 2: each input value fills its own 2x2 block.
    let x = t(&[1, 1, 2, 2], &[1., 2., 3., 4.]);
    let y = run1(
        Op::ConvTranspose2d(ConvTranspose2dAttrs::new(1, 1, 2).stride(2)),
        x.clone(),
        &[("weight", t(&[1, 1, 2, 2], &[1.; 4])), ("bias", t(&[1], &[0.5]))],
    );
    assert_eq!(y.shape(), &[1, 1, 4, 4]);
    close(
        &y,
        &[
            1.5, 1.5, 2.5, 2.5, 1.5, 1.5, 2.5, 2.5, 3.5, 3.5, 4.5, 4.5, 3.5, 3.5, 4.5, 4.5,
        ],
        0.0,
    );
    // Stride 1 overlaps: the "full" correlation, centre gets all four.
    let y = run1(
        Op::ConvTranspose2d(ConvTranspose2dAttrs::new(1, 1, 2)),
        x.clone(),
        &[("weight", t(&[1, 1, 2, 2], &[1.; 4])), ("bias", t(&[1], &[0.]))],
    );
    close(&y, &[1., 3., 2., 4., 10., 6., 3., 7., 4.], 0.0);
    // Padding 1 crops the border of that result.
    let y = run1(
        Op::ConvTranspose2d(ConvTranspose2dAttrs::new(1, 1, 3).padding(1)),
        x,
        &[
            ("weight", t(&[1, 1, 3, 3], &[0., 0., 0., 0., 1., 0., 0., 0., 0.])),
            ("bias", t(&[1], &[0.])),
        ],
    );
    close(&y, &[1., 2., 3., 4.], 0.0);
}

/// Direct-loop f64 transposed convolution, NCHW: every input pixel adds `x * w[ic, oc, i, j]` to
/// output pixel `(iy * s + i * d - p, ix * s + j * d - p)`.
fn conv_transpose_direct(x: &Tensor, w: &[f32], bias: Option<&[f32]>, a: &ConvTranspose2dAttrs) -> Vec<f32> {
    let [n, c, h, wd] = [x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]];
    let ([kh, kw], [sh, sw], [ph, pw], [dh, dw]) = (a.kernel, a.stride, a.padding, a.dilation);
    let oh = (h - 1) * sh + dh * (kh - 1) + a.output_padding[0] + 1 - 2 * ph;
    let ow = (wd - 1) * sw + dw * (kw - 1) + a.output_padding[1] + 1 - 2 * pw;
    let co = a.out_channels;
    let (cg, og) = (c / a.groups, co / a.groups);
    let mut y = vec![0f64; n * co * oh * ow];
    for b in 0..n {
        for ic in 0..c {
            for ol in 0..og {
                let oc = ic / cg * og + ol;
                for iy in 0..h {
                    for ix in 0..wd {
                        let xv = x.data()[((b * c + ic) * h + iy) * wd + ix] as f64;
                        for i in 0..kh {
                            for j in 0..kw {
                                let oy = (iy * sh + i * dh) as isize - ph as isize;
                                let ox = (ix * sw + j * dw) as isize - pw as isize;
                                if oy >= 0 && ox >= 0 && (oy as usize) < oh && (ox as usize) < ow {
                                    let wv = w[((ic * og + ol) * kh + i) * kw + j] as f64;
                                    y[((b * co + oc) * oh + oy as usize) * ow + ox as usize] += xv * wv;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    let relu = a.activation == FusedActivation::Relu;
    y.iter()
        .enumerate()
        .map(|(i, &v)| {
            let v = v as f32 + bias.map_or(0.0, |b| b[i / (oh * ow) % co]);
            if relu {
                v.max(0.0)
            } else {
                v
            }
        })
        .collect()
}

#[test]
fn conv_transpose2d_matches_direct_loops() {
    // Non-overlapping layers (kernel = stride: the row-block path, with several blocks on the
    // larger images), and overlapping, padded, dilated ones (the scatter path); with groups,
    // non-square kernels, no bias and a fused ReLU.
    let cases = [
        // (n, c, co, [kh, kw], [sh, sw], pad, dilation, groups, bias, relu, h, w)
        (2, 6, 4, [2, 2], [2, 2], 0, 1, 1, true, false, 7, 5),
        (1, 64, 64, [2, 2], [2, 2], 0, 1, 1, true, true, 30, 30),
        (1, 8, 6, [3, 3], [3, 3], 0, 1, 2, false, true, 9, 11),
        (1, 4, 5, [2, 3], [2, 3], 0, 1, 1, true, false, 40, 13),
        (1, 6, 4, [3, 3], [2, 2], 1, 1, 2, true, true, 8, 7),
        (1, 3, 2, [2, 2], [2, 2], 0, 2, 1, true, false, 5, 6),
    ];
    for &(n, c, co, kernel, stride, p, d, g, has_bias, relu, h, wd) in &cases {
        let mut attrs = ConvTranspose2dAttrs::new(c, co, 1).padding(p).groups(g);
        attrs.kernel = kernel;
        attrs.stride = stride;
        attrs.dilation = [d; 2];
        attrs.bias = has_bias;
        if relu {
            attrs.activation = FusedActivation::Relu;
        }
        let x = t(
            &[n, c, h, wd],
            &(0..n * c * h * wd)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect::<Vec<_>>(),
        );
        let w: Vec<f32> = (0..c * (co / g) * kernel[0] * kernel[1])
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 20.0)
            .collect();
        let bias: Vec<f32> = (0..co).map(|i| i as f32 * 0.1 - 0.3).collect();
        let mut params = vec![("weight", t(&[c, co / g, kernel[0], kernel[1]], &w))];
        if has_bias {
            params.push(("bias", t(&[co], &bias)));
        }
        let want = conv_transpose_direct(&x, &w, has_bias.then_some(&bias[..]), &attrs);
        let y = run1(Op::ConvTranspose2d(attrs), x.clone(), &params);
        close(&y, &want, 1e-4);
    }
}

/// The non-overlapping path keeps the transposed weight with the weight tensor: a second run
/// reuses it, and a weight changed in place between runs is transposed again.
#[test]
fn conv_transpose2d_keeps_its_transposed_weight_until_the_weight_changes() {
    let (c, co, h, wd) = (8, 6, 5, 4);
    let attrs = ConvTranspose2dAttrs::new(c, co, 2).stride(2);
    let x = t(
        &[1, c, h, wd],
        &(0..c * h * wd)
            .map(|i| ((i * 7 % 23) as f32 - 11.0) / 10.0)
            .collect::<Vec<_>>(),
    );
    let w0: Vec<f32> = (0..c * co * 4).map(|i| ((i * 13 % 29) as f32 - 14.0) / 20.0).collect();
    let bias: Vec<f32> = (0..co).map(|i| i as f32 * 0.1).collect();
    let mut b = GraphBuilder::new();
    let input = b.input("x", &[1, c, h, wd]);
    let y = b.node("up", Op::ConvTranspose2d(attrs.clone()), &[input]);
    b.output(y);
    let mut g = b.build().unwrap();
    g.node_mut(y).params.insert("weight".into(), t(&[c, co, 2, 2], &w0));
    g.node_mut(y).params.insert("bias".into(), t(&[co], &bias));
    let once = |g: &qgraph::Graph| {
        g.run(vec![Value::F32(x.clone())])
            .unwrap()
            .remove(0)
            .into_f32()
            .unwrap()
    };
    let want0 = conv_transpose_direct(&x, &w0, Some(&bias), &attrs);
    close(&once(&g), &want0, 1e-4);
    assert!(
        g.node(y).params["weight"].has_derived(),
        "the transposed weight is kept"
    );
    close(&once(&g), &want0, 1e-4);
    let w1: Vec<f32> = w0.iter().map(|v| 0.5 - v).collect();
    g.node_mut(y)
        .params
        .get_mut("weight")
        .unwrap()
        .data_mut()
        .copy_from_slice(&w1);
    close(&once(&g), &conv_transpose_direct(&x, &w1, Some(&bias), &attrs), 1e-4);
}

#[test]
fn norms_and_embedding() {
    let bn = Op::BatchNorm(qgraph::BatchNormAttrs {
        num_features: 2,
        eps: 0.0,
        dims: 2,
        activation: Default::default(),
    });
    let params = [
        ("weight", t(&[2], &[2., 1.])),
        ("bias", t(&[2], &[1., 0.])),
        ("running_mean", t(&[2], &[1., -1.])),
        ("running_var", t(&[2], &[4., 1.])),
    ];
    let y = run1(bn, t(&[1, 2, 1, 2], &[3., 5., 0., 1.]), &params);
    close(&y, &[3., 5., 1., 2.], 1e-7);
    let bn1 = Op::BatchNorm(qgraph::BatchNormAttrs {
        num_features: 2,
        eps: 0.0,
        dims: 1,
        activation: Default::default(),
    });
    close(&run1(bn1, t(&[1, 2], &[3., 0.]), &params), &[3., 1.], 1e-7);

    let ln = Op::LayerNorm(LayerNormAttrs {
        normalized_shape: vec![4],
        eps: 0.0,
        affine: true,
    });
    // mean 2.5, variance 1.25.
    let y = run1(
        ln,
        t(&[1, 4], &[1., 2., 3., 4.]),
        &[
            ("weight", t(&[4], &[1., 1., 2., 1.])),
            ("bias", t(&[4], &[0., 0., 0., 1.])),
        ],
    );
    let s = 1.25f32.sqrt();
    close(&y, &[-1.5 / s, -0.5 / s, 1.0 / s, 1.5 / s + 1.0], 1e-6);

    let emb = Op::Embedding {
        num_embeddings: 3,
        embedding_dim: 2,
    };
    let ids = IdTensor::new([1, 3], vec![2, 0, 2]).unwrap();
    let y = run(
        emb,
        vec![Value::I64(ids)],
        &[("weight", t(&[3, 2], &[0., 1., 10., 11., 20., 21.]))],
    );
    assert_eq!(y.shape(), &[1, 3, 2]);
    close(&y, &[20., 21., 0., 1., 20., 21.], 0.0);
}

#[test]
fn activations() {
    let x = t(&[6], &[-4., -1., 0., 0.5, 3., 7.]);
    close(&run1(Op::Relu, x.clone(), &[]), &[0., 0., 0., 0.5, 3., 7.], 0.0);
    close(&run1(Op::Relu6, x.clone(), &[]), &[0., 0., 0., 0.5, 3., 6.], 0.0);
    close(
        &run1(Op::Hardswish, x.clone(), &[]),
        &[0., -1. / 3., 0., 0.5 * 3.5 / 6., 3., 7.],
        1e-7,
    );
    let sig = |v: f32| 1. / (1. + (-v as f64).exp()) as f32;
    close(
        &run1(Op::Sigmoid, x.clone(), &[]),
        &x.data().iter().map(|&v| sig(v)).collect::<Vec<_>>(),
        1e-6,
    );
    close(
        &run1(Op::Silu, x.clone(), &[]),
        &x.data().iter().map(|&v| v * sig(v)).collect::<Vec<_>>(),
        1e-6,
    );
    close(
        &run1(Op::Tanh, x.clone(), &[]),
        &x.data().iter().map(|&v| (v as f64).tanh() as f32).collect::<Vec<_>>(),
        1e-6,
    );
    // Known GELU values: gelu(1) = 0.8413447, gelu(-1) = -0.1586553; tanh form 0.8411920.
    let g = t(&[3], &[1., -1., 0.]);
    close(
        &run1(Op::Gelu(GeluApprox::Erf), g.clone(), &[]),
        &[0.841_344_7, -0.158_655_3, 0.],
        1e-6,
    );
    close(
        &run1(Op::Gelu(GeluApprox::Tanh), g, &[]),
        &[0.841_192, -0.158_808, 0.],
        1e-5,
    );
    // Softmax of [0, ln 3] is [0.25, 0.75], along the last dim of each row.
    let y = run1(Op::Softmax { dim: -1 }, t(&[2, 2], &[0., 3f32.ln(), 5., 5.]), &[]);
    close(&y, &[0.25, 0.75, 0.5, 0.5], 1e-6);
    let y = run1(Op::Softmax { dim: 0 }, t(&[2, 1], &[0., 3f32.ln()]), &[]);
    close(&y, &[0.25, 0.75], 1e-6);
    close(&run1(Op::Dropout { p: 0.5 }, x.clone(), &[]), x.data(), 0.0);
}

/// Max pooling by the row-major window scan: the first maximal element, or the last NaN.
fn max_pool_scan(x: &Tensor, k: [usize; 2], s: [usize; 2], p: [usize; 2], oh: usize, ow: usize) -> Vec<f32> {
    let (planes, h, w) = (x.shape()[0] * x.shape()[1], x.shape()[2], x.shape()[3]);
    let mut out = Vec::new();
    for plane in x.data().chunks(h * w).take(planes) {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut m = f32::NEG_INFINITY;
                for ky in 0..k[0] {
                    for kx in 0..k[1] {
                        let (iy, ix) = (
                            (oy * s[0] + ky) as isize - p[0] as isize,
                            (ox * s[1] + kx) as isize - p[1] as isize,
                        );
                        if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                            let v = plane[iy as usize * w + ix as usize];
                            if v > m || v.is_nan() {
                                m = v;
                            }
                        }
                    }
                }
                out.push(m);
            }
        }
    }
    out
}

#[test]
fn max_pool_matches_the_window_scan_bit_for_bit() {
    // Values with many ties (so the first maximum is what counts), both zeros, infinities and
    // NaNs of different payloads (so the last NaN is what counts).
    let special = [
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::from_bits(0x7fc0_0001),
    ];
    for (i, &(k, s, p, h, w)) in [
        (3, 2, 1, 13, 11),
        (2, 2, 0, 8, 9),
        (3, 1, 1, 5, 7),
        (5, 3, 2, 12, 4),
        (1, 1, 0, 3, 3),
    ]
    .iter()
    .enumerate()
    {
        let data: Vec<f32> = (0..2 * 3 * h * w)
            .map(|j| {
                let r = (j * 7919 + i * 31) % 97;
                if r < 6 {
                    special[r]
                } else {
                    (r % 5) as f32 - 2.0
                }
            })
            .collect();
        let x = t(&[2, 3, h, w], &data);
        let y = run1(Op::MaxPool2d(Pool2dAttrs::new(k, s, p)), x.clone(), &[]);
        let (oh, ow) = (y.shape()[2], y.shape()[3]);
        let want = max_pool_scan(&x, [k, k], [s, s], [p, p], oh, ow);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(y.data()),
            bits(&want),
            "kernel {k} stride {s} padding {p} on {h}x{w}"
        );
    }
}

#[test]
fn pooling_and_upsample() {
    let x = t(&[1, 1, 4, 4], &(1..=16).map(|v| v as f32).collect::<Vec<_>>());
    close(
        &run1(Op::MaxPool2d(Pool2dAttrs::new(2, 2, 0)), x.clone(), &[]),
        &[6., 8., 14., 16.],
        0.0,
    );
    close(
        &run1(Op::AvgPool2d(Pool2dAttrs::new(2, 2, 0)), x.clone(), &[]),
        &[3.5, 5.5, 11.5, 13.5],
        0.0,
    );
    // Padding 1, kernel 3, stride 2 (MobileNet/ResNet stem): corner windows hold padding.
    let y = run1(Op::MaxPool2d(Pool2dAttrs::new(3, 2, 1)), x.clone(), &[]);
    close(&y, &[6., 8., 14., 16.], 0.0);
    let y = run1(Op::AvgPool2d(Pool2dAttrs::new(3, 2, 1)), x.clone(), &[]);
    close(
        &y,
        &[
            (1. + 2. + 5. + 6.) / 9.,
            (2. + 3. + 4. + 6. + 7. + 8.) / 9.,
            (5. + 6. + 9. + 10. + 13. + 14.) / 9.,
            (6. + 7. + 8. + 10. + 11. + 12. + 14. + 15. + 16.) / 9.,
        ],
        1e-6,
    );
    let mut excl = Pool2dAttrs::new(3, 2, 1);
    excl.count_include_pad = false;
    let y = run1(Op::AvgPool2d(excl), x.clone(), &[]);
    close(&t(&[1], &y.data()[..1]), &[3.5], 1e-6);
    close(
        &run1(Op::AdaptiveAvgPool2d { output: [1, 1] }, x.clone(), &[]),
        &[8.5],
        0.0,
    );
    // 4 -> 3 windows: [0, 2), [1, 3), [2, 4).
    let row = t(&[1, 1, 1, 4], &[1., 2., 3., 4.]);
    close(
        &run1(Op::AdaptiveAvgPool2d { output: [1, 3] }, row, &[]),
        &[1.5, 2.5, 3.5],
        0.0,
    );

    let small = t(&[1, 1, 2, 2], &[1., 2., 3., 4.]);
    let y = run1(
        Op::Upsample {
            scale: [2, 2],
            mode: UpsampleMode::Nearest,
        },
        small.clone(),
        &[],
    );
    close(
        &y,
        &[1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.],
        0.0,
    );
    // Bilinear, align_corners = false (PyTorch): first row 1, 1.25, 1.75, 2.
    let y = run1(
        Op::Upsample {
            scale: [2, 2],
            mode: UpsampleMode::Bilinear { align_corners: false },
        },
        small.clone(),
        &[],
    );
    close(&t(&[4], &y.data()[..4]), &[1., 1.25, 1.75, 2.], 1e-6);
    close(&t(&[4], &y.data()[4..8]), &[1.5, 1.75, 2.25, 2.5], 1e-6);
    // align_corners = true: 1, 4/3, 5/3, 2.
    let y = run1(
        Op::Upsample {
            scale: [2, 2],
            mode: UpsampleMode::Bilinear { align_corners: true },
        },
        small,
        &[],
    );
    close(&t(&[4], &y.data()[..4]), &[1., 4. / 3., 5. / 3., 2.], 1e-6);
}

#[test]
fn elementwise_and_layout() {
    let a = t(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
    let row = t(&[3], &[10., 20., 30.]);
    let col = t(&[2, 1], &[2., 3.]);
    close(
        &run(Op::Add, vec![a.clone().into(), row.into()], &[]),
        &[11., 22., 33., 14., 25., 36.],
        0.0,
    );
    close(
        &run(Op::Mul, vec![a.clone().into(), col.into()], &[]),
        &[2., 4., 6., 12., 15., 18.],
        0.0,
    );
    let y = run(
        Op::Cat { dim: 1 },
        vec![a.clone().into(), t(&[2, 1], &[7., 8.]).into()],
        &[],
    );
    assert_eq!(y.shape(), &[2, 4]);
    close(&y, &[1., 2., 3., 7., 4., 5., 6., 8.], 0.0);
    let y = run(
        Op::Cat { dim: 0 },
        vec![a.clone().into(), t(&[1, 3], &[7., 8., 9.]).into()],
        &[],
    );
    close(&y, &[1., 2., 3., 4., 5., 6., 7., 8., 9.], 0.0);
    let y = run1(Op::Permute { dims: vec![1, 0] }, a.clone(), &[]);
    assert_eq!(y.shape(), &[3, 2]);
    close(&y, &[1., 4., 2., 5., 3., 6.], 0.0);
    let x3 = t(&[2, 3, 2], &(0..12).map(|v| v as f32).collect::<Vec<_>>());
    let y = run1(Op::Permute { dims: vec![2, 0, 1] }, x3.clone(), &[]);
    close(&y, &[0., 2., 4., 6., 8., 10., 1., 3., 5., 7., 9., 11.], 0.0);
    assert_eq!(
        run1(
            Op::Flatten {
                start_dim: 1,
                end_dim: -1
            },
            x3.clone(),
            &[]
        )
        .shape(),
        &[2, 6]
    );
    let y = run1(Op::Reshape { shape: vec![3, -1] }, x3, &[]);
    assert_eq!(y.shape(), &[3, 4]);
    close(&y, &(0..12).map(|v| v as f32).collect::<Vec<_>>(), 0.0);
}

fn sigmoid(v: f32) -> f32 {
    1. / (1. + (-v).exp())
}

fn rnn_params(gates: usize, h: usize, i: usize, layers: usize) -> Vec<(String, Tensor)> {
    let mut seed = 1u32;
    let mut next = move || {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        ((seed >> 8) % 1000) as f32 / 1000.0 - 0.5
    };
    let mut p = Vec::new();
    for l in 0..layers {
        let inp = if l == 0 { i } else { h };
        for (name, shape) in [
            (format!("weight_ih_l{l}"), vec![gates * h, inp]),
            (format!("weight_hh_l{l}"), vec![gates * h, h]),
            (format!("bias_ih_l{l}"), vec![gates * h]),
            (format!("bias_hh_l{l}"), vec![gates * h]),
        ] {
            let n = shape.iter().product();
            p.push((name, Tensor::new(shape, (0..n).map(|_| next()).collect()).unwrap()));
        }
    }
    p
}

/// `W v + b` for a row-major weight.
fn affine(w: &Tensor, v: &[f32], b: &Tensor) -> Vec<f32> {
    let k = v.len();
    (0..w.shape()[0])
        .map(|r| b.data()[r] + (0..k).map(|c| w.data()[r * k + c] * v[c]).sum::<f32>())
        .collect()
}

/// One sequence (batch 1), stacked layers, hand-rolled PyTorch cell steps.
fn hand_rnn(lstm: bool, params: &[(String, Tensor)], xs: &[Vec<f32>], h: usize, layers: usize) -> Vec<Vec<f32>> {
    let get = |n: String| &params.iter().find(|(k, _)| *k == n).unwrap().1;
    let mut seq = xs.to_vec();
    for l in 0..layers {
        let (wi, wh, bi, bh) = (
            get(format!("weight_ih_l{l}")),
            get(format!("weight_hh_l{l}")),
            get(format!("bias_ih_l{l}")),
            get(format!("bias_hh_l{l}")),
        );
        let (mut hs, mut cs) = (vec![0.0; h], vec![0.0; h]);
        let mut out = Vec::new();
        for x in &seq {
            let gi = affine(wi, x, bi);
            let gh = affine(wh, &hs, bh);
            for j in 0..h {
                if lstm {
                    let i = sigmoid(gi[j] + gh[j]);
                    let f = sigmoid(gi[h + j] + gh[h + j]);
                    let g = (gi[2 * h + j] + gh[2 * h + j]).tanh();
                    let o = sigmoid(gi[3 * h + j] + gh[3 * h + j]);
                    cs[j] = f * cs[j] + i * g;
                    hs[j] = o * cs[j].tanh();
                } else {
                    let r = sigmoid(gi[j] + gh[j]);
                    let z = sigmoid(gi[h + j] + gh[h + j]);
                    let n = (gi[2 * h + j] + r * gh[2 * h + j]).tanh();
                    hs[j] = (1. - z) * n + z * hs[j];
                }
            }
            out.push(hs.clone());
        }
        seq = out;
    }
    seq
}

#[test]
fn lstm_and_gru_match_hand_rolled_steps() {
    let (i, h, layers, steps) = (3, 4, 2, 5);
    let xs: Vec<Vec<f32>> = (0..steps)
        .map(|s| (0..i).map(|k| ((s * i + k) as f32 * 0.37).sin()).collect())
        .collect();
    for lstm in [true, false] {
        let gates = if lstm { 4 } else { 3 };
        let params = rnn_params(gates, h, i, layers);
        let want: Vec<f32> = hand_rnn(lstm, &params, &xs, h, layers).concat();
        for batch_first in [false, true] {
            let attrs = RnnAttrs {
                input_size: i,
                hidden_size: h,
                num_layers: layers,
                bias: true,
                batch_first,
            };
            let op = if lstm { Op::Lstm(attrs) } else { Op::Gru(attrs) };
            // Batch of 2 identical sequences: [T, 2, I] or [2, T, I].
            let x = if batch_first {
                t(&[2, steps, i], &[xs.concat(), xs.concat()].concat())
            } else {
                t(
                    &[steps, 2, i],
                    &xs.iter()
                        .flat_map(|v| [v.clone(), v.clone()])
                        .flatten()
                        .collect::<Vec<_>>(),
                )
            };
            let p: Vec<(&str, Tensor)> = params.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            let y = run1(op, x, &p);
            let got: Vec<f32> = if batch_first {
                y.data()[..steps * h].to_vec()
            } else {
                y.data().chunks(h).step_by(2).flatten().copied().collect()
            };
            close(&t(&[got.len()], &got), &want, 1e-5);
        }
    }
}

#[test]
fn convolutions_run_concurrently_on_one_thread_pool() {
    // Convolutions called from several tasks of one pool at once (each block uses its thread's
    // scratch buffer) give the same values as a lone call.
    let (c, co, hw) = (32, 64, 48);
    let x = t(
        &[1, c, hw, hw],
        &(0..c * hw * hw)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect::<Vec<_>>(),
    );
    let w: Vec<f32> = (0..co * c * 9).map(|i| ((i * 13 % 29) as f32 - 14.0) / 20.0).collect();
    let bias: Vec<f32> = (0..co).map(|i| i as f32 * 0.1 - 0.3).collect();
    let conv = || {
        run1(
            Op::Conv2d(Conv2dAttrs::new(c, co, 3).padding(1)),
            x.clone(),
            &[("weight", t(&[co, c, 3, 3], &w)), ("bias", t(&[co], &bias))],
        )
    };
    let alone = conv();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    let results: Vec<Tensor> = pool.install(|| {
        use rayon::prelude::*;
        (0..24).into_par_iter().map(|_| conv()).collect()
    });
    for y in &results {
        assert_eq!(y.data(), alone.data());
    }
}
