//! Property tests: every convolution path the CPU offers gives the reference's integers, for
//! random geometries, quantization parameters and thread counts.

use proptest::prelude::*;
use qkernels::conv::{
    ActQuant, Conv2dGeometry, ConvArithmetic, ConvTranspose2dGeometry, ConvWeightQuant, FusedActivation, NhwcShape,
    PackedConv2d, PackedConvTranspose2d,
};

fn act(a: u8) -> FusedActivation {
    [FusedActivation::None, FusedActivation::Relu, FusedActivation::Relu6][a as usize % 3]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn conv2d_paths_match_reference(
        groups in 1usize..4, cig in 1usize..6, cog in 1usize..6, k in 1usize..4, stride in 1usize..3,
        pad in 0usize..2, dil in 1usize..3, h in 4usize..9, w in 4usize..9, n in 1usize..3,
        depthwise in any::<bool>(), per_channel in any::<bool>(), wzp in -3i32..4, xzp in 0i32..256,
        a in any::<u8>(), exact in any::<bool>(), seed in any::<u64>(),
    ) {
        let (c_in, c_out, groups) = if depthwise { (16 + cig * 9, 16 + cig * 9, 16 + cig * 9) } else { (groups * cig, groups * cog, groups) };
        let g = Conv2dGeometry::new(c_in, c_out, (k, k)).with_stride(stride, stride).with_padding(pad, pad)
            .with_dilation(dil, dil).with_groups(groups);
        prop_assume!(g.output_hw(h, w).is_ok());
        let mut s = seed | 1;
        let mut rnd = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; s };
        let wts: Vec<i8> = (0..c_out * g.depth()).map(|_| rnd() as i8).collect();
        let wq = if per_channel {
            ConvWeightQuant::per_channel((0..c_out).map(|i| 0.001 + i as f32 * 1e-4).collect(), vec![wzp; c_out]).unwrap()
        } else {
            ConvWeightQuant::per_tensor(0.002, wzp).unwrap()
        };
        let bias: Vec<f32> = (0..c_out).map(|i| (i as f32 - 3.0) * 0.05).collect();
        let arithmetic = if exact { ConvArithmetic::Exact } else { ConvArithmetic::FbgemmParity };
        let conv = PackedConv2d::new(g, &wts, wq, Some(bias)).unwrap().with_arithmetic(arithmetic).unwrap();
        let xs = NhwcShape::new(n, h, w, c_in);
        let x: Vec<u8> = (0..xs.len()).map(|_| rnd() as u8).collect();
        let (x_q, y_q) = (ActQuant::new(0.05, xzp).unwrap(), ActQuant::new(0.04, 100).unwrap());
        let ys = conv.output_shape(xs).unwrap();
        let mut expected = vec![0u8; ys.len()];
        conv.run_with(qkernels::conv::ConvPath::Reference, &x, xs, x_q, y_q, act(a), &mut expected).unwrap();
        for path in conv.paths() {
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut y = vec![0u8; ys.len()];
                pool.install(|| conv.run_with(path, &x, xs, x_q, y_q, act(a), &mut y)).unwrap();
                prop_assert_eq!(&y, &expected, "{:?} on {} threads", path, threads);
            }
        }
    }

    #[test]
    fn conv_transpose_gemm_matches_reference(
        ci in 0usize..6, co in 0usize..8, k in 1usize..4, h in 1usize..6, w in 1usize..6, n in 1usize..3,
        op in 0usize..2, per_channel in any::<bool>(), a in any::<u8>(), seed in any::<u64>(),
    ) {
        // Channel counts include whole 4-byte groups and `k * c_out` in whole 16-channel panels,
        // so the direct path's in-place spread (no output padding) is covered too.
        let c_in = [1, 3, 4, 5, 8, 12][ci];
        let c_out = [1, 2, 3, 5, 8, 16, 24, 32][co];
        let g = ConvTranspose2dGeometry::new(c_in, c_out, (k, k)).with_stride(k, k).with_output_padding(op.min(k - 1), op.min(k - 1));
        let mut s = seed | 1;
        let mut rnd = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; s };
        let wts: Vec<i8> = (0..c_in * c_out * k * k).map(|_| rnd() as i8).collect();
        let wq = if per_channel {
            ConvWeightQuant::per_channel((0..c_out).map(|i| 0.002 + i as f32 * 1e-4).collect(), vec![0; c_out]).unwrap()
        } else {
            ConvWeightQuant::per_tensor(0.003, (seed % 2) as i32).unwrap()
        };
        let t = PackedConvTranspose2d::new(g, &wts, wq, Some((0..c_out).map(|i| i as f32 * 0.1).collect())).unwrap();
        let xs = NhwcShape::new(n, h, w, c_in);
        let x: Vec<u8> = (0..xs.len()).map(|_| rnd() as u8).collect();
        let (x_q, y_q) = (ActQuant::new(0.05, 120).unwrap(), ActQuant::new(0.04, 90).unwrap());
        let ys = t.output_shape(xs).unwrap();
        let mut expected = vec![0u8; ys.len()];
        t.run_with(None, &x, xs, x_q, y_q, act(a), &mut expected).unwrap();
        for path in qkernels::gemm::available_paths() {
            let mut y = vec![0u8; ys.len()];
            t.run_with(Some(path), &x, xs, x_q, y_q, act(a), &mut y).unwrap();
            prop_assert_eq!(&y, &expected, "{:?}", path);
        }
        if t.has_direct() {
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut y = vec![0u8; ys.len()];
                pool.install(|| t.run_direct(&x, xs, x_q, y_q, act(a), &mut y)).unwrap();
                prop_assert_eq!(&y, &expected, "direct on {} threads", threads);
                let (y, shape) = pool.install(|| t.forward(&x, xs, x_q, y_q, act(a))).unwrap();
                prop_assert_eq!(shape, ys);
                prop_assert_eq!(&y, &expected, "forward on {} threads", threads);
            }
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let g = Conv2dGeometry::new(4, 6, (3, 3)).with_groups(4);
    assert!(PackedConv2d::new(g, &[0; 10], ConvWeightQuant::per_tensor(0.1, 0).unwrap(), None).is_err());
    let g = Conv2dGeometry::new(4, 4, (3, 3));
    let conv = PackedConv2d::new(g, &[0; 144], ConvWeightQuant::per_tensor(0.1, 0).unwrap(), None).unwrap();
    let q = ActQuant::new(0.1, 0).unwrap();
    assert!(conv
        .forward(&[0; 8], NhwcShape::new(1, 2, 2, 2), q, q, FusedActivation::None)
        .is_err());
    assert!(conv
        .forward(&[0; 16], NhwcShape::new(1, 2, 2, 4), q, q, FusedActivation::None)
        .is_err());
    assert!(ActQuant::new(f32::NAN, 0).is_err());
    assert!(qkernels::conv::nchw_f32_to_nhwc_u8(&[f32::NAN], NhwcShape::new(1, 1, 1, 1), q).is_err());
}
