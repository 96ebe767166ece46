//! Property test of the convolution with a dequantized NCHW `f32` output
//! (`PackedConv2d::forward_dequantized`): the pixel-lane kernel of 1x1 heads with few output
//! channels gives the f32 bits of the reference convolution followed by `dequantize_one`, for
//! pixel counts with a partial last block of 16, 1 to 8 outputs, per-tensor and per-channel
//! weights, every fused activation, extreme output scales, on 1, 2 and 3 threads; the fallback
//! (convolution, then the separate dequantization) gives the same bits everywhere else.

mod common;

use proptest::prelude::*;
use qkernels::conv::{ActQuant, Conv2dGeometry, ConvPath, ConvWeightQuant, FusedActivation, NhwcShape, PackedConv2d};
use qtensor::quantize::dequantize_one;

fn on_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// A 1x1 head with 5 outputs takes the kernel on a CPU with AVX-512 VNNI, so the property test
/// below cannot pass by never meeting it.
#[test]
fn segmentation_head_dequantizes_in_kernel_where_the_cpu_has_it() {
    let g = Conv2dGeometry::new(32, 5, (1, 1));
    let conv = PackedConv2d::new(g, &[1i8; 160], ConvWeightQuant::per_tensor(0.01, 0).unwrap(), None).unwrap();
    assert_eq!(conv.dequantizes_in_kernel(), common::direct_kernel_is_default());
    let padded = PackedConv2d::new(
        g.with_padding(1, 1),
        &[1i8; 160],
        ConvWeightQuant::per_tensor(0.01, 0).unwrap(),
        None,
    )
    .unwrap();
    assert!(!padded.dequantizes_in_kernel());
    let xs = NhwcShape::new(1, 2, 2, 32);
    let q = ActQuant::new(0.1, 0).unwrap();
    assert!(padded
        .forward_dequantized_on(true, &[0; 128], xs, q, q, FusedActivation::None)
        .is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn dequantized_output_matches_reference_then_dequantize(
        ci in 0usize..4, c_out in 1usize..11, h in 1usize..12, w in 1usize..40, n in 1usize..3,
        per_channel in any::<bool>(), xzp in 0i32..256, yzp in 0i32..256, act in 0u8..3, out_scale in 0usize..4,
        bias in any::<bool>(), wzp in prop_oneof![4 => Just(0i32), 1 => -3i32..4], seed in any::<u64>(),
    ) {
        // Whole 16-byte chunks (the kernel) and other depths (the fallback).
        let c_in = [16, 32, 48, 12][ci];
        let g = Conv2dGeometry::new(c_in, c_out, (1, 1));
        let mut s = seed | 1;
        let mut rnd = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; s };
        let wts: Vec<i8> = (0..c_out * c_in).map(|_| rnd() as i8).collect();
        let wq = if per_channel {
            ConvWeightQuant::per_channel((0..c_out).map(|i| 0.0005 + i as f32 * 1e-4).collect(), vec![0; c_out]).unwrap()
        } else {
            ConvWeightQuant::per_tensor(0.0007, wzp).unwrap()
        };
        let bias = bias.then(|| (0..c_out).map(|i| (i as f32 - 3.0) * 0.05).collect());
        let conv = PackedConv2d::new(g, &wts, wq, bias).unwrap();
        let activation = [FusedActivation::None, FusedActivation::Relu, FusedActivation::Relu6][act as usize];
        let xs = NhwcShape::new(n, h, w, c_in);
        let x: Vec<u8> = (0..xs.len()).map(|_| rnd() as u8).collect();
        // 1e-9 gives multipliers near 1e4 (sums reach the float clamp); 40 squeezes to few levels.
        let y_scale = [0.04, 1e-9, 40.0, 0.0123][out_scale];
        let (x_q, y_q) = (ActQuant::new(0.05, xzp).unwrap(), ActQuant::new(y_scale, yzp).unwrap());
        let ys = conv.output_shape(xs).unwrap();
        let mut q = vec![0u8; ys.len()];
        conv.run_with(ConvPath::Reference, &x, xs, x_q, y_q, activation, &mut q).unwrap();
        let plane = ys.h * ys.w;
        let mut expected = vec![0u32; ys.len()];
        for b in 0..ys.n {
            for c in 0..ys.c {
                for p in 0..plane {
                    let v = q[(b * plane + p) * ys.c + c] as i32;
                    expected[(b * ys.c + c) * plane + p] = dequantize_one(v, y_q.scale, y_q.zero_point).to_bits();
                }
            }
        }
        let bits = |y: Vec<f32>| y.into_iter().map(f32::to_bits).collect::<Vec<u32>>();
        let in_kernel = conv.dequantizes_in_kernel();
        for threads in [1, 2, 3] {
            let (y, got) = on_threads(threads, || conv.forward_dequantized(&x, xs, x_q, y_q, activation)).unwrap();
            prop_assert_eq!(got, ys);
            prop_assert_eq!(&bits(y), &expected, "default ({}) on {} threads", in_kernel, threads);
            let (y, _) = on_threads(threads, || conv.forward_dequantized_on(false, &x, xs, x_q, y_q, activation)).unwrap();
            prop_assert_eq!(&bits(y), &expected, "fallback on {} threads", threads);
            if in_kernel {
                let (y, _) = on_threads(threads, || conv.forward_dequantized_on(true, &x, xs, x_q, y_q, activation)).unwrap();
                prop_assert_eq!(&bits(y), &expected, "kernel on {} threads", threads);
            }
        }
    }
}
