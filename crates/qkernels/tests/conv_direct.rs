//! Property test of the direct convolution kernel (one group, symmetric weights): rows wide
//! enough for whole register tiles plus ragged ones, 1 to 5 panels of output channels with a
//! partial last panel (and often exactly 32, whose pixel pairs are stored as one vector),
//! output zero points from 0 to 255, channel counts that are not multiples of 4, every stride,
//! padding and dilation mix, against the reference on 1 and 3 threads; and the same for the
//! depthwise row kernel.

mod common;

use proptest::prelude::*;
use qkernels::conv::{
    ActQuant, Conv2dGeometry, ConvArithmetic, ConvPath, ConvWeightQuant, FusedActivation, NhwcShape, PackedConv2d,
};

/// On a CPU with AVX-512 VNNI an ordinary 3x3 convolution offers the direct kernel, so the
/// property test below cannot pass by never meeting it.
#[test]
fn direct_kernel_is_offered_where_the_cpu_has_it() {
    let g = Conv2dGeometry::new(8, 32, (3, 3)).with_padding(1, 1);
    let conv = PackedConv2d::new(
        g,
        &vec![1i8; 32 * g.depth()],
        ConvWeightQuant::per_tensor(0.01, 0).unwrap(),
        None,
    )
    .unwrap();
    let offered = conv.paths().contains(&ConvPath::Direct);
    #[cfg(target_arch = "x86_64")]
    assert_eq!(
        offered,
        is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512bw")
    );
    #[cfg(not(target_arch = "x86_64"))]
    assert!(!offered);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn direct_matches_reference(
        c_in in 1usize..11, c_out in prop_oneof![Just(32usize), 1usize..80], kh in 1usize..6, kw in 1usize..8, stride in 1usize..4,
        pad in 0usize..4, dil in 1usize..3, h in 1usize..12, w in 1usize..48, n in 1usize..3,
        per_channel in any::<bool>(), xzp in 0i32..256, act in 0u8..3, tiny_out in any::<bool>(),
        yzp in prop_oneof![Just(0i32), Just(255), 0i32..256], seed in any::<u64>(),
    ) {
        let g = Conv2dGeometry::new(c_in, c_out, (kh, kw)).with_stride(stride, stride.div_ceil(2))
            .with_padding(pad.min(kh), pad).with_dilation(dil, dil);
        prop_assume!(g.output_hw(h, w).is_ok());
        let mut s = seed | 1;
        let mut rnd = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; s };
        let wts: Vec<i8> = (0..c_out * g.depth()).map(|_| rnd() as i8).collect();
        let wq = if per_channel {
            ConvWeightQuant::per_channel((0..c_out).map(|i| 0.0005 + i as f32 * 1e-5).collect(), vec![0; c_out]).unwrap()
        } else {
            ConvWeightQuant::per_tensor(0.0007, 0).unwrap()
        };
        let bias: Vec<f32> = (0..c_out).map(|i| (i as f32 - 3.0) * 0.05).collect();
        let conv = PackedConv2d::new(g, &wts, wq, Some(bias)).unwrap();
        if !conv.paths().contains(&ConvPath::Direct) {
            // This geometry (or this CPU) has no direct kernel: nothing to compare.
            return Ok(());
        }
        let activation = [FusedActivation::None, FusedActivation::Relu, FusedActivation::Relu6][act as usize];
        let xs = NhwcShape::new(n, h, w, c_in);
        let x: Vec<u8> = (0..xs.len()).map(|_| rnd() as u8).collect();
        // A tiny output scale gives multipliers near 1e4, so scaled sums reach the float clamp.
        let y_scale = if tiny_out { 1e-9 } else { 0.04 };
        let (x_q, y_q) = (ActQuant::new(0.05, xzp).unwrap(), ActQuant::new(y_scale, yzp).unwrap());
        let ys = conv.output_shape(xs).unwrap();
        let mut expected = vec![0u8; ys.len()];
        conv.run_with(ConvPath::Reference, &x, xs, x_q, y_q, activation, &mut expected).unwrap();
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut y = vec![0u8; ys.len()];
            pool.install(|| conv.run_with(ConvPath::Direct, &x, xs, x_q, y_q, activation, &mut y)).unwrap();
            prop_assert_eq!(&y, &expected, "{:?} on {} threads", g, threads);
            // The allocating form writes the direct kernel's output without zero-filling it.
            let (y, shape) = pool.install(|| conv.forward(&x, xs, x_q, y_q, activation)).unwrap();
            prop_assert_eq!(shape, ys);
            prop_assert_eq!(&y, &expected, "forward ({:?}) on {} threads", conv.default_path(), threads);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// Depthwise row kernel: flat rows of several 64-byte blocks with a ragged tail, channel
    /// counts with one to many weight patterns, strides 1-3 (blocks reading one or several
    /// input pixels), dilation and padding, both arithmetics and asymmetric weights, on 1 and 3
    /// threads.
    #[test]
    fn depthwise_rows_match_reference(
        c in 1usize..100, k in 1usize..6, stride in 1usize..4, pad in 0usize..3, dil in 1usize..3,
        h in 1usize..9, w in 1usize..40, n in 1usize..3, wzp in -2i32..3, xzp in 0i32..256,
        exact in any::<bool>(), act in 0u8..3, seed in any::<u64>(),
    ) {
        let c = if c > 60 { 8 * (c - 60) } else { c };
        let g = Conv2dGeometry::new(c, c, (k, k)).with_stride(stride, stride).with_padding(pad, pad)
            .with_dilation(dil, dil).with_groups(c);
        prop_assume!(c > 1 && g.output_hw(h, w).is_ok());
        let mut s = seed | 1;
        let mut rnd = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; s };
        let wts: Vec<i8> = (0..c * k * k).map(|_| rnd() as i8).collect();
        let wq = ConvWeightQuant::per_channel((0..c).map(|i| 0.001 + i as f32 * 1e-5).collect(), vec![wzp; c]).unwrap();
        let bias: Vec<f32> = (0..c).map(|i| (i as f32 - 3.0) * 0.05).collect();
        let arithmetic = if exact { ConvArithmetic::Exact } else { ConvArithmetic::FbgemmParity };
        let conv = PackedConv2d::new(g, &wts, wq, Some(bias)).unwrap().with_arithmetic(arithmetic).unwrap();
        let activation = [FusedActivation::None, FusedActivation::Relu, FusedActivation::Relu6][act as usize];
        let xs = NhwcShape::new(n, h, w, c);
        let x: Vec<u8> = (0..xs.len()).map(|_| rnd() as u8).collect();
        let (x_q, y_q) = (ActQuant::new(0.05, xzp).unwrap(), ActQuant::new(0.04, 100).unwrap());
        let ys = conv.output_shape(xs).unwrap();
        let mut expected = vec![0u8; ys.len()];
        conv.run_with(ConvPath::Reference, &x, xs, x_q, y_q, activation, &mut expected).unwrap();
        for path in conv.paths() {
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut y = vec![0u8; ys.len()];
                pool.install(|| conv.run_with(path, &x, xs, x_q, y_q, activation, &mut y)).unwrap();
                prop_assert_eq!(&y, &expected, "{:?} {:?} on {} threads", g, path, threads);
            }
        }
    }
}

