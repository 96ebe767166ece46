//! Training step time of the QAT demo network (batch 32, median of 30 steps after 5 warm-up):
//! fp32 with Adam and QAT (fused ConvBn modules, fake quantization) with SGD, the same network
//! and schedule as `/work/notes/qat_train_step_torch.py` measures in PyTorch. Run with
//! `RAYON_NUM_THREADS=1` for the single-thread figure.
//! `cargo run --release -p qapi --example qat_train_step [width]`

use std::time::Instant;

use qapi::qat::prepare_qat;
use qapi::qat_demo::{demo_network, CLASSES};
use qapi::{QConfig, QConfigMap};
use qgraph::train::{Adam, Loss, Optimizer, Rng, Sgd, Targets, TrainModel};
use qtensor::Tensor;

fn step_ms(model: &mut TrainModel, opt: &mut dyn Optimizer, x: &Tensor, targets: &Targets) -> f64 {
    let mut step = || {
        let t0 = Instant::now();
        model.zero_grad();
        let out = model.forward(std::slice::from_ref(x)).expect("forward");
        let (_, grad) = Loss::CrossEntropy.forward(&out[0], targets).expect("loss");
        model.backward(&[grad]).expect("backward");
        opt.step(model);
        t0.elapsed().as_secs_f64() * 1e3
    };
    for _ in 0..5 {
        step();
    }
    let mut times: Vec<f64> = (0..30).map(|_| step()).collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let width: f32 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0.5);
    let graph = demo_network(width, 0).expect("network");
    let mut rng = Rng::new(0);
    let x = Tensor::new([32, 3, 32, 32], (0..32 * 3 * 32 * 32).map(|_| rng.normal()).collect()).expect("input");
    let targets = Targets::Classes((0..32).map(|_| rng.below(CLASSES)).collect());
    let mut fp32 = TrainModel::from_graph(&graph, 0).expect("model");
    println!("params {}", fp32.parameter_count());
    println!(
        "fp32 step {:.2} ms",
        step_ms(&mut fp32, &mut Adam::new(3e-3), &x, &targets)
    );
    let mut qat = prepare_qat(&graph, &QConfigMap::new(Some(QConfig::qat(false)))).expect("prepare_qat");
    let mut sgd = Sgd::new(2e-3).momentum(0.9);
    println!("QAT step {:.2} ms", step_ms(&mut qat.model, &mut sgd, &x, &targets));
}
