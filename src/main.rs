//! The `qforge` command-line tool.

use std::process::ExitCode;

use qtensor::{DType, QParams, QTensor, QuantSpec, Scheme, Tensor};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") | None => demo(),
        Some(other) => {
            eprintln!("unknown command `{other}`\nusage: qforge demo");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the supported dtypes and schemes and runs a quantize round trip.
fn demo() -> Result<(), qtensor::QError> {
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
    Ok(())
}
