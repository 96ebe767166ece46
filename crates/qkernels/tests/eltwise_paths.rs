//! Property tests: every element-wise path the CPU offers (add, add+ReLU, mul, cat, max pool,
//! activation tables) and the layout conversions give the reference's bytes, for odd lengths,
//! extreme quantization parameters and 1, 2 or 3 threads.

use proptest::prelude::*;
use qkernels::conv::{nchw_f32_to_nhwc_u8, nhwc_u8_to_nchw_f32, ActQuant, NhwcShape};
use qkernels::eltwise::{self, EltwisePath, FloatRule, Pool2d};
use qtensor::quantize::{dequantize_one, quantize_one};
use qtensor::Overflow;

/// Scales from the smallest normal to near the largest f32, and ordinary ones.
const SCALES: [f32; 9] = [1e-45, 1e-12, 1e-4, 0.0123, 0.05, 1.0, 7.5, 1e12, 3e38];

fn qparams(scale: usize, zero_point: u8) -> ActQuant {
    ActQuant::new(SCALES[scale % SCALES.len()], zero_point as i32).unwrap()
}

/// Small ordinary parameters most of the time, extreme ones otherwise.
fn pick(extreme: bool, s: usize, zp: u8) -> ActQuant {
    if extreme {
        qparams(s, zp)
    } else {
        ActQuant::new(0.01 + (s % 7) as f32 * 0.013, zp as i32).unwrap()
    }
}

fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

