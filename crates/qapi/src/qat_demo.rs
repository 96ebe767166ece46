//! The quantization-aware training demonstration: a procedurally generated 10-class 32x32 RGB
//! shape dataset (seeded; shapes at random positions, sizes, colours, with clutter and noise),
//! a small MobileNetV2 (inverted residuals, depthwise convolutions) trained in fp32, then
//! post-training int8 (histogram calibration) and QAT int8 fine-tuning, each scored on a
//! held-out split with the int8 numerics simulated by `dequantize(quantize(.))` at the
//! converted qparams. Reports accuracy, fp32 latency, model sizes and training step times.

use std::time::Instant;

use qgraph::train::{evaluate, fit, Adam, Dataset, FitConfig, Loss, Optimizer, Rng, Sgd, Targets, TrainModel};
use qgraph::{Graph, Op, Value};
use qtensor::Tensor;

use crate::models::{mobilenet_v2, MobileNetV2Config};
use crate::qat::{calibrate, convert, freeze_bn_stats, prepare_qat, simulate_quantized, GraphQParams, SimulatedRanges};
use crate::{QConfig, QConfigMap, Result};

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
    pub ptq_accuracy: f32,
    pub qat_accuracy: f32,
    /// fp32 forward of one image (graph executor), median milliseconds.
    pub fp32_latency_ms: f64,
    pub fp32_bytes: usize,
    /// int8 weights, f32 biases, per-channel scales and zero points.
    pub int8_bytes: usize,
    pub parameters: usize,
    /// Mean wall time of one fp32 / QAT training step (batch `batch_size`), milliseconds.
    pub fp32_step_ms: f64,
    pub qat_step_ms: f64,
    pub fp32_epoch_loss: Vec<f32>,
    pub qat_epoch_loss: Vec<f32>,
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
fn int8_accuracy(graph: &Graph, qparams: &GraphQParams, ranges: SimulatedRanges, data: &Dataset) -> Result<f32> {
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

fn sizes(graph: &Graph) -> (usize, usize, usize) {
    let (mut params, mut fp32, mut int8) = (0, 0, 0);
    for n in graph.nodes() {
        for (name, t) in &n.params {
            params += t.numel();
            fp32 += 4 * t.numel();
            let weight = name == "weight" && matches!(n.op, Op::Conv2d(_) | Op::Linear(_));
            // int8 weights plus a scale and zero point per output channel.
            int8 += if weight {
                t.numel() + 8 * t.shape()[0]
            } else {
                4 * t.numel()
            };
        }
    }
    (params, fp32, int8)
}

fn median_latency_ms(graph: &Graph, x: &Tensor) -> Result<f64> {
    let mut times = Vec::new();
    for _ in 0..7 {
        let start = Instant::now();
        graph.run(vec![Value::F32(x.clone())])?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
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

    // Post-training static quantization (histogram activations, per-channel weights).
    let mut fused = graph.clone();
    fused.fuse_auto()?;
    let ptq_config = QConfig::qforge();
    let calib: Vec<Tensor> = train
        .batches(64, None, 0)
        .into_iter()
        .take(config.calibration_images.div_ceil(64).max(1))
        .map(|b| b.inputs)
        .collect();
    let ptq_qparams = calibrate(&fused, &QConfigMap::new(Some(ptq_config)), &calib)?;
    let ptq_accuracy = int8_accuracy(&fused, &ptq_qparams, SimulatedRanges::of(&ptq_config)?, &test)?;

    // Quantization-aware fine-tuning from the fp32 weights.
    let qat_config = QConfig::qat(false);
    let mut qat = prepare_qat(&graph, &QConfigMap::new(Some(qat_config)))?;
    let mut sgd = Sgd::new(2e-3).momentum(0.9);
    let mut qat_fit = FitConfig::new(config.qat_epochs, config.batch_size, Loss::CrossEntropy);
    qat_fit.progress = config.progress;
    qat_fit.shuffle_seed = Some(config.seed + 1);
    let qat_epochs = config.qat_epochs;
    let qat_history = fit(&mut qat.model, &mut sgd, &train, &qat_fit, |epoch, model, _| {
        // PyTorch's recipe: train with live BatchNorm statistics, freeze them for the last epoch.
        if qat_epochs >= 2 && epoch + 1 == qat_epochs {
            freeze_bn_stats(model);
        }
    })?;
    qat.freeze_bn_stats();
    qat.disable_observers();
    let (qat_graph, qat_qparams) = convert(&qat)?;
    let qat_accuracy = int8_accuracy(&qat_graph, &qat_qparams, SimulatedRanges::of(&qat_config)?, &test)?;

    let (parameters, fp32_bytes, int8_bytes) = sizes(&fused);
    let one = test.select(&[0]).inputs;
    let step_ms =
        |h: &[qgraph::train::EpochMetrics]| h.iter().map(|e| e.step_seconds).sum::<f64>() * 1e3 / h.len().max(1) as f64;
    Ok(DemoResult {
        fp32_accuracy,
        ptq_accuracy,
        qat_accuracy,
        fp32_latency_ms: median_latency_ms(&fused, &one)?,
        fp32_bytes,
        int8_bytes,
        parameters,
        fp32_step_ms: step_ms(&fp32_history),
        qat_step_ms: step_ms(&qat_history),
        fp32_epoch_loss: fp32_history.iter().map(|e| e.train.loss).collect(),
        qat_epoch_loss: qat_history.iter().map(|e| e.train.loss).collect(),
    })
}
