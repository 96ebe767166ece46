//! Model benchmarks: latency of a graph at a given thread count, model sizes on disk, and the
//! standard CNN set (MobileNetV2, ResNet18 at 224x224, the UNet at 256x256) in fp32 and static
//! int8. Used by `qforge bench` and `qforge demo`.

use std::time::Instant;

use qgraph::{Graph, Value};
use qtensor::Tensor;

use crate::models::{mobilenet_v2, resnet18, unet, MobileNetV2Config, ResNet18Config, UNetConfig};
use crate::{file_size, prepare, ApiError, QConfigMap, Result};

/// One benchmark row (serialized as `{"suite":"model",...}` JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelBench {
    pub model: String,
    pub mode: String,
    pub batch: usize,
    /// Sequence length (text models) or image side (vision models).
    pub seq_or_hw: (&'static str, usize),
    pub threads: usize,
    pub median_ms: f64,
    pub size_bytes: usize,
}

impl ModelBench {
    /// One JSON line.
    pub fn json(&self) -> String {
        format!(
            "{{\"suite\":\"model\",\"model\":\"{}\",\"mode\":\"{}\",\"batch\":{},\"{}\":{},\"threads\":{},\"median_ms\":{:.4},\"size_bytes\":{}}}",
            self.model, self.mode, self.batch, self.seq_or_hw.0, self.seq_or_hw.1, self.threads, self.median_ms, self.size_bytes
        )
    }
}

/// Median wall time of `f` in milliseconds, after `warmup` unmeasured calls.
pub fn median_ms<E>(
    mut f: impl FnMut() -> std::result::Result<(), E>,
    warmup: usize,
    reps: usize,
) -> std::result::Result<f64, E> {
    median_ms_on(|| (), |()| f(), warmup, reps)
}

/// [`median_ms`] of `f` on an input that `setup` makes before each call, outside the timed
/// span: a graph takes its inputs by value, and the copy of a benchmark image is not part of
/// the model's latency (a caller hands over each new input; the peers time `model(x)` on an
/// existing tensor).
pub fn median_ms_on<I, E>(
    mut setup: impl FnMut() -> I,
    mut f: impl FnMut(I) -> std::result::Result<(), E>,
    warmup: usize,
    reps: usize,
) -> std::result::Result<f64, E> {
    for _ in 0..warmup {
        f(setup())?;
    }
    let mut times = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let input = setup();
        let t = Instant::now();
        f(input)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Runs `f` on a rayon pool of `threads` threads.
pub fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> Result<T> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .map_err(|e| ApiError::Config {
            detail: format!("cannot start {threads} threads: {e}"),
        })?;
    Ok(pool.install(f))
}

/// Seeded standard-normal values (Box-Muller over a 64-bit LCG).
pub fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (uniform(), uniform());
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
        })
        .collect()
}

/// The vision models of the benchmark table.
pub const CNN_MODELS: [&str; 3] = ["mobilenet_v2", "resnet18", "unet"];

/// A vision model with seeded random weights (as the peers' script uses) and its input shape.
pub fn cnn(name: &str, batch: usize) -> Result<(Graph, Vec<usize>)> {
    Ok(match name {
        "mobilenet_v2" => {
            let c = MobileNetV2Config {
                batch,
                ..MobileNetV2Config::torchvision()
            };
            (mobilenet_v2(&c)?, vec![batch, 3, 224, 224])
        }
        "resnet18" => {
            let c = ResNet18Config {
                batch,
                ..ResNet18Config::default()
            };
            (resnet18(&c)?, vec![batch, 3, 224, 224])
        }
        "unet" => {
            let c = UNetConfig {
                batch,
                ..UNetConfig::default()
            };
            (unet(&c)?, vec![batch, 3, 256, 256])
        }
        other => {
            return Err(ApiError::Config {
                detail: format!("unknown model `{other}`; expected one of {CNN_MODELS:?}"),
            })
        }
    })
}

fn image(shape: &[usize], seed: u64) -> Result<Vec<Value>> {
    Ok(vec![Value::F32(Tensor::new(
        shape.to_vec(),
        normal(shape.iter().product(), seed),
    )?)])
}

/// Statically quantizes a vision model with `config`, calibrated on `batches` random images.
pub fn static_int8(graph: &Graph, shape: &[usize], config: &QConfigMap, batches: usize) -> Result<Graph> {
    let mut prepared = prepare(graph, config)?;
    let inputs = (0..batches as u64)
        .map(|i| image(shape, 1000 + i))
        .collect::<Result<Vec<_>>>()?;
    prepared.calibrate(inputs)?;
    Ok(prepared.convert()?.0)
}

/// A vision model at batch 1 in `mode` (`fp32`, or `static`: quantized with the qforge
/// defaults, calibrated on 4 random images) and the seeded random image it is benchmarked on.
pub fn cnn_input(name: &str, mode: &str) -> Result<(Graph, Vec<Value>)> {
    let (graph, shape) = cnn_in_mode(name, mode)?;
    Ok((graph, image(&shape, 7)?))
}

/// A vision model at batch 1 in `mode`, with its input shape.
fn cnn_in_mode(name: &str, mode: &str) -> Result<(Graph, Vec<usize>)> {
    let (graph, shape) = cnn(name, 1)?;
    let graph = match mode {
        "fp32" => graph,
        "static" => static_int8(&graph, &shape, &QConfigMap::qforge(), 4)?,
        other => {
            return Err(ApiError::Config {
                detail: format!("mode `{other}` is not available for {name}; use fp32 or static"),
            })
        }
    };
    Ok((graph, shape))
}

/// Latency (batch `shape[0]`, `threads` threads) and file size of a model in `mode`
/// (`fp32` or `static`).
pub fn bench_cnn(name: &str, mode: &str, threads: usize, reps: usize) -> Result<ModelBench> {
    let (graph, shape) = cnn_in_mode(name, mode)?;
    let x = image(&shape, 7)?;
    let median = with_threads(threads, || {
        median_ms_on(
            || x.clone(),
            |x| graph.run(x).map(|_| ()).map_err(ApiError::from),
            2,
            reps,
        )
    })??;
    Ok(ModelBench {
        model: name.to_string(),
        mode: mode.to_string(),
        batch: shape[0],
        seq_or_hw: ("hw", shape[2]),
        threads,
        median_ms: median,
        size_bytes: file_size(&graph)?,
    })
}

/// Time spent in each node of one run (from the end of the previous node to the end of this
/// one), slowest first: (node name, op name, ms).
pub fn profile(graph: &Graph, inputs: Vec<Value>) -> Result<Vec<(String, String, f64)>> {
    let mut rows = Vec::new();
    let mut last = Instant::now();
    graph.run_with(inputs, |node, _| {
        let now = Instant::now();
        rows.push((
            node.name.clone(),
            node.op.display_name(),
            (now - last).as_secs_f64() * 1e3,
        ));
        last = now;
        Ok(())
    })?;
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    Ok(rows)
}

/// Statically quantized vision model `name` (seeded weights, random calibration) and an input.
pub fn static_cnn(name: &str) -> Result<(Graph, Vec<Value>)> {
    let (graph, shape) = cnn(name, 1)?;
    let q = static_int8(&graph, &shape, &QConfigMap::qforge(), 4)?;
    Ok((q, image(&shape, 7)?))
}