/// Deep layers whose packed weights exceed one weight block (about 1 MB) run block by block:
/// 31 panels (a three-panel tile and a ragged last panel in the final block) and 32 panels.
#[test]
fn direct_weight_blocks_match_reference() {
    for (c_out, stride) in [(490, 1), (500, 2)] {
        let c_in = 256;
        let g = Conv2dGeometry::new(c_in, c_out, (3, 3))
            .with_stride(stride, stride)
            .with_padding(1, 1);
        let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ c_out as u64;
        let mut rnd = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let wts: Vec<i8> = (0..c_out * g.depth()).map(|_| rnd() as i8).collect();
        let wq =
            ConvWeightQuant::per_channel((0..c_out).map(|i| 1e-4 + i as f32 * 1e-7).collect(), vec![0; c_out]).unwrap();
        let bias: Vec<f32> = (0..c_out).map(|i| (i as f32 - 30.0) * 0.01).collect();
        let conv = PackedConv2d::new(g, &wts, wq, Some(bias)).unwrap();
        if !conv.paths().contains(&ConvPath::Direct) {
            return;
        }
        let xs = NhwcShape::new(1, 5, 6, c_in);
        let x: Vec<u8> = (0..xs.len()).map(|_| rnd() as u8).collect();
        let (x_q, y_q) = (ActQuant::new(0.05, 77).unwrap(), ActQuant::new(0.04, 100).unwrap());
        let ys = conv.output_shape(xs).unwrap();
        let mut expected = vec![0u8; ys.len()];
        conv.run_with(
            ConvPath::Reference,
            &x,
            xs,
            x_q,
            y_q,
            FusedActivation::None,
            &mut expected,
        )
        .unwrap();
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut y = vec![0u8; ys.len()];
            pool.install(|| conv.run_with(ConvPath::Direct, &x, xs, x_q, y_q, FusedActivation::None, &mut y))
                .unwrap();
            assert_eq!(y, expected, "{g:?} on {threads} threads");
        }
    }
}

