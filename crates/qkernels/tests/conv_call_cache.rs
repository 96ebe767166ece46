//! Packed convolutions keep the constants of recent calls' parameters: a call that finds them
//! cached gives the integers of a freshly packed convolution (nothing cached) and of the
//! reference, for every path, every conv family and 1 or 3 threads, while the parameters switch
//! back and forth, and when several threads use one convolution at once.

use qkernels::conv::{
    ActQuant, Conv2dGeometry, ConvPath, ConvTranspose2dGeometry, ConvWeightQuant, FusedActivation, NhwcShape,
    PackedConv2d, PackedConvTranspose2d,
};

type Params = (ActQuant, ActQuant, FusedActivation);

/// Parameters that switch back and forth; every switch changes the output.
fn params() -> Vec<Params> {
    let a = (
        ActQuant::new(0.05, 120).unwrap(),
        ActQuant::new(0.04, 90).unwrap(),
        FusedActivation::None,
    );
    let b = (
        ActQuant::new(0.03, 7).unwrap(),
        ActQuant::new(0.09, 200).unwrap(),
        FusedActivation::Relu6,
    );
    let c = (a.0, a.1, FusedActivation::Relu);
    // Only the output scale differs from `a`.
    let d = (a.0, ActQuant::new(0.041, 90).unwrap(), FusedActivation::None);
    // More keys than the cache holds, so entries are evicted and rebuilt too.
    let e = (
        ActQuant::new(0.02, 0).unwrap(),
        ActQuant::new(0.5, 3).unwrap(),
        FusedActivation::None,
    );
    let f = (
        ActQuant::new(0.07, 255).unwrap(),
        ActQuant::new(0.06, 128).unwrap(),
        FusedActivation::Relu,
    );
    vec![a, b, a, c, a, d, b, e, f, a, b, c, d, a]
}

fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()
}

/// Builds a convolution, its input, and checks every path of one long-lived copy against a
/// fresh copy per call and the fresh reference.
fn check_conv2d(g: Conv2dGeometry, per_channel: bool, hw: (usize, usize), seed: u64) {
    let mut rnd = rng(seed);
    let c_out = g.c_out;
    let wts: Vec<i8> = (0..c_out * g.depth()).map(|_| rnd() as i8).collect();
    let wq = if per_channel {
        ConvWeightQuant::per_channel((0..c_out).map(|i| 0.002 + i as f32 * 1e-4).collect(), vec![0; c_out]).unwrap()
    } else {
        ConvWeightQuant::per_tensor(0.003, 0).unwrap()
    };
    let bias: Vec<f32> = (0..c_out).map(|i| (i as f32 - 5.0) * 0.07).collect();
    let build = || PackedConv2d::new(g, &wts, wq.clone(), Some(bias.clone())).unwrap();
    let kept = build();
    let xs = NhwcShape::new(2, hw.0, hw.1, g.c_in);
    let x: Vec<u8> = (0..xs.len()).map(|_| rnd() as u8).collect();
    let ys = kept.output_shape(xs).unwrap();
    for path in kept.paths() {
        let mut previous: Option<(Params, Vec<u8>)> = None;
        for (i, &(x_q, y_q, act)) in params().iter().enumerate() {
            let mut expected = vec![0u8; ys.len()];
            build()
                .run_with(ConvPath::Reference, &x, xs, x_q, y_q, act, &mut expected)
                .unwrap();
            let mut fresh = vec![0u8; ys.len()];
            build().run_with(path, &x, xs, x_q, y_q, act, &mut fresh).unwrap();
            assert_eq!(fresh, expected, "{g:?} {path:?} call {i}: fresh vs reference");
            for threads in [1, 3] {
                let mut y = vec![0u8; ys.len()];
                pool(threads)
                    .install(|| kept.run_with(path, &x, xs, x_q, y_q, act, &mut y))
                    .unwrap();
                assert_eq!(y, expected, "{g:?} {path:?} call {i} on {threads} threads");
            }
            if let Some((p, prev)) = &previous {
                if *p != (x_q, y_q, act) {
                    assert_ne!(*prev, expected, "{g:?} call {i}: the parameters must change the output");
                }
            }
            previous = Some(((x_q, y_q, act), expected));
        }
    }
}

