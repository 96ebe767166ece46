//! The training loop: shuffled mini-batches, forward, loss, backward, optimizer step, with the
//! mean loss and accuracy of every epoch, a live progress line on a terminal (stderr, redrawn
//! with `\r`; nothing when stderr is not a terminal), and an evaluation pass.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use super::data::Dataset;
use super::layer::Mode;
use super::loss::{accuracy, Loss, Targets};
use super::model::TrainModel;
use super::optim::Optimizer;
use crate::Result;

/// How to train.
#[derive(Debug, Clone)]
pub struct FitConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub loss: Loss,
    /// Seed of the batch order; `None` keeps the dataset order.
    pub shuffle_seed: Option<u64>,
    /// Draw the progress line when stderr is a terminal.
    pub progress: bool,
}

impl FitConfig {
    pub fn new(epochs: usize, batch_size: usize, loss: Loss) -> FitConfig {
        FitConfig {
            epochs,
            batch_size,
            loss,
            shuffle_seed: Some(0),
            progress: true,
        }
    }
}

/// Loss and accuracy over one pass (accuracy is `None` for value targets).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metrics {
    pub loss: f32,
    pub accuracy: Option<f32>,
}

/// What one training epoch measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub train: Metrics,
    pub seconds: f64,
    /// Mean wall time of one training step (forward, backward, update).
    pub step_seconds: f64,
}

/// Trains `model` in place; `before_epoch(epoch, model)` runs before each epoch (schedules:
/// learning rate, freezing BatchNorm statistics, disabling observers).
pub fn fit<O: Optimizer>(
    model: &mut TrainModel,
    optimizer: &mut O,
    data: &Dataset,
    config: &FitConfig,
    mut before_epoch: impl FnMut(usize, &mut TrainModel, &mut O),
) -> Result<Vec<EpochMetrics>> {
    let _span = tracing::info_span!("fit", epochs = config.epochs, samples = data.len()).entered();
    let progress = config.progress && std::io::stderr().is_terminal();
    let mut history = Vec::with_capacity(config.epochs);
    for epoch in 0..config.epochs {
        before_epoch(epoch, model, optimizer);
        model.set_mode(Mode::Train);
        let start = Instant::now();
        let batches = data.batches(config.batch_size, config.shuffle_seed, epoch);
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0.0f64, 0usize);
        for (b, batch) in batches.iter().enumerate() {
            let n = batch.len();
            model.zero_grad();
            let out = model.forward(std::slice::from_ref(&batch.inputs))?;
            let (loss, grad) = config.loss.forward(&out[0], &batch.targets)?;
            model.backward(&[grad])?;
            optimizer.step(model);
            loss_sum += loss as f64 * n as f64;
            if let Targets::Classes(t) = &batch.targets {
                correct += accuracy(&out[0], t) as f64 * n as f64;
            }
            seen += n;
            if progress {
                eprint!(
                    "\repoch {}/{} [{}/{}] loss {:.4}",
                    epoch + 1,
                    config.epochs,
                    b + 1,
                    batches.len(),
                    loss_sum / seen as f64
                );
                let _ = std::io::stderr().flush();
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        let train = Metrics {
            loss: (loss_sum / seen.max(1) as f64) as f32,
            accuracy: matches!(data.targets, Targets::Classes(_)).then(|| (correct / seen.max(1) as f64) as f32),
        };
        if progress {
            eprintln!(
                "\repoch {}/{}: loss {:.4}{} ({seconds:.1}s)",
                epoch + 1,
                config.epochs,
                train.loss,
                train
                    .accuracy
                    .map_or(String::new(), |a| format!(", accuracy {:.2}%", a * 100.0))
            );
        }
        tracing::info!(epoch, loss = train.loss, accuracy = ?train.accuracy, seconds, "epoch");
        history.push(EpochMetrics {
            epoch,
            train,
            seconds,
            step_seconds: seconds / batches.len().max(1) as f64,
        });
    }
    Ok(history)
}

/// Loss and accuracy of `model` in evaluation mode over `data`.
pub fn evaluate(model: &mut TrainModel, data: &Dataset, batch_size: usize, loss: Loss) -> Result<Metrics> {
    let previous = model.mode();
    model.set_mode(Mode::Eval);
    let (mut loss_sum, mut correct) = (0.0f64, 0.0f64);
    for batch in data.batches(batch_size, None, 0) {
        let n = batch.len() as f64;
        let out = model.forward(std::slice::from_ref(&batch.inputs))?;
        let (l, _) = loss.forward(&out[0], &batch.targets)?;
        loss_sum += l as f64 * n;
        if let Targets::Classes(t) = &batch.targets {
            correct += accuracy(&out[0], t) as f64 * n;
        }
    }
    model.set_mode(previous);
    let n = data.len().max(1) as f64;
    Ok(Metrics {
        loss: (loss_sum / n) as f32,
        accuracy: matches!(data.targets, Targets::Classes(_)).then_some((correct / n) as f32),
    })
}