/// On a CPU with the direct kernel (unless `QFORGE_KERNEL=reference` forces the portable path), a
/// padded 3x3 convolution reads a concatenation inside its row copies, so the property test
/// below meets the fused path.
#[test]
fn padded_convolution_fuses_a_concatenation_where_the_cpu_has_the_kernel() {
    let g = Conv2dGeometry::new(16, 32, (3, 3)).with_padding(1, 1);
    let conv = PackedConv2d::new(
        g,
        &vec![1i8; 32 * g.depth()],
        ConvWeightQuant::per_tensor(0.01, 0).unwrap(),
        None,
    )
    .unwrap();
    assert_eq!(conv.fuses_concat(), conv.default_path() == ConvPath::Direct);
    assert_eq!(conv.fuses_concat(), common::direct_kernel_is_default());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// `run_concat` (the concatenation made inside the row copies, or stored first where the
    /// layer reads in place) equals `cat_channels` on the portable path followed by the
    /// reference convolution, on 1, 2 and 3 threads.
    #[test]
    fn concat_conv_matches_cat_then_reference(
        channels in proptest::collection::vec(1usize..40, 1..4), c_out in 1usize..70, k in 1usize..4,
        pad in 0usize..2, stride in 1usize..3, h in 1usize..10, w in 1usize..30, n in 1usize..3,
        same_params in proptest::collection::vec(any::<bool>(), 3), act in 0u8..3, seed in any::<u64>(),
    ) {
        let c_in: usize = channels.iter().sum();
        let g = Conv2dGeometry::new(c_in, c_out, (k, k)).with_stride(stride, stride).with_padding(pad, pad);
        prop_assume!(g.output_hw(h, w).is_ok());
        let mut s = seed | 1;
        let mut rnd = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; s };
        let wts: Vec<i8> = (0..c_out * g.depth()).map(|_| rnd() as i8).collect();
        let wq = ConvWeightQuant::per_channel((0..c_out).map(|i| 0.0005 + i as f32 * 1e-5).collect(), vec![0; c_out]).unwrap();
        let conv = PackedConv2d::new(g, &wts, wq, None).unwrap();
        let x_q = ActQuant::new(0.05, 17).unwrap();
        let y_q = ActQuant::new(0.04, 100).unwrap();
        let parts: Vec<(Vec<u8>, NhwcShape, ActQuant)> = channels
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let xs = NhwcShape::new(n, h, w, c);
                let q = if same_params[i] { x_q } else { ActQuant::new(0.02 + 0.03 * i as f32, 3 + 50 * i as i32).unwrap() };
                ((0..xs.len()).map(|_| rnd() as u8).collect(), xs, q)
            })
            .collect();
        let refs: Vec<(&[u8], NhwcShape, ActQuant)> = parts.iter().map(|(d, s, q)| (d.as_slice(), *s, *q)).collect();
        let activation = [FusedActivation::None, FusedActivation::Relu, FusedActivation::Relu6][act as usize];
        let (x, xs) = qkernels::eltwise::cat_channels_on(qkernels::eltwise::EltwisePath::Portable, &refs, x_q).unwrap();
        let ys = conv.output_shape(xs).unwrap();
        let mut expected = vec![0u8; ys.len()];
        conv.run_with(ConvPath::Reference, &x, xs, x_q, y_q, activation, &mut expected).unwrap();
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let (y, shape) = pool.install(|| conv.forward_concat(&refs, x_q, y_q, activation)).unwrap();
            prop_assert_eq!(shape, ys);
            prop_assert_eq!(&y, &expected, "{:?} on {} threads (fused: {})", g, threads, conv.fuses_concat());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// `forward_pooled` / `run_pooled` (each pooled row made inside the row copies, or the
    /// pooling stored first where the layer reads in place) equal `max_pool2d` on the portable
    /// path followed by the reference convolution: pooling windows with strides, padding,
    /// dilation and ceil mode, on 1, 2 and 3 threads; a window larger than the input is an error
    /// on both.
    #[test]
    fn pooled_conv_matches_pool_then_reference(
        c_in in prop_oneof![Just(32usize), 1usize..20], c_out in 1usize..70, k in 1usize..4, pad in 0usize..2,
        pk in 1usize..4, ps in 1usize..3, ppad in 0usize..2, pdil in 1usize..3, ceil in any::<bool>(),
        h in 1usize..14, w in 1usize..30, n in 1usize..3, act in 0u8..3, seed in any::<u64>(),
    ) {
        use qkernels::eltwise::{max_pool2d_on, EltwisePath, Pool2d};
        let g = Conv2dGeometry::new(c_in, c_out, (k, k)).with_padding(pad, pad);
        let pool = Pool2d::new(pk, pk).with_stride(ps, ps).with_padding(ppad.min(pk / 2), ppad.min(pk / 2))
            .with_dilation(pdil, pdil).with_ceil_mode(ceil);
        let mut s = seed | 1;
        let mut rnd = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; s };
        let wts: Vec<i8> = (0..c_out * g.depth()).map(|_| rnd() as i8).collect();
        let wq = ConvWeightQuant::per_channel((0..c_out).map(|i| 0.0005 + i as f32 * 1e-5).collect(), vec![0; c_out]).unwrap();
        let conv = PackedConv2d::new(g, &wts, wq, Some((0..c_out).map(|i| i as f32 * 0.01).collect())).unwrap();
        let (x_q, y_q) = (ActQuant::new(0.05, 17).unwrap(), ActQuant::new(0.04, 3).unwrap());
        let activation = [FusedActivation::None, FusedActivation::Relu, FusedActivation::Relu6][act as usize];
        let xs = NhwcShape::new(n, h, w, c_in);
        let x: Vec<u8> = (0..xs.len()).map(|_| rnd() as u8).collect();
        let pooled = max_pool2d_on(EltwisePath::Portable, &x, xs, &pool);
        let expected = pooled.and_then(|(p, pshape)| {
            let ys = conv.output_shape(pshape)?;
            let mut y = vec![0u8; ys.len()];
            conv.run_with(ConvPath::Reference, &p, pshape, x_q, y_q, activation, &mut y)?;
            Ok((y, ys))
        });
        for threads in [1, 2, 3] {
            let tp = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let got = tp.install(|| conv.forward_pooled(&x, xs, &pool, x_q, y_q, activation));
            match (&expected, got) {
                (Ok((want, ys)), Ok((y, shape))) => {
                    prop_assert_eq!(shape, *ys);
                    prop_assert_eq!(&y, want, "{:?} {:?} on {} threads (fused: {})", g, pool, threads, conv.fuses_concat());
                    let mut y2 = vec![0u8; ys.len()];
                    tp.install(|| conv.run_pooled(&x, xs, &pool, x_q, y_q, activation, &mut y2)).unwrap();
                    prop_assert_eq!(&y2, want);
                }
                (Err(_), Err(_)) => {}
                (want, got) => prop_assert!(false, "reference {:?}, pooled {:?}", want.as_ref().map(|w| w.1), got.map(|g| g.1)),
            }
        }
    }
}