#[test]
fn depthwise_cached_calls_match_fresh_calls() {
    // 80 channels: a 64-channel block and a 16-channel one for the pixel kernel.
    let g = Conv2dGeometry::new(80, 80, (3, 3)).with_padding(1, 1).with_groups(80);
    check_conv2d(g, true, (7, 7), 1);
    let g = Conv2dGeometry::new(24, 24, (3, 3))
        .with_stride(2, 2)
        .with_padding(1, 1)
        .with_groups(24);
    check_conv2d(g, false, (9, 8), 2);
}

#[test]
fn direct_cached_calls_match_fresh_calls() {
    let g = Conv2dGeometry::new(8, 40, (3, 3)).with_padding(1, 1);
    check_conv2d(g, true, (6, 7), 3);
    let g = Conv2dGeometry::new(16, 32, (1, 1));
    check_conv2d(g, false, (5, 5), 4);
}

#[test]
fn gemm_cached_calls_match_fresh_calls() {
    // Grouped (not depthwise) layers run on the GEMM only; one per group stage each.
    let g = Conv2dGeometry::new(12, 18, (3, 3)).with_padding(1, 1).with_groups(3);
    check_conv2d(g, true, (6, 5), 5);
    let g = Conv2dGeometry::new(6, 10, (1, 1)).with_groups(2);
    check_conv2d(g, false, (4, 4), 6);
}

#[test]
fn concat_cached_calls_match_fresh_calls() {
    let g = Conv2dGeometry::new(12, 16, (3, 3)).with_padding(1, 1);
    let mut rnd = rng(7);
    let wts: Vec<i8> = (0..16 * g.depth()).map(|_| rnd() as i8).collect();
    let wq = ConvWeightQuant::per_tensor(0.003, 0).unwrap();
    let build = || PackedConv2d::new(g, &wts, wq.clone(), None).unwrap();
    let kept = build();
    let (s0, s1) = (NhwcShape::new(1, 5, 6, 4), NhwcShape::new(1, 5, 6, 8));
    let x0: Vec<u8> = (0..s0.len()).map(|_| rnd() as u8).collect();
    let x1: Vec<u8> = (0..s1.len()).map(|_| rnd() as u8).collect();
    let q0 = ActQuant::new(0.04, 10).unwrap();
    let q1 = ActQuant::new(0.06, 130).unwrap();
    for (i, &(x_q, y_q, act)) in params().iter().enumerate() {
        let inputs = [(&x0[..], s0, q0), (&x1[..], s1, q1)];
        let (expected, _) = build().forward_concat(&inputs, x_q, y_q, act).unwrap();
        for threads in [1, 3] {
            let (y, _) = pool(threads)
                .install(|| kept.forward_concat(&inputs, x_q, y_q, act))
                .unwrap();
            assert_eq!(y, expected, "call {i} on {threads} threads");
        }
    }
}

