//! The quantization-aware training demonstration: a procedurally generated 10-class 32x32 RGB
//! shape dataset (seeded; shapes at random positions, sizes, colours, with clutter and noise),
//! a small MobileNetV2 (inverted residuals, depthwise convolutions) trained in fp32, then
//! post-training static int8 (`prepare` / `calibrate` / `convert`, `QConfig::qforge`) and QAT
//! int8 (fine-tuned, then the learned parameters through `Prepared::convert_with`), both scored
//! as real int8 graphs on a held-out split. Reports accuracy, int8 and fp32 latency (batch 1,
//! one thread), model file sizes and training step times.
//!
//! The QAT schedule follows PyTorch's recipe: SGD with a small learning rate (1e-4, momentum
//! 0.9; the step the fp32 cosine schedule ended near), BatchNorm statistics frozen and
//! observers disabled for the last epoch. A large fine-tuning step (2e-3 with momentum, twenty
//! times more) moves the trained network away from its optimum, float or quantized alike, and
//! with frozen statistics costs several points.

use qgraph::train::{evaluate, fit, Adam, Dataset, FitConfig, Loss, Optimizer, Rng, Sgd, Targets, TrainModel};
use qgraph::{Graph, Value};
use qtensor::Tensor;

use crate::models::{mobilenet_v2, MobileNetV2Config};
use crate::qat::{
    convert, convert_int8, disable_observers, freeze_bn_stats, prepare_qat, simulate_quantized, GraphQParams,
    SimulatedRanges,
};
use crate::{file_size, QConfig, QConfigMap, Result};

/// Number of classes of [`shapes_dataset`].
pub const CLASSES: usize = 10;

/// Demo sizes and schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoConfig {
    pub train_images: usize,
    pub test_images: usize,
    pub fp32_epochs: usize,
    pub qat_epochs: usize,
    pub batch_size: usize,
    pub width_mult: f32,
    pub calibration_images: usize,
    pub seed: u64,
    /// Draw progress lines on a terminal.
    pub progress: bool,
}

impl DemoConfig {
    /// The scale of the CLI's `demo` row: runs in well under a minute on one core.
    pub fn quick() -> DemoConfig {
        DemoConfig {
            train_images: 2000,
            test_images: 500,
            fp32_epochs: 6,
            qat_epochs: 2,
            calibration_images: 128,
            progress: false,
            ..DemoConfig::default()
        }
    }
}

impl Default for DemoConfig {
    fn default() -> DemoConfig {
        DemoConfig {
            train_images: 4000,
            test_images: 1000,
            fp32_epochs: 8,
            qat_epochs: 3,
            batch_size: 32,
            width_mult: 0.5,
            calibration_images: 256,
            seed: 0,
            progress: true,
        }
    }
}

/// What the demo measured.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoResult {
    pub fp32_accuracy: f32,
    /// Static post-training int8 graph (histogram calibration), run with the int8 kernels.
    pub ptq_accuracy: f32,
    /// QAT int8 graph (learned parameters through `convert_with`), run with the int8 kernels.
    pub qat_accuracy: f32,
    /// The QAT model under `dequantize(quantize(.))` simulation (cross-check of the above).
    pub qat_simulated_accuracy: f32,
    /// One image, one thread, median milliseconds: fused fp32 graph and QAT int8 graph.
    pub fp32_latency_ms: f64,
    pub int8_latency_ms: f64,
    /// Model file sizes (`qapi::file_size`): fused fp32 graph and QAT int8 graph.
    pub fp32_bytes: usize,
    pub int8_bytes: usize,
    pub parameters: usize,
    /// Mean wall time of one fp32 / QAT training step (batch `batch_size`), milliseconds.
    pub fp32_step_ms: f64,
    pub qat_step_ms: f64,
    pub fp32_epoch_loss: Vec<f32>,
    pub qat_epoch_loss: Vec<f32>,
}

