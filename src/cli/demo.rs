//! `qforge demo`: the supported dtypes, a quantize round trip, and a transformer quantized
//! dynamically (all-MiniLM-L6-v2 when fetched, else a random model of its shape, so the demo runs
//! offline): fp32 vs dynamic int8 latency at batch 1, sequence 128, sizes and cosine.

use qapi::models::bert::{last_hidden_state, mean_pool_normalize};
use qtensor::{DType, QParams, QTensor, QuantSpec, Scheme, Tensor};

use super::model::{bench_input, median_ms, minilm_or_random, prepare, with_threads, Mode, Preset};
use super::CliError;

#[derive(Debug, Default, clap::Args)]
pub struct Args {
    /// Skip the transformer row (dtypes and round trip only).
    #[arg(long)]
    no_model: bool,
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
    transformer_row()
}

fn transformer_row() -> Result<(), CliError> {
    let model = minilm_or_random()?;
    println!("\ndynamic int8 transformer: {}", model.source);
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
    let (s32, s8) = (qapi::stored_size_bytes(&fp32), qapi::stored_size_bytes(&int8));
    println!("  batch 1, seq 128, 1 thread:");
    println!("  {:<22} {:>9} {:>10} {:>8}", "", "latency", "size", "cosine");
    println!(
        "  {:<22} {:>6.2} ms {:>7.1} MB {:>8}",
        "fp32",
        t32,
        s32 as f64 / 1e6,
        "1"
    );
    println!(
        "  {:<22} {:>6.2} ms {:>7.1} MB {:>8.5}",
        "dynamic int8 (qforge)",
        t8,
        s8 as f64 / 1e6,
        cos
    );
    println!("  speedup {:.2}x, {:.1}x smaller", t32 / t8, s32 as f64 / s8 as f64);
    Ok(())
}
