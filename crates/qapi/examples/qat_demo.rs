//! Runs the quantization-aware training demonstration at full size and prints its figures.
//! `cargo run --release -p qapi --example qat_demo [train_images test_images fp32_epochs qat_epochs width]`

use qapi::qat_demo::{run_demo, DemoConfig};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut config = DemoConfig::default();
    let num = |i: usize| args.get(i).and_then(|s| s.parse::<f64>().ok());
    if let Some(v) = num(0) {
        config.train_images = v as usize;
    }
    if let Some(v) = num(1) {
        config.test_images = v as usize;
    }
    if let Some(v) = num(2) {
        config.fp32_epochs = v as usize;
    }
    if let Some(v) = num(3) {
        config.qat_epochs = v as usize;
    }
    if let Some(v) = num(4) {
        config.width_mult = v as f32;
    }
    match run_demo(&config) {
        Ok(r) => {
            println!("{config:?}");
            println!(
                "accuracy: fp32 {:.2}% | PTQ int8 {:.2}% | QAT int8 {:.2}%",
                r.fp32_accuracy * 100.0,
                r.ptq_accuracy * 100.0,
                r.qat_accuracy * 100.0
            );
            println!(
                "parameters {} | fp32 {:.1} KiB | int8 {:.1} KiB | fp32 latency {:.3} ms/image",
                r.parameters,
                r.fp32_bytes as f64 / 1024.0,
                r.int8_bytes as f64 / 1024.0,
                r.fp32_latency_ms
            );
            println!(
                "train step (batch {}): fp32 {:.2} ms | QAT {:.2} ms",
                config.batch_size, r.fp32_step_ms, r.qat_step_ms
            );
            println!(
                "fp32 epoch loss {:?}\nQAT epoch loss {:?}",
                r.fp32_epoch_loss, r.qat_epoch_loss
            );
        }
        Err(e) => {
            eprintln!("demo failed: {e}");
            std::process::exit(1);
        }
    }
}
