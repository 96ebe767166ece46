//! Error paths: validation (shape errors naming the node, cycles, dangling inputs, duplicate
//! names), run-time input checks, and observers (non-finite values, empty calibration).

use qgraph::observers::{
    EntropyCalibrator, HistogramObserver, MinMaxObserver, PerChannelMinMaxObserver, PercentileCalibrator,
};
use qgraph::{Graph, GraphBuilder, GraphError, NamedNode, Observer, ObserverConfig, ObserverKind, Op, Value};
use qtensor::{DType, QParams, QuantSpec, Scheme, Tensor};

#[test]
fn shape_errors_name_the_node() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[2, 8]);
    let h = b.linear("encoder.layer.0.dense", x, 8, 4);
    let y = b.linear("encoder.layer.0.output", h, 5, 2);
    b.output(y);
    let err = b.build().unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("encoder.layer.0.output") && msg.contains("[2, 4]"),
        "{msg}"
    );

    let mut b = GraphBuilder::new();
    let x = b.input("x", &[1, 3, 4, 4]);
    let y = b.input("y", &[1, 2, 4, 4]);
    let s = b.add("sum", x, y);
    b.output(s);
    assert!(b.build().unwrap_err().to_string().contains("`sum`"));
}

#[test]
fn cycles_dangling_inputs_and_duplicates() {
    let n = |name: &str, op: Op, inputs: &[&str]| NamedNode {
        name: name.into(),
        op,
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
    };
    let input = || Op::Input {
        shape: vec![1, 4],
        ty: qgraph::ValueType::F32,
    };
    let cyc = Graph::from_named(
        vec![
            n("x", input(), &[]),
            n("a", Op::Add, &["x", "b"]),
            n("b", Op::Relu, &["a"]),
        ],
        &["b"],
    );
    assert!(matches!(cyc, Err(GraphError::Cycle { .. })), "{cyc:?}");
    let dangling = Graph::from_named(vec![n("x", input(), &[]), n("r", Op::Relu, &["nope"])], &["r"]);
    match dangling {
        Err(GraphError::DanglingInput { node, input }) => assert_eq!((node.as_str(), input.as_str()), ("r", "nope")),
        other => panic!("{other:?}"),
    }
    let dup = Graph::from_named(vec![n("x", input(), &[]), n("x", Op::Relu, &[])], &["x"]);
    assert!(matches!(dup, Err(GraphError::DuplicateName { .. })));
    // Out-of-order names are sorted topologically.
    let ok = Graph::from_named(
        vec![
            n("r2", Op::Relu, &["r1"]),
            n("r1", Op::Relu, &["x"]),
            n("x", input(), &[]),
        ],
        &["r2"],
    )
    .unwrap();
    assert_eq!(
        ok.nodes().iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["x", "r1", "r2"]
    );
    assert!(matches!(
        Graph::from_named(vec![n("x", input(), &[])], &[]),
        Err(GraphError::NoOutputs)
    ));
}

#[test]
fn run_time_input_errors() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[1, 4]);
    let y = b.linear("fc", x, 4, 2);
    b.output(y);
    let g = b.build().unwrap();
    assert!(matches!(
        g.run(vec![]),
        Err(GraphError::InputCount { expected: 1, got: 0 })
    ));
    let err = g.run(vec![Value::F32(Tensor::zeros([1, 5]))]).unwrap_err();
    assert!(err.to_string().contains("`fc`"), "{err}");
    let err = g.run(vec![Value::F32(Tensor::zeros([4]))]).unwrap_err();
    assert!(err.to_string().contains("`x`"), "{err}");
    // Another batch size runs.
    assert_eq!(
        g.run(vec![Value::F32(Tensor::zeros([3, 4]))]).unwrap()[0].shape(),
        &[3, 2]
    );
}

#[test]
fn observer_errors() {
    let spec = QuantSpec::activation_default();
    let bad = Tensor::new([3], vec![0.0, f32::NAN, 1.0]).unwrap();
    let configs = [
        ObserverKind::MinMax,
        ObserverKind::MovingAverageMinMax {
            averaging_constant: 0.01,
        },
        ObserverKind::PerChannelMinMax { axis: 0 },
        ObserverKind::MovingAveragePerChannelMinMax {
            axis: 0,
            averaging_constant: 0.01,
        },
        ObserverKind::Histogram { bins: 2048 },
        ObserverKind::Percentile {
            bins: 2048,
            percentile: 99.999,
        },
        ObserverKind::Entropy {
            bins: 128,
            quantized_bins: 128,
        },
    ];
    for kind in configs {
        let mut obs = ObserverConfig::new(kind, spec).build("block.conv1");
        match obs.qparams() {
            Err(GraphError::EmptyCalibration { node }) => assert_eq!(node, "block.conv1"),
            other => panic!("{kind:?}: expected empty calibration, got {other:?}"),
        }
        // An empty batch is not data.
        obs.observe(&Tensor::zeros([0])).unwrap();
        assert!(obs.qparams().is_err());
        match obs.observe(&bad) {
            Err(GraphError::NonFiniteObservation { node, index, .. }) => {
                assert_eq!((node.as_str(), index), ("block.conv1", 1))
            }
            other => panic!("{kind:?}: expected a non-finite error, got {other:?}"),
        }
        let inf = Tensor::new([2], vec![f32::INFINITY, 0.0]).unwrap();
        assert!(obs.observe(&inf).is_err());
    }
    let mut pc = PerChannelMinMaxObserver::new(QuantSpec::weight_default(), 3).labeled("fc");
    assert!(pc
        .observe(&Tensor::zeros([2, 2]))
        .unwrap_err()
        .to_string()
        .contains("fc"));
}

#[test]
fn calibrators_pick_sensible_ranges() {
    // 10000 values spread over [-1, 1] plus one outlier at 100: percentile and entropy clip the
    // outlier, min-max keeps it.
    let mut v: Vec<f32> = (0..10_000).map(|i| (i as f32 / 9_999.0) * 2.0 - 1.0).collect();
    v.push(100.0);
    let x = Tensor::new([v.len()], v).unwrap();
    let spec = QuantSpec::new(DType::QInt8, Scheme::Symmetric);
    let mut mm = MinMaxObserver::new(spec);
    mm.observe(&x).unwrap();
    assert_eq!(mm.range(), Some((-1.0, 100.0)));
    let mut pct = PercentileCalibrator::new(spec, 2048, 99.9);
    pct.observe(&x).unwrap();
    let (lo, hi) = pct.range().unwrap();
    assert!(lo == -hi && hi > 0.9 && hi < 1.1, "{lo} {hi}");
    let mut ent = EntropyCalibrator::new(QuantSpec::activation_default(), 128, 128);
    ent.observe(&x).unwrap();
    // Second batch widens the histogram.
    ent.observe(&Tensor::new([2], vec![-150.0, 0.0]).unwrap()).unwrap();
    let (lo, hi) = ent.range().unwrap();
    assert!(lo >= -150.0 && hi <= 100.0 && lo < hi, "{lo} {hi}");
    let mut hist = HistogramObserver::new(QuantSpec::activation_default());
    hist.observe(&x).unwrap();
    let (lo, hi) = hist.search_range().unwrap();
    assert!(hi < 100.0 && lo <= -0.9, "{lo} {hi}");
    assert!(matches!(hist.qparams().unwrap(), QParams::PerTensor { .. }));
}
