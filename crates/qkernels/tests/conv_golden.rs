//! `Conv2d` against PyTorch fbgemm golden vectors (tests/golden/conv2d.*), bit for bit, on
//! every path the geometry and the CPU allow.

mod common;

use common::{f, i, nchw_to_nhwc, Golden};
use qkernels::conv::{ActQuant, Conv2dGeometry, ConvWeightQuant, FusedActivation, NhwcShape, PackedConv2d};

#[test]
fn conv2d_matches_pytorch_fbgemm() {
    let g = Golden::load("conv2d");
    assert_eq!(g.cases.len(), 7);
    for (ci, case) in g.cases.iter().enumerate() {
        let xshape = g.shape(case, "x_q");
        let wshape = g.shape(case, "w_q");
        let (n, c, h, w) = (xshape[0], xshape[1], xshape[2], xshape[3]);
        let (o, k) = (wshape[0], wshape[2]);
        let s = i(case, "stride") as usize;
        let p = i(case, "padding") as usize;
        let d = i(case, "dilation") as usize;
        let groups = i(case, "groups") as usize;
        let geom = Conv2dGeometry::new(c, o, (k, k))
            .with_stride(s, s)
            .with_padding(p, p)
            .with_dilation(d, d)
            .with_groups(groups);
        let scales = g.f32s(case, "w_scales");
        let wq = ConvWeightQuant::per_channel(scales.clone(), vec![0; scales.len()]).unwrap();
        let conv = PackedConv2d::new(geom, &g.i8s(case, "w_q"), wq, Some(g.f32s(case, "bias"))).unwrap();
        let x = nchw_to_nhwc(&g.u8s(case, "x_q"), n, c, h, w);
        let xs = NhwcShape::new(n, h, w, c);
        let x_q = ActQuant::new(f(case, "x_scale"), i(case, "x_zero_point") as i32).unwrap();
        let y_q = ActQuant::new(f(case, "y_scale"), i(case, "y_zero_point") as i32).unwrap();
        let act = if case["relu"].as_bool().unwrap() {
            FusedActivation::Relu
        } else {
            FusedActivation::None
        };
        let yshape = g.shape(case, "y_q");
        let expected = nchw_to_nhwc(&g.u8s(case, "y_q"), yshape[0], yshape[1], yshape[2], yshape[3]);
        for path in conv.paths() {
            let ys = conv.output_shape(xs).unwrap();
            let mut y = vec![0u8; ys.len()];
            conv.run_with(path, &x, xs, x_q, y_q, act, &mut y).unwrap();
            let bad = y.iter().zip(&expected).filter(|(a, b)| a != b).count();
            assert_eq!(
                bad,
                0,
                "case {ci} ({geom:?}) on {path:?}: {bad} of {} values differ",
                y.len()
            );
        }
    }
}
