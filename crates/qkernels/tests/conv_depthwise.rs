//! The depthwise row kernel reads its input rows in place, so each 64-byte output block loads
//! from one input run per pixel and tap: these tests cover blocks inside one pixel, across two
//! pixels of a strided row (channel counts of 64 and more that are not multiples of 64), across
//! many pixels (small channel counts), the left and right padding edges, rectangular kernels
//! whose last tap group holds one, two or three taps, and MobileNetV2's depthwise layers at their
//! full widths, against the reference on 1 and 3 threads with both arithmetics.

use proptest::prelude::*;
use qkernels::conv::{
    ActQuant, Conv2dGeometry, ConvArithmetic, ConvPath, ConvWeightQuant, DepthwisePath, FusedActivation, NhwcShape,
    PackedConv2d,
};

/// Runs every path of `g` on an `n x h x w` input and compares it with the reference.
#[allow(clippy::too_many_arguments)]
fn check(
    g: Conv2dGeometry,
    (n, h, w): (usize, usize, usize),
    wzp: i32,
    (x_scale, xzp): (f32, i32),
    arithmetic: ConvArithmetic,
    activation: FusedActivation,
    seed: u64,
) -> Result<(), String> {
    let c = g.c_out;
    let mut s = seed | 1;
    let mut rnd = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let wts: Vec<i8> = (0..c * g.taps()).map(|_| rnd() as i8).collect();
    let wq = ConvWeightQuant::per_channel((0..c).map(|i| 0.001 + i as f32 * 1e-5).collect(), vec![wzp; c]).unwrap();
    let bias: Vec<f32> = (0..c).map(|i| (i as f32 - 3.0) * 0.05).collect();
    let conv = PackedConv2d::new(g, &wts, wq, Some(bias))
        .unwrap()
        .with_arithmetic(arithmetic)
        .unwrap();
    let xs = NhwcShape::new(n, h, w, c);
    // Full-range activations, so fbgemm parity's saturating pairs do saturate.
    let x: Vec<u8> = (0..xs.len()).map(|_| rnd() as u8).collect();
    let (x_q, y_q) = (ActQuant::new(x_scale, xzp).unwrap(), ActQuant::new(0.04, 100).unwrap());
    let ys = conv.output_shape(xs).unwrap();
    let mut expected = vec![0u8; ys.len()];
    conv.run_with(ConvPath::Reference, &x, xs, x_q, y_q, activation, &mut expected)
        .unwrap();
    for path in conv.paths() {
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut y = vec![0u8; ys.len()];
            pool.install(|| conv.run_with(path, &x, xs, x_q, y_q, activation, &mut y))
                .unwrap();
            if y != expected {
                let at = y.iter().zip(&expected).position(|(a, b)| a != b).unwrap();
                return Err(format!(
                    "{g:?} {arithmetic:?} {path:?} on {threads} threads: first difference at byte {at} \
                     (pixel {}, channel {}): {} instead of {}",
                    at / c,
                    at % c,
                    y[at],
                    expected[at]
                ));
            }
        }
    }
    Ok(())
}

/// The row kernel is offered on a CPU with AVX-512 VNNI, so the tests below meet it there.
#[test]
fn row_kernel_is_offered_where_the_cpu_has_it() {
    let g = Conv2dGeometry::new(96, 96, (3, 3))
        .with_stride(2, 2)
        .with_padding(1, 1)
        .with_groups(96);
    let conv = PackedConv2d::new(g, &[1i8; 96 * 9], ConvWeightQuant::per_tensor(0.01, 0).unwrap(), None).unwrap();
    let rows = ConvPath::Depthwise(DepthwisePath::Avx512VnniRows);
    assert_eq!(
        conv.paths().contains(&rows),
        DepthwisePath::available().contains(&DepthwisePath::Avx512VnniRows)
    );
}

/// MobileNetV2's depthwise layers at full width (fewer rows), symmetric and asymmetric.
#[test]
fn mobilenet_v2_depthwise_layers_match_reference() {
    let layers = [
        (32, 112, 1),
        (96, 112, 2),
        (144, 56, 1),
        (144, 56, 2),
        (192, 28, 1),
        (192, 28, 2),
        (384, 14, 1),
        (576, 14, 1),
        (576, 14, 2),
        (960, 7, 1),
    ];
    for (i, (c, hw, stride)) in layers.into_iter().enumerate() {
        let g = Conv2dGeometry::new(c, c, (3, 3))
            .with_stride(stride, stride)
            .with_padding(1, 1)
            .with_groups(c);
        for (wzp, xzp, arithmetic) in [
            (0, 3, ConvArithmetic::FbgemmParity),
            (2, 130, ConvArithmetic::FbgemmParity),
            (-1, 0, ConvArithmetic::Exact),
        ] {
            let h = hw.min(5);
            check(
                g,
                (1, h, hw),
                wzp,
                (0.05, xzp),
                arithmetic,
                FusedActivation::Relu,
                i as u64 + 1,
            )
            .unwrap();
        }
    }
}

/// Multipliers so large that the requantization's float clamp acts (outputs saturate).
#[test]
fn huge_multipliers_match_reference() {
    let g = Conv2dGeometry::new(96, 96, (3, 3))
        .with_stride(2, 2)
        .with_padding(1, 1)
        .with_groups(96);
    for activation in [FusedActivation::None, FusedActivation::Relu6] {
        check(g, (1, 4, 9), 1, (1e9, 77), ConvArithmetic::FbgemmParity, activation, 7).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Rectangular kernels (1 to 9 taps, so every tail size of a four-tap group), channel counts
    /// below, at and above 64 (blocks inside a pixel, across two, across many), strides 1-3 with
    /// rows wide enough for many blocks, padding on both sides, dilation.
    #[test]
    fn row_kernel_matches_reference(
        c in prop::sample::select(vec![2usize, 8, 24, 40, 64, 72, 96, 120, 136, 144, 192]),
        kh in 1usize..4, kw in 1usize..4, stride in 1usize..4, pad in 0usize..3, dil in 1usize..3,
        h in 1usize..5, w in 1usize..60, n in 1usize..3, wzp in -2i32..3, xzp in 0i32..256,
        exact in any::<bool>(), act in 0u8..3, seed in any::<u64>(),
    ) {
        let g = Conv2dGeometry::new(c, c, (kh, kw)).with_stride(stride, stride)
            .with_padding(pad, pad).with_dilation(dil, dil).with_groups(c);
        prop_assume!(g.output_hw(h, w).is_ok());
        let arithmetic = if exact { ConvArithmetic::Exact } else { ConvArithmetic::FbgemmParity };
        let activation = [FusedActivation::None, FusedActivation::Relu, FusedActivation::Relu6][act as usize];
        let result = check(g, (n, h, w), wzp, (0.05, xzp), arithmetic, activation, seed);
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }
}