impl std::fmt::Display for DemoResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "accuracy: fp32 {:.2}% | PTQ int8 {:.2}% | QAT int8 {:.2}% (simulated {:.2}%)",
            self.fp32_accuracy * 100.0,
            self.ptq_accuracy * 100.0,
            self.qat_accuracy * 100.0,
            self.qat_simulated_accuracy * 100.0
        )?;
        writeln!(
            f,
            "latency (batch 1, 1 thread): fp32 {:.3} ms | int8 {:.3} ms ({:.2}x)",
            self.fp32_latency_ms,
            self.int8_latency_ms,
            self.fp32_latency_ms / self.int8_latency_ms.max(1e-9)
        )?;
        write!(
            f,
            "size: fp32 {:.1} KiB | int8 {:.1} KiB ({:.2}x smaller), {} parameters",
            self.fp32_bytes as f64 / 1024.0,
            self.int8_bytes as f64 / 1024.0,
            self.fp32_bytes as f64 / self.int8_bytes.max(1) as f64,
            self.parameters
        )
    }
}

/// One image of class `class`: a shape over a random background with clutter and noise,
/// values normalized to roughly zero mean and unit spread.
fn draw(class: usize, rng: &mut Rng) -> Vec<f32> {
    const S: usize = 32;
    let bg: [f32; 3] = [rng.range(0.0, 0.6), rng.range(0.0, 0.6), rng.range(0.0, 0.6)];
    let mut fg: [f32; 3] = [rng.range(0.0, 1.0), rng.range(0.0, 1.0), rng.range(0.0, 1.0)];
    // Keep the shape visible: at least 0.35 away from the background in some channel.
    let k = rng.below(3);
    fg[k] = if bg[k] < 0.3 {
        rng.range(bg[k] + 0.35, 1.0)
    } else {
        rng.range(0.0, bg[k] - 0.3)
    };
    let (cx, cy) = (rng.range(10.0, 22.0), rng.range(10.0, 22.0));
    let r = rng.range(5.0, 9.5);
    let t = rng.range(1.2, 2.4);
    let period = rng.range(3.5, 5.5);
    let inside = |x: f32, y: f32| -> bool {
        let (dx, dy) = (x - cx, y - cy);
        let d = (dx * dx + dy * dy).sqrt();
        match class {
            0 => d < r,
            1 => (d - r).abs() < t,
            2 => dx.abs() < r * 0.85 && dy.abs() < r * 0.85,
            3 => dx.abs().max(dy.abs()) < r * 0.85 && dx.abs().max(dy.abs()) > r * 0.85 - 2.0 * t,
            4 => dx.abs() < r && dy.abs() < r && (dy / period).rem_euclid(2.0) < 1.0,
            5 => dx.abs() < r && dy.abs() < r && (dx / period).rem_euclid(2.0) < 1.0,
            6 => (dx - dy).abs() < t * 1.4 && d < r,
            7 => (dx + dy).abs() < t * 1.4 && d < r,
            8 => (dx.abs() < t || dy.abs() < t) && dx.abs() < r && dy.abs() < r,
            _ => dy < r * 0.7 && dy > -r && dx.abs() < (dy + r) * 0.55,
        }
    };
    // Clutter: a few random dots in the foreground colour.
    let dots: Vec<(f32, f32)> = (0..rng.below(4))
        .map(|_| (rng.range(0.0, 32.0), rng.range(0.0, 32.0)))
        .collect();
    let mut img = vec![0.0f32; 3 * S * S];
    for y in 0..S {
        for x in 0..S {
            let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
            let on = inside(fx, fy)
                || dots
                    .iter()
                    .any(|(px, py)| (fx - px).abs() < 1.0 && (fy - py).abs() < 1.0);
            for c in 0..3 {
                let v = if on { fg[c] } else { bg[c] } + rng.normal() * 0.12;
                img[(c * S + y) * S + x] = (v - 0.45) / 0.3;
            }
        }
    }
    img
}

