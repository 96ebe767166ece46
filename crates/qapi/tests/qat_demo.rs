//! The QAT demonstration at tiny scale: the dataset is seeded and balanced, and the whole
//! pipeline (fp32 training, PTQ calibration, QAT fine-tuning, conversion, int8 simulation)
//! runs and reports sane figures.

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
        train_images: 200,
        test_images: 60,
        fp32_epochs: 1,
        qat_epochs: 1,
        batch_size: 20,
        width_mult: 0.25,
        calibration_images: 64,
        seed: 1,
        progress: false,
    };
    let r = run_demo(&config).unwrap();
    for acc in [r.fp32_accuracy, r.ptq_accuracy, r.qat_accuracy] {
        assert!((0.0..=1.0).contains(&acc), "{r:?}");
    }
    assert!(r.int8_bytes < r.fp32_bytes / 2, "{r:?}");
    assert!(r.fp32_epoch_loss[0].is_finite() && r.qat_epoch_loss[0].is_finite());
    assert!(r.parameters > 10_000);
}
