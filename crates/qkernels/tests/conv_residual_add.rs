//! A residual add fused into the convolution that feeds it (`PackedConv2d::forward_add`): on
//! every convolution path and every element-wise path this CPU runs, on 1, 2 and 3 threads, the
//! bytes equal the reference convolution followed by the portable `eltwise::add_on` with the
//! convolution's output as the first or the second operand. Geometries cover ResNet-style 3x3
//! blocks (padding, stride 2), MobileNetV2-style 1x1 projections, depthwise layers, and
//! `c_out` that is not a multiple of 16; bad operands give errors.

mod common;

use proptest::prelude::*;
use qkernels::conv::{
    ActQuant, Conv2dGeometry, ConvPath, ConvWeightQuant, FusedActivation, NhwcShape, PackedConv2d, ResidualAdd,
};
use qkernels::eltwise::{add_on, AddOperand, EltwisePath, FloatRule};

fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

/// On a CPU with AVX-512 VNNI a 3x3 ResNet block convolution adds its rows inside the direct
/// kernel, so the property test below meets the in-row add and not only the whole-output one.
#[test]
fn resnet_block_convolution_adds_in_rows_where_the_cpu_has_the_direct_kernel() {
    let g = Conv2dGeometry::new(64, 64, (3, 3)).with_padding(1, 1);
    let conv = PackedConv2d::new(
        g,
        &vec![1i8; 64 * g.depth()],
        ConvWeightQuant::per_tensor(0.01, 0).unwrap(),
        None,
    )
    .unwrap();
    assert_eq!(conv.adds_in_rows(), conv.default_path() == ConvPath::Direct);
    assert_eq!(conv.adds_in_rows(), common::direct_kernel_is_default());
}

