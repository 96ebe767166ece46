//! `qforge demo`: the supported dtypes, a quantize round trip, and a transformer quantized
//! dynamically (all-MiniLM-L6-v2 when fetched, else a random model of its shape, so the demo runs
//! offline): fp32 vs dynamic int8 latency at batch 1, sequence 128, sizes and cosine.

use qapi::models::bert::{last_hidden_state, mean_pool_normalize};
use qtensor::{DType, QParams, QTensor, QuantSpec, Scheme, Tensor};

use super::model::{bench_input, median_ms, minilm_or_random, prepare, with_threads, Mode, Preset};
use super::CliError;

#[derive(Debug, Default, clap::Args)]
pub struct Args {
    /// Skip the model rows (dtypes and round trip only).
    #[arg(long)]
    no_model: bool,
    /// Skip the quantization-aware training row (it trains a small network for ~30 s).
    #[arg(long)]
    no_qat: bool,
}

pub fn run(args: Args) -> Result<(), CliError> {
    println!("qforge: int8 quantization\n");
    println!("dtypes:");
    for d in DType::ALL {
        println!("  {:<9} [{}, {}]  {} bits", d.name(), d.qmin(), d.qmax(), d.bits());
    }
    println!("schemes: per-tensor / per-channel x affine / symmetric\n");

    let x = Tensor::new([8], (0..8).map(|i| (i as f32 - 3.2) * 0.7).collect())?;
    let (min, max) = x.min_max()?;
    for (dtype, scheme) in [(DType::QUInt8, Scheme::Affine), (DType::QInt8, Scheme::Symmetric)] {
        let (scale, zp) = QuantSpec::new(dtype, scheme).qparams_from_range(min, max)?;
        let q = QTensor::quantize(&x, dtype, QParams::per_tensor(scale, zp, dtype)?)?;
        let back = q.dequantize()?;
        let err = x
            .data()
            .iter()
            .zip(back.data())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        println!("{dtype} {scheme:?}: scale {scale:.6}, zero point {zp}");
        println!("  x      {:?}", x.data());
        println!("  q      {:?}", q.int_repr());
        println!("  max |x - dequantize(q)| = {err:.6}");
    }
    if args.no_model {
        return Ok(());
    }
    let mut rows = vec![transformer_row()?, static_row()?];
    if !args.no_qat {
        rows.push(qat_row()?);
    }
    print_table(&rows);
    Ok(())
}

/// A small MobileNetV2-style network trained on qforge's procedural 10-class images: fp32,
/// post-training int8 and quantization-aware-trained int8, all measured on a held-out split.
fn qat_row() -> Result<Row, CliError> {
    eprintln!("qat: training a small MobileNetV2 on generated 32x32 images (fp32, then QAT)...");
    let r = qapi::qat_demo::qat_row(std::io::IsTerminal::is_terminal(&std::io::stderr()))?;
    Ok(Row {
        route: "qat",
        model: "MobileNetV2-small 32x32, trained here".into(),
        fp32_ms: r.fp32_latency_ms,
        int8_ms: r.int8_latency_ms,
        fp32_bytes: r.fp32_bytes,
        int8_bytes: r.int8_bytes,
        accuracy: format!(
            "top-1 fp32 {:.1}% / PTQ {:.1}% / QAT {:.1}%",
            100.0 * r.fp32_accuracy,
            100.0 * r.ptq_accuracy,
            100.0 * r.qat_accuracy
        ),
    })
}

/// One line of the demo table.
struct Row {
    route: &'static str,
    model: String,
    fp32_ms: f64,
    int8_ms: f64,
    fp32_bytes: usize,
    int8_bytes: usize,
    accuracy: String,
}