/// `n` images `[n, 3, 32, 32]` with balanced, shuffled labels, from `seed`.
pub fn shapes_dataset(n: usize, seed: u64) -> Result<Dataset> {
    let mut rng = Rng::new(seed);
    let mut labels: Vec<usize> = (0..n).map(|i| i % CLASSES).collect();
    rng.shuffle(&mut labels);
    let mut data = Vec::with_capacity(n * 3 * 32 * 32);
    for &l in &labels {
        data.extend(draw(l, &mut rng));
    }
    Ok(Dataset::new(
        Tensor::new([n, 3, 32, 32], data)?,
        Targets::Classes(labels),
    )?)
}

/// The demo network: a MobileNetV2 for 32x32 inputs (four inverted residual stages after the
/// stride-2 stem, 256-channel head).
pub fn demo_network(width_mult: f32, seed: u64) -> Result<Graph> {
    mobilenet_v2(&MobileNetV2Config {
        width_mult,
        num_classes: CLASSES,
        batch: 1,
        input_size: [32, 32],
        blocks: vec![(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 2)],
        first_stride: 2,
        last_channel: 256,
        dropout: 0.1,
        seed,
    })
}

/// Accuracy of the simulated int8 graph over `data`.
fn simulated_accuracy(graph: &Graph, qparams: &GraphQParams, ranges: SimulatedRanges, data: &Dataset) -> Result<f32> {
    let Targets::Classes(labels) = &data.targets else {
        unreachable!("classification data")
    };
    let mut correct = 0.0f32;
    for (batch, chunk) in data.batches(128, None, 0).iter().zip(labels.chunks(128)) {
        let out = simulate_quantized(graph, qparams, ranges, vec![batch.inputs.clone()])?.remove(0);
        correct += qgraph::train::accuracy(&out, chunk) * chunk.len() as f32;
    }
    Ok(correct / labels.len() as f32)
}

/// Accuracy of a graph (float or int8) run by the executor over `data`.
fn graph_accuracy(graph: &Graph, data: &Dataset) -> Result<f32> {
    let Targets::Classes(labels) = &data.targets else {
        unreachable!("classification data")
    };
    let mut correct = 0.0f32;
    for (batch, chunk) in data.batches(128, None, 0).iter().zip(labels.chunks(128)) {
        let out = graph.run(vec![Value::F32(batch.inputs.clone())])?.remove(0);
        let out = out.as_f32().ok_or_else(|| crate::ApiError::Config {
            detail: "the demo graph's output is not f32".into(),
        })?;
        correct += qgraph::train::accuracy(out, chunk) * chunk.len() as f32;
    }
    Ok(correct / labels.len() as f32)
}

fn parameter_count(graph: &Graph) -> usize {
    graph
        .nodes()
        .iter()
        .flat_map(|n| n.params.values())
        .map(|t| t.numel())
        .sum()
}

/// Median time of one forward of `x`, on one thread.
fn median_latency_ms(graph: &Graph, x: &Tensor) -> Result<f64> {
    let run = || graph.run(vec![Value::F32(x.clone())]).map(|_| ());
    Ok(crate::benchmark::with_threads(1, || {
        crate::benchmark::median_ms(run, 1, 15)
    })??)
}

