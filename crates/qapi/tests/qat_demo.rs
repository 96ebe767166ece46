//! The QAT demonstration at tiny scale: the dataset is seeded and balanced, and the whole
//! pipeline (fp32 training, PTQ calibration, QAT fine-tuning, conversion, int8 simulation)
//! runs, learns, and its real int8 graphs (static PTQ and QAT) stay within a few points of fp32.

use qapi::qat_demo::{run_demo, shapes_dataset, DemoConfig, CLASSES};
use qgraph::train::Targets;

#[test]
fn shapes_dataset_is_seeded_and_balanced() {
    let a = shapes_dataset(40, 3).unwrap();
    let b = shapes_dataset(40, 3).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, shapes_dataset(40, 4).unwrap());
    let Targets::Classes(labels) = &a.targets else {
        panic!("class targets")
    };
    for c in 0..CLASSES {
        assert_eq!(labels.iter().filter(|&&l| l == c).count(), 4);
    }
    assert_eq!(a.inputs.shape(), &[40, 3, 32, 32]);
}

#[test]
fn demo_runs_end_to_end_at_tiny_scale() {
    let config = DemoConfig {
        train_images: 800,
        test_images: 200,
        fp32_epochs: 7,
        qat_epochs: 2,
        batch_size: 32,
        width_mult: 0.25,
        calibration_images: 64,
        seed: 1,
        progress: false,
    };
    let r = run_demo(&config).unwrap();
    eprintln!("{r}");
    // Real int8 graphs (static PTQ, and QAT through convert_with) stay close to fp32.
    assert!((r.qat_accuracy - r.fp32_accuracy).abs() <= 0.05, "{r:?}");
    assert!(r.ptq_accuracy >= r.fp32_accuracy - 0.06, "{r:?}");
    assert!((r.qat_accuracy - r.qat_simulated_accuracy).abs() <= 0.02, "{r:?}");
    assert!(r.int8_bytes < r.fp32_bytes, "{r:?}");
    assert!(r.fp32_epoch_loss.iter().all(|l| l.is_finite()) && r.qat_epoch_loss.iter().all(|l| l.is_finite()));
    assert!(
        r.fp32_epoch_loss.last() < r.fp32_epoch_loss.first(),
        "the network learns: {r:?}"
    );
    assert!(
        r.qat_epoch_loss.last() < r.fp32_epoch_loss.last(),
        "QAT fine-tuning keeps improving: {r:?}"
    );
    assert!(r.parameters > 10_000);
}