fn print_table(rows: &[Row]) {
    println!("\nbatch 1, 1 thread, median latency; sizes are the model files on disk");
    println!("(dynamic: Linear and Embedding layers; static: every conv/linear/add/pool; qat: fine-tuned with fake quantization)");
    println!(
        "{:<8} {:<44} {:>9} {:>9} {:>8} {:>10} {:>10}  accuracy",
        "route", "model", "fp32 ms", "int8 ms", "speedup", "fp32 size", "int8 size"
    );
    for r in rows {
        println!(
            "{:<8} {:<44} {:>9.2} {:>9.2} {:>7.2}x {:>7.1} MB {:>7.1} MB  {}",
            r.route,
            r.model,
            r.fp32_ms,
            r.int8_ms,
            r.fp32_ms / r.int8_ms,
            r.fp32_bytes as f64 / 1e6,
            r.int8_bytes as f64 / 1e6,
            r.accuracy
        );
    }
}

fn transformer_row() -> Result<Row, CliError> {
    let model = minilm_or_random()?;
    eprintln!("dynamic: {}", model.source);
    let fp32 = prepare(&model.graph, Mode::Fp32, Preset::Qforge)?;
    let int8 = prepare(&model.graph, Mode::Dynamic, Preset::Qforge)?;
    let enc = bench_input(&model, 1, 128)?;
    let (t32, t8) = with_threads(1, || -> Result<(f64, f64), CliError> {
        let enc = &enc;
        let run = |g| move || last_hidden_state(g, enc).map(|_| ()).map_err(CliError::from);
        Ok((median_ms(1, 5, run(&fp32))?, median_ms(1, 5, run(&int8))?))
    })??;
    let e32 = mean_pool_normalize(&last_hidden_state(&fp32, &enc)?, &enc.attention_mask)?;
    let e8 = mean_pool_normalize(&last_hidden_state(&int8, &enc)?, &enc.attention_mask)?;
    let cos: f32 = e32.data().iter().zip(e8.data()).map(|(a, b)| a * b).sum();
    let name = if model.tokenizer.is_some() {
        "all-MiniLM-L6-v2, seq 128"
    } else {
        "MiniLM-L6 shape, random weights, seq 128"
    };
    Ok(Row {
        route: "dynamic",
        model: name.into(),
        fp32_ms: t32,
        int8_ms: t8,
        fp32_bytes: qapi::file_size(&fp32)?,
        int8_bytes: qapi::file_size(&int8)?,
        accuracy: format!("embedding cosine {cos:.4}"),
    })
}

/// ResNet18 (seeded random weights) statically quantized: latency, size, and how close the
/// int8 logits stay to fp32.
fn static_row() -> Result<Row, CliError> {
    use qapi::benchmark::{cnn, median_ms_on as median, normal, static_int8, with_threads as threads};
    let name = "resnet18";
    let (fp32, shape) = cnn(name, 1)?;
    let int8 = static_int8(&fp32, &shape, &qapi::QConfigMap::qforge(), 4)?;
    let x = vec![qgraph::Value::F32(Tensor::new(
        shape.clone(),
        normal(shape.iter().product(), 3),
    )?)];
    let (t32, t8) = threads(1, || -> qapi::Result<(f64, f64)> {
        let time = |g: &qgraph::Graph| {
            median(
                || x.clone(),
                |x| g.run(x).map(|_| ()).map_err(qapi::ApiError::from),
                1,
                5,
            )
        };
        Ok((time(&fp32)?, time(&int8)?))
    })??;
    let out = |g: &qgraph::Graph| -> Result<Vec<f32>, CliError> {
        let y = g.run(x.clone())?;
        Ok(y[0].as_f32().map(|t| t.data().to_vec()).unwrap_or_default())
    };
    let (a, b) = (out(&fp32)?, out(&int8)?);
    let argmax = |v: &[f32]| v.iter().enumerate().max_by(|p, q| p.1.total_cmp(q.1)).map(|p| p.0);
    Ok(Row {
        route: "static",
        model: "ResNet18 224x224, random weights".into(),
        fp32_ms: t32,
        int8_ms: t8,
        fp32_bytes: qapi::file_size(&fp32)?,
        int8_bytes: qapi::file_size(&int8)?,
        accuracy: format!(
            "logits SQNR {:.1} dB, top-1 {}",
            qapi::compare::sqnr_db(&a, &b),
            if argmax(&a) == argmax(&b) { "agrees" } else { "differs" }
        ),
    })
}