/// Runs the whole demonstration (see the module docs).
pub fn run_demo(config: &DemoConfig) -> Result<DemoResult> {
    let _span = tracing::info_span!("qat_demo").entered();
    let all = shapes_dataset(config.train_images + config.test_images, config.seed)?;
    let (train, test) = all.split(config.test_images as f32 / all.len() as f32);

    // fp32 training.
    let mut graph = demo_network(config.width_mult, config.seed)?;
    let mut model = TrainModel::from_graph(&graph, config.seed)?;
    let mut fit_config = FitConfig::new(config.fp32_epochs, config.batch_size, Loss::CrossEntropy);
    fit_config.progress = config.progress;
    fit_config.shuffle_seed = Some(config.seed);
    let mut adam = Adam::new(3e-3);
    let base_lr = adam.learning_rate();
    let epochs = config.fp32_epochs.max(1);
    let fp32_history = fit(&mut model, &mut adam, &train, &fit_config, |epoch, _, opt| {
        // Cosine decay over the fp32 epochs.
        let t = epoch as f32 / epochs as f32;
        opt.set_learning_rate(base_lr * 0.5 * (1.0 + (std::f32::consts::PI * t).cos()));
    })?;
    let fp32_accuracy = evaluate(&mut model, &test, 128, Loss::CrossEntropy)?
        .accuracy
        .unwrap_or(0.0);
    model.write_back(&mut graph)?;

    // Post-training static quantization (histogram activations, per-channel weights), real int8.
    let mut fused = graph.clone();
    fused.fuse_auto()?;
    let calib: Vec<Vec<Value>> = train
        .batches(64, None, 0)
        .into_iter()
        .take(config.calibration_images.div_ceil(64).max(1))
        .map(|b| vec![Value::F32(b.inputs)])
        .collect();
    let mut prepared = crate::prepare(&graph, &QConfigMap::new(Some(QConfig::qforge())))?;
    prepared.calibrate(calib)?;
    let (ptq_graph, _) = prepared.convert()?;
    let ptq_accuracy = graph_accuracy(&ptq_graph, &test)?;

    // Quantization-aware fine-tuning from the fp32 weights (see the module docs).
    let qat_config = QConfig::qat(false);
    let qat_map = QConfigMap::new(Some(qat_config));
    let mut qat = prepare_qat(&graph, &qat_map)?;
    let mut sgd = Sgd::new(1e-4).momentum(0.9);
    let mut qat_fit = FitConfig::new(config.qat_epochs, config.batch_size, Loss::CrossEntropy);
    qat_fit.progress = config.progress;
    qat_fit.shuffle_seed = Some(config.seed + 1);
    let qat_epochs = config.qat_epochs;
    let qat_history = fit(&mut qat.model, &mut sgd, &train, &qat_fit, |epoch, model, _| {
        if qat_epochs >= 2 && epoch + 1 == qat_epochs {
            freeze_bn_stats(model);
            disable_observers(model);
        }
    })?;
    qat.freeze_bn_stats();
    qat.disable_observers();
    let (qat_graph, qat_qparams) = convert(&qat)?;
    let qat_simulated_accuracy =
        simulated_accuracy(&qat_graph, &qat_qparams, SimulatedRanges::of(&qat_config)?, &test)?;
    let (int8_graph, _) = convert_int8(&qat_graph, &qat_qparams, &qat_map)?;
    let qat_accuracy = graph_accuracy(&int8_graph, &test)?;

    let one = test.select(&[0]).inputs;
    let step_ms =
        |h: &[qgraph::train::EpochMetrics]| h.iter().map(|e| e.step_seconds).sum::<f64>() * 1e3 / h.len().max(1) as f64;
    Ok(DemoResult {
        fp32_accuracy,
        ptq_accuracy,
        qat_accuracy,
        qat_simulated_accuracy,
        fp32_latency_ms: median_latency_ms(&fused, &one)?,
        int8_latency_ms: median_latency_ms(&int8_graph, &one)?,
        fp32_bytes: file_size(&fused)?,
        int8_bytes: file_size(&int8_graph)?,
        parameters: parameter_count(&fused),
        fp32_step_ms: step_ms(&fp32_history),
        qat_step_ms: step_ms(&qat_history),
        fp32_epoch_loss: fp32_history.iter().map(|e| e.train.loss).collect(),
        qat_epoch_loss: qat_history.iter().map(|e| e.train.loss).collect(),
    })
}

/// The CLI `demo` row for QAT: [`run_demo`] at [`DemoConfig::quick`] scale (fp32 / PTQ int8 /
/// QAT int8 accuracy, int8 and fp32 latency, file sizes; print it with `Display`).
pub fn qat_row(progress: bool) -> Result<DemoResult> {
    run_demo(&DemoConfig {
        progress,
        ..DemoConfig::quick()
    })
}
