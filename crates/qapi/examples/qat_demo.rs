//! Runs the quantization-aware training demonstration at full size and prints its figures.
//! `cargo run --release -p qapi --example qat_demo [quick | train_images test_images fp32_epochs qat_epochs width]`

use qapi::qat_demo::{run_demo, DemoConfig};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut config = if args.first().map(String::as_str) == Some("quick") {
        DemoConfig::quick()
    } else {
        DemoConfig::default()
    };
    let num = |i: usize| args.get(i).and_then(|s| s.parse::<f64>().ok());
    // `quick` alone: the CLI row's scale.
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
            println!("{r}");
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