#[test]
fn transpose_cached_calls_match_fresh_calls() {
    // Kernel = stride 2 (direct spread or GEMM), with and without output padding (scatter),
    // and an overlapping layer (reference only).
    let geometries = [
        ConvTranspose2dGeometry::new(8, 16, (2, 2)).with_stride(2, 2),
        ConvTranspose2dGeometry::new(8, 8, (2, 2))
            .with_stride(2, 2)
            .with_output_padding(1, 1),
        ConvTranspose2dGeometry::new(4, 6, (3, 3))
            .with_stride(2, 2)
            .with_padding(1, 1),
    ];
    for (gi, g) in geometries.into_iter().enumerate() {
        let mut rnd = rng(10 + gi as u64);
        let c_out = g.c_out;
        let wts: Vec<i8> = (0..g.c_in * c_out * g.taps()).map(|_| rnd() as i8).collect();
        let wq = ConvWeightQuant::per_channel((0..c_out).map(|i| 0.002 + i as f32 * 1e-4).collect(), vec![0; c_out])
            .unwrap();
        let bias: Vec<f32> = (0..c_out).map(|i| i as f32 * 0.1 - 0.3).collect();
        let build = || PackedConvTranspose2d::new(g, &wts, wq.clone(), Some(bias.clone())).unwrap();
        let kept = build();
        let xs = NhwcShape::new(2, 4, 5, g.c_in);
        let x: Vec<u8> = (0..xs.len()).map(|_| rnd() as u8).collect();
        let ys = kept.output_shape(xs).unwrap();
        type Run<'a> = Box<dyn Fn(&PackedConvTranspose2d, Params, &mut [u8]) + Sync + 'a>;
        let mut runs: Vec<(String, Run)> = vec![(
            "reference".into(),
            Box::new(|t, (xq, yq, a), y| t.run_with(None, &x, xs, xq, yq, a, y).unwrap()),
        )];
        if g.kernel == g.stride && g.padding == (0, 0) {
            for path in qkernels::gemm::available_paths() {
                let x = &x;
                runs.push((
                    format!("{path:?}"),
                    Box::new(move |t, (xq, yq, a), y| t.run_with(Some(path), x, xs, xq, yq, a, y).unwrap()),
                ));
            }
        }
        if kept.has_direct() {
            runs.push((
                "direct".into(),
                Box::new(|t, (xq, yq, a), y| t.run_direct(&x, xs, xq, yq, a, y).unwrap()),
            ));
        }
        for (name, run) in &runs {
            for (i, &p) in params().iter().enumerate() {
                let mut expected = vec![0u8; ys.len()];
                runs[0].1(&build(), p, &mut expected);
                let mut fresh = vec![0u8; ys.len()];
                run(&build(), p, &mut fresh);
                assert_eq!(fresh, expected, "{g:?} {name} call {i}: fresh vs reference");
                for threads in [1, 3] {
                    let mut y = vec![0u8; ys.len()];
                    pool(threads).install(|| run(&kept, p, &mut y));
                    assert_eq!(y, expected, "{g:?} {name} call {i} on {threads} threads");
                }
            }
        }
    }
}

#[test]
fn one_convolution_used_from_several_threads_at_once() {
    let geometries = [
        Conv2dGeometry::new(48, 48, (3, 3)).with_padding(1, 1).with_groups(48),
        Conv2dGeometry::new(8, 32, (3, 3)).with_padding(1, 1),
    ];
    for (gi, g) in geometries.into_iter().enumerate() {
        let mut rnd = rng(20 + gi as u64);
        let wts: Vec<i8> = (0..g.c_out * g.depth()).map(|_| rnd() as i8).collect();
        let wq = ConvWeightQuant::per_tensor(0.003, 0).unwrap();
        let conv = PackedConv2d::new(g, &wts, wq, None).unwrap();
        let xs = NhwcShape::new(1, 6, 6, g.c_in);
        let x: Vec<u8> = (0..xs.len()).map(|_| rnd() as u8).collect();
        let all = params();
        let expected: Vec<Vec<u8>> = all
            .iter()
            .map(|&(xq, yq, a)| {
                let fresh = PackedConv2d::new(g, &wts, ConvWeightQuant::per_tensor(0.003, 0).unwrap(), None).unwrap();
                let mut y = vec![0u8; conv.output_shape(xs).unwrap().len()];
                fresh.run_with(ConvPath::Reference, &x, xs, xq, yq, a, &mut y).unwrap();
                y
            })
            .collect();
        std::thread::scope(|s| {
            for t in 0..4 {
                let (conv, x, all, expected) = (&conv, &x, &all, &expected);
                s.spawn(move || {
                    for round in 0..20 {
                        let i = (round * 3 + t) % all.len();
                        let (xq, yq, a) = all[i];
                        let (y, _) = conv.forward(x, xs, xq, yq, a).unwrap();
                        assert_eq!(y, expected[i], "{g:?} thread {t} round {round}");
                    }
                });
            }
        });
        // A clone keeps computing the same integers.
        let copy = conv.clone();
        let (xq, yq, a) = all[1];
        assert_eq!(copy.forward(&x, xs, xq, yq, a).unwrap().0, expected[1]);
    }
}

#[test]
fn packed_convolutions_stay_clone_debug_send_sync() {
    fn check<T: Clone + std::fmt::Debug + Send + Sync>() {}
    check::<PackedConv2d>();
    check::<PackedConvTranspose2d>();
}