#[test]
fn mismatched_operands_are_errors() {
    let g = Conv2dGeometry::new(4, 20, (3, 3)).with_padding(1, 1);
    let conv = PackedConv2d::new(
        g,
        &vec![3i8; 20 * g.depth()],
        ConvWeightQuant::per_tensor(0.01, 0).unwrap(),
        None,
    )
    .unwrap();
    let xs = NhwcShape::new(1, 5, 7, 4);
    let x = vec![9u8; xs.len()];
    let q = ActQuant::new(0.1, 3).unwrap();
    let ys = conv.output_shape(xs).unwrap();
    let skip = vec![1u8; ys.len()];
    fn add(skip: &[u8], skip_shape: NhwcShape) -> ResidualAdd<'_> {
        let q = ActQuant::new(0.1, 3).unwrap();
        ResidualAdd {
            skip,
            skip_shape,
            skip_q: q,
            conv_operand: AddOperand::First,
            y_q: q,
            relu: false,
            rule: FloatRule::Vectorized,
        }
    }
    for path in conv.paths() {
        let other_shape = NhwcShape::new(1, 5, 7, 16);
        let err = conv
            .forward_add_on(
                path,
                EltwisePath::Portable,
                &x,
                xs,
                q,
                q,
                FusedActivation::None,
                &add(&skip[..5 * 7 * 16], other_shape),
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("residual operand") && err.contains("must match"), "{err}");
        let err = conv
            .forward_add_on(
                path,
                EltwisePath::Portable,
                &x,
                xs,
                q,
                q,
                FusedActivation::None,
                &add(&skip[1..], ys),
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("residual operand"), "{err}");
    }
    // A wrong input length is refused before anything runs.
    let err = conv
        .forward_add(&x[1..], xs, q, q, FusedActivation::None, &add(&skip, ys))
        .unwrap_err();
    assert!(err.to_string().contains("input"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn fused_add_matches_convolution_then_add(
        kind in 0u8..3, c_in in 1usize..40, c_out in prop_oneof![Just(16usize), Just(32), 1usize..70],
        stride in 1usize..3, h in 1usize..10, w in 1usize..20, n in 1usize..3,
        per_channel in any::<bool>(), act in 0u8..3, relu in any::<bool>(), conv_first in any::<bool>(),
        xzp in 0i32..256, yzp in 0i32..256, skip_zp in 0i32..256, out_zp in prop_oneof![Just(0i32), 0i32..256],
        seed in any::<u64>(),
    ) {
        // 0: ResNet-style 3x3 padded; 1: MobileNetV2-style 1x1 projection; 2: depthwise 3x3.
        let g = match kind {
            0 => Conv2dGeometry::new(c_in, c_out, (3, 3)).with_stride(stride, stride).with_padding(1, 1),
            1 => Conv2dGeometry::new(c_in, c_out, (1, 1)),
            _ => Conv2dGeometry::new(c_in, c_in, (3, 3)).with_stride(stride, stride).with_padding(1, 1).with_groups(c_in),
        };
        let c_out = g.c_out;
        prop_assume!(g.output_hw(h, w).is_ok());
        let mut rnd = xorshift(seed);
        let wts: Vec<i8> = (0..c_out * g.depth()).map(|_| rnd() as i8).collect();
        let wq = if per_channel {
            ConvWeightQuant::per_channel((0..c_out).map(|i| 0.0005 + i as f32 * 1e-5).collect(), vec![0; c_out]).unwrap()
        } else {
            ConvWeightQuant::per_tensor(0.0007, 0).unwrap()
        };
        let bias: Vec<f32> = (0..c_out).map(|i| (i as f32 - 3.0) * 0.05).collect();
        let conv = PackedConv2d::new(g, &wts, wq, Some(bias)).unwrap();
        let activation = [FusedActivation::None, FusedActivation::Relu, FusedActivation::Relu6][act as usize];
        let xs = NhwcShape::new(n, h, w, g.c_in);
        let x: Vec<u8> = (0..xs.len()).map(|_| rnd() as u8).collect();
        let x_q = ActQuant::new(0.05, xzp).unwrap();
        let conv_q = ActQuant::new(0.04, yzp).unwrap();
        let skip_q = ActQuant::new(0.03, skip_zp).unwrap();
        let out_q = ActQuant::new(0.06, out_zp).unwrap();
        let ys = conv.output_shape(xs).unwrap();
        let skip: Vec<u8> = (0..ys.len()).map(|_| rnd() as u8).collect();

        // The unfused pair: reference convolution, then the portable add.
        let mut conv_out = vec![0u8; ys.len()];
        conv.run_with(ConvPath::Reference, &x, xs, x_q, conv_q, activation, &mut conv_out).unwrap();
        let mut expected = vec![0u8; ys.len()];
        let rule = FloatRule::Vectorized;
        if conv_first {
            add_on(EltwisePath::Portable, &conv_out, conv_q, &skip, skip_q, out_q, relu, rule, &mut expected).unwrap();
        } else {
            add_on(EltwisePath::Portable, &skip, skip_q, &conv_out, conv_q, out_q, relu, rule, &mut expected).unwrap();
        }
        let add = ResidualAdd {
            skip: &skip,
            skip_shape: ys,
            skip_q,
            conv_operand: if conv_first { AddOperand::First } else { AddOperand::Second },
            y_q: out_q,
            relu,
            rule,
        };
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for path in conv.paths() {
                for epath in EltwisePath::available() {
                    let (y, shape) = pool
                        .install(|| conv.forward_add_on(path, epath, &x, xs, x_q, conv_q, activation, &add))
                        .unwrap();
                    prop_assert_eq!(shape, ys);
                    prop_assert_eq!(&y, &expected, "{:?} on {:?} + {:?}, {} threads", g, path, epath, threads);
                }
            }
            let (y, _) = pool.install(|| conv.forward_add(&x, xs, x_q, conv_q, activation, &add)).unwrap();
            prop_assert_eq!(&y, &expected, "forward_add ({:?}, in rows: {}) on {} threads", conv.default_path(), conv.adds_in_rows(), threads);
        }
    }
}