fn on_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// Every path, on 1, 2 and 3 threads, against the portable path on one thread.
fn check_binary(
    len: usize,
    seed: u64,
    aq: ActQuant,
    bq: ActQuant,
    yq: ActQuant,
    which: u8,
) -> Result<(), TestCaseError> {
    let (a, b) = (bytes(len, seed), bytes(len, seed ^ 0x9e37_79b9));
    let run = |path: EltwisePath, y: &mut [u8]| match which % 5 {
        0 => eltwise::add_on(path, &a, aq, &b, bq, yq, false, FloatRule::Vectorized, y),
        1 => eltwise::add_on(path, &a, aq, &b, bq, yq, true, FloatRule::Vectorized, y),
        2 => eltwise::add_on(path, &a, aq, &b, bq, yq, which & 8 != 0, FloatRule::Scalar, y),
        3 => eltwise::mul_on(path, &a, aq, &b, bq, yq, false, y),
        _ => eltwise::mul_on(path, &a, aq, &b, bq, yq, true, y),
    };
    let mut expected = vec![0u8; len];
    on_threads(1, || run(EltwisePath::Portable, &mut expected)).unwrap();
    for path in EltwisePath::available() {
        for threads in [1, 2, 3] {
            let mut y = vec![0u8; len];
            on_threads(threads, || run(path, &mut y)).unwrap();
            prop_assert_eq!(&y, &expected, "op {} on {:?}, {} threads", which % 5, path, threads);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn binary_paths_match_reference(
        len in 1usize..300, seed in any::<u64>(), extreme in any::<bool>(),
        sa in 0usize..9, sb in 0usize..9, sy in 0usize..9, za in any::<u8>(), zb in any::<u8>(), zy in any::<u8>(),
        which in any::<u8>(),
    ) {
        check_binary(len, seed, pick(extreme, sa, za), pick(extreme, sb, zb), pick(extreme, sy, zy), which)?;
    }

    #[test]
    fn cat_paths_match_reference(
        widths in proptest::collection::vec(1usize..80, 1..4), n in 1usize..3, h in 1usize..5, w in 1usize..6,
        same in proptest::collection::vec(any::<bool>(), 4), extreme in any::<bool>(),
        scales in proptest::collection::vec(0usize..9, 5), zps in proptest::collection::vec(any::<u8>(), 5),
        seed in any::<u64>(),
    ) {
        let yq = pick(extreme, scales[4], zps[4]);
        let data: Vec<(Vec<u8>, NhwcShape, ActQuant)> = widths.iter().enumerate().map(|(i, &c)| {
            let xs = NhwcShape::new(n, h, w, c);
            let q = if same[i] { yq } else { pick(extreme, scales[i], zps[i]) };
            (bytes(xs.len(), seed.wrapping_add(i as u64)), xs, q)
        }).collect();
        let inputs: Vec<(&[u8], NhwcShape, ActQuant)> = data.iter().map(|(d, s, q)| (d.as_slice(), *s, *q)).collect();
        let expected = eltwise::cat_channels_on(EltwisePath::Portable, &inputs, yq).unwrap();
        // The reference itself: copies where the parameters match, the formula elsewhere.
        let c: usize = widths.iter().sum();
        let mut at = 0;
        for (x, xs, q) in &inputs {
            for p in 0..n * h * w {
                for ch in 0..xs.c {
                    let v = x[p * xs.c + ch];
                    let want = if *q == yq { v } else {
                        quantize_one(dequantize_one(v as i32, q.scale, q.zero_point), 1.0 / yq.scale, yq.zero_point, 0, 255, Overflow::Saturate) as u8
                    };
                    prop_assert_eq!(expected.0[p * c + at + ch], want);
                }
            }
            at += xs.c;
        }
        for path in EltwisePath::available() {
            for threads in [1, 3] {
                let got = on_threads(threads, || eltwise::cat_channels_on(path, &inputs, yq)).unwrap();
                prop_assert_eq!(&got, &expected, "{:?} on {} threads", path, threads);
            }
        }
    }

    #[test]
    fn max_pool_paths_match_reference(
        c in 1usize..140, n in 1usize..3, h in 1usize..9, w in 1usize..9, k in 1usize..4, stride in 1usize..3,
        pad in 0usize..2, dil in 1usize..3, ceil in any::<bool>(), seed in any::<u64>(),
    ) {
        let pool = Pool2d::new(k, k).with_stride(stride, stride).with_padding(pad, pad).with_dilation(dil, dil).with_ceil_mode(ceil);
        let xs = NhwcShape::new(n, h, w, c);
        prop_assume!(pool.output_hw("test", h, w).is_ok());
        let x = bytes(xs.len(), seed);
        let expected = eltwise::max_pool2d_on(EltwisePath::Portable, &x, xs, &pool).unwrap();
        for path in EltwisePath::available() {
            for threads in [1, 2, 3] {
                let got = on_threads(threads, || eltwise::max_pool2d_on(path, &x, xs, &pool)).unwrap();
                prop_assert_eq!(&got, &expected, "{:?} on {} threads", path, threads);
            }
        }
    }

    /// The dedicated 2x2 stride-2 kernel: channel counts it takes (8, 16, 32, 64 and multiples
    /// of 64) and ones it leaves to the general kernel, even and odd sizes (a dropped last row or
    /// column, ceil mode's half windows), rows whose length is not a multiple of 64 bytes.
    #[test]
    fn max_pool_2x2_paths_match_reference(
        c in prop::sample::select(vec![8usize, 16, 32, 64, 128, 192, 3, 24, 40, 96]), n in 1usize..3,
        h in 1usize..12, w in 2usize..40, ceil in any::<bool>(), seed in any::<u64>(),
    ) {
        let pool = Pool2d::new(2, 2).with_ceil_mode(ceil);
        let xs = NhwcShape::new(n, h.max(2), w, c);
        let x = bytes(xs.len(), seed);
        let expected = eltwise::max_pool2d_on(EltwisePath::Portable, &x, xs, &pool).unwrap();
        for path in EltwisePath::available() {
            for threads in [1, 2, 3] {
                let got = on_threads(threads, || eltwise::max_pool2d_on(path, &x, xs, &pool)).unwrap();
                prop_assert_eq!(&got, &expected, "{:?} on {} threads", path, threads);
            }
        }
    }

    #[test]
    fn layout_conversions_match_elementwise_formula(
        c in 1usize..9, n in 1usize..3, h in 1usize..70, w in 1usize..70, scale in 0usize..9, zp in any::<u8>(),
        seed in any::<u64>(),
    ) {
        let xs = NhwcShape::new(n, h, w, c);
        let q = ActQuant::new([1e-3, 0.02, 0.3, 1.0, 4.0, 1e-8, 1e8, 0.0517, 2.5][scale], zp as i32).unwrap();
        let raw = bytes(xs.len() * 2, seed);
        // Values spread over the range and past both ends, ties included.
        let x: Vec<f32> = raw.chunks(2).map(|p| (p[0] as f32 - 128.0 + p[1] as f32 / 256.0) * q.scale * 1.5).collect();
        let (plane, inv) = (h * w, 1.0 / q.scale);
        for threads in [1, 3] {
            let y = on_threads(threads, || nchw_f32_to_nhwc_u8(&x, xs, q)).unwrap();
            let back = on_threads(threads, || nhwc_u8_to_nchw_f32(&y, xs, q)).unwrap();
            for b in 0..n {
                for ch in 0..c {
                    for p in 0..plane {
                        let nchw = (b * c + ch) * plane + p;
                        let nhwc = (b * plane + p) * c + ch;
                        let want = quantize_one(x[nchw], inv, q.zero_point, 0, 255, Overflow::Saturate) as u8;
                        prop_assert_eq!(y[nhwc], want, "quantize at {}", nchw);
                        prop_assert_eq!(back[nchw].to_bits(), dequantize_one(want as i32, q.scale, q.zero_point).to_bits());
                    }
                }
            }
        }
    }
}

/// Long inputs run as several parallel chunks with vector tails in the last one.
#[test]
fn long_binary_inputs_match_reference_on_every_thread_count() {
    let (aq, bq, yq) = (
        ActQuant::new(0.031, 131).unwrap(),
        ActQuant::new(0.017, 7).unwrap(),
        ActQuant::new(0.04, 90).unwrap(),
    );
    for which in 0..5 {
        check_binary(100_003, 42 + which as u64, aq, bq, yq, which).unwrap();
    }
}

/// Every pair of bytes under extreme scales (overflow to infinity, infinite sums of opposite
/// signs, subnormal output scales) and zero points at both ends.
#[test]
fn extreme_parameters_match_reference_on_all_byte_pairs() {
    let scales = [1e-45, f32::MIN_POSITIVE, 1.0, 3e38];
    let a: Vec<u8> = (0..=255u8).flat_map(|x| std::iter::repeat_n(x, 256)).collect();
    let b: Vec<u8> = (0..256).flat_map(|_| 0..=255u8).collect();
    for (i, &sa) in scales.iter().enumerate() {
        for (j, &sb) in scales.iter().enumerate() {
            for &sy in &scales {
                let zps = [(0, 255, 128), (255, 0, 0), (3, 250, 255)][(i + j) % 3];
                let (aq, bq, yq) = (
                    ActQuant::new(sa, zps.0).unwrap(),
                    ActQuant::new(sb, zps.1).unwrap(),
                    ActQuant::new(sy, zps.2).unwrap(),
                );
                for which in 0..5u8 {
                    let run = |path: EltwisePath, y: &mut [u8]| match which {
                        0 | 1 => eltwise::add_on(path, &a, aq, &b, bq, yq, which == 1, FloatRule::Vectorized, y),
                        2 => eltwise::add_on(path, &a, aq, &b, bq, yq, true, FloatRule::Scalar, y),
                        _ => eltwise::mul_on(path, &a, aq, &b, bq, yq, which == 4, y),
                    };
                    let mut expected = vec![0u8; a.len()];
                    run(EltwisePath::Portable, &mut expected).unwrap();
                    for path in EltwisePath::available() {
                        let mut y = vec![0u8; a.len()];
                        run(path, &mut y).unwrap();
                        assert!(y == expected, "op {which} on {path:?}, scales {sa} {sb} {sy}");
                    }
                }
            }
        }
    }
}

/// Requantizing cat maps: identity-like ones (equal scales, equal zero points), zero points at
/// 0 and 255, ratios that send most values to 0 or 255, and extreme scales.
fn requant_maps() -> Vec<(ActQuant, ActQuant)> {
    let q = |s: f32, zp: i32| ActQuant::new(s, zp).unwrap();
    vec![
        (q(0.05, 10), q(0.05, 11)),
        (q(0.05, 128), q(0.05000001, 128)),
        (q(0.1, 0), q(0.05, 255)),
        (q(0.1, 255), q(0.2, 0)),
        (q(0.031, 131), q(0.04, 0)),
        (q(0.017, 7), q(0.04, 90)),
        (q(1.0, 0), q(1e-4, 128)),
        (q(1e-4, 255), q(1.0, 3)),
        (q(1e-45, 0), q(1e-45, 255)),
        (q(3e38, 200), q(1e-12, 17)),
        (q(1e-12, 40), q(3e38, 250)),
    ]
}

/// Every byte value of each requantizing input, at channel counts narrower and wider than a
/// vector, beside a copied or another requantized input, on every path and 1, 2, 3 threads.
#[test]
fn cat_maps_every_byte_on_every_path() {
    let copy = ActQuant::new(0.04, 0).unwrap();
    for (i, (from, to)) in requant_maps().into_iter().enumerate() {
        for &c in &[1usize, 3, 16, 21, 22, 31, 32, 33, 63, 64, 65, 96, 128, 129] {
            for &other in &[0usize, 5, 32, 64] {
                // Enough pixels for every byte value in each channel position, and a ragged end.
                let pixels = 256 / c.min(256) + 37;
                let xs = NhwcShape::new(1, 1, pixels, c);
                let x: Vec<u8> = (0..xs.len()).map(|j| (j * 13 + j / 256) as u8).collect();
                let os = NhwcShape::new(1, 1, pixels, other);
                let o = bytes(os.len(), i as u64);
                let oq = if c % 2 == 0 {
                    copy
                } else {
                    ActQuant::new(0.3, 77).unwrap()
                };
                let inputs: Vec<(&[u8], NhwcShape, ActQuant)> = if other == 0 {
                    vec![(&x, xs, from)]
                } else if c % 3 == 0 {
                    vec![(&o, os, oq), (&x, xs, from)]
                } else {
                    vec![(&x, xs, from), (&o, os, oq)]
                };
                let out = if other == 0 { to } else { copy };
                let expected = eltwise::cat_channels_on(EltwisePath::Portable, &inputs, out).unwrap();
                for path in EltwisePath::available() {
                    for threads in [1, 2, 3] {
                        let got = on_threads(threads, || eltwise::cat_channels_on(path, &inputs, out)).unwrap();
                        assert!(
                            got == expected,
                            "map {i}, {c} + {other} channels on {path:?}, {threads} threads"
                        );
                    }
                }
            }
        }
    }
}

/// Activation tables give `table[x]` on every path, for every length up to a few vectors,
/// copying and in place.
#[test]
fn activation_tables_match_on_every_path() {
    let q = ActQuant::new(0.05, 100).unwrap();
    let luts = [
        eltwise::ActivationLut::hardswish(q, ActQuant::new(0.03, 10).unwrap(), FloatRule::Vectorized).unwrap(),
        eltwise::ActivationLut::relu6(q),
        eltwise::ActivationLut::from_table(std::array::from_fn(|v| (v as u8).wrapping_mul(167).rotate_left(3))),
    ];
    for lut in &luts {
        for len in (0..300).chain([4095, 4096, 4097]) {
            let x = bytes(len, len as u64);
            let expected: Vec<u8> = x.iter().map(|&v| lut.table()[v as usize]).collect();
            for path in EltwisePath::available() {
                let mut y = vec![0u8; len];
                if len == 0 {
                    assert!(lut.apply_on(path, &x, &mut y).is_err());
                } else {
                    lut.apply_on(path, &x, &mut y).unwrap();
                    assert!(y == expected, "{len} bytes on {path:?}");
                }
                let mut z = x.clone();
                lut.apply_in_place_on(path, &mut z).unwrap();
                assert!(z == expected, "{len} bytes in place on {path:?}");
            }
        }
    }
}

#[test]
fn unavailable_inputs_are_refused() {
    let q = ActQuant::new(0.1, 0).unwrap();
    let mut y = vec![0u8; 3];
    assert!(eltwise::add(&[1, 2], q, &[1, 2], q, q, false, FloatRule::Vectorized, &mut y).is_err());
    assert!(eltwise::mul(&[], q, &[], q, q, false, &mut []).is_err());
    assert!(eltwise::cat_channels(&[], q).is_err());
}

/// A UNet-sized 2x2 pooling (rows of several 64-byte blocks, many rows per thread) and a
/// ResNet-style 3x3 stride-2 padded one, on every path and thread count, against the reference.
#[test]
fn model_sized_max_pools_match_reference() {
    let cases = [
        (NhwcShape::new(1, 64, 66, 32), Pool2d::new(2, 2)),
        (NhwcShape::new(2, 33, 35, 64), Pool2d::new(2, 2)),
        (
            NhwcShape::new(1, 29, 31, 64),
            Pool2d::new(3, 3).with_stride(2, 2).with_padding(1, 1),
        ),
    ];
    for (xs, pool) in cases {
        let x = bytes(xs.len(), xs.len() as u64);
        let expected = eltwise::max_pool2d_on(EltwisePath::Portable, &x, xs, &pool).unwrap();
        for path in EltwisePath::available() {
            for threads in [1, 2, 3] {
                let got = on_threads(threads, || eltwise::max_pool2d_on(path, &x, xs, &pool)).unwrap();
                assert_eq!(got, expected, "{xs:?} {pool:?} on {path:?}, {threads} threads");
            }
        }
    }
}

/// Malformed poolings are errors that say what is wrong, on every path.
#[test]
fn bad_max_pools_are_refused() {
    let xs = NhwcShape::new(1, 4, 4, 8);
    let x = vec![0u8; xs.len()];
    for path in EltwisePath::available() {
        let err =
            |x: &[u8], xs: NhwcShape, pool: Pool2d| eltwise::max_pool2d_on(path, x, xs, &pool).unwrap_err().to_string();
        assert!(err(&x[1..], xs, Pool2d::new(2, 2)).contains("needs 128 values"));
        assert!(err(&x, xs, Pool2d::new(0, 2)).contains("must be positive"));
        assert!(err(&x, xs, Pool2d::new(5, 5)).contains("smaller than the pooling window"));
        assert!(err(&x, xs, Pool2d::new(2, 2).with_padding(2, 0)).contains("at most half the kernel"));
        assert!(err(&[], NhwcShape::new(1, 0, 4, 8), Pool2d::new(1, 1)).contains("empty"));
    }
}
