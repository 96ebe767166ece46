//! Training on the graph: reverse-mode gradients for the CNN ops (Linear, Conv2d with groups,
//! stride, padding and dilation, BatchNorm with batch statistics, ReLU, ReLU6, Hardswish,
//! pooling, Add, Cat, Flatten, Dropout), cross-entropy and MSE losses, PyTorch's SGD and Adam,
//! seeded shuffled batches and a training loop with per-epoch metrics; plus the modules of
//! quantization-aware training (fake quantization with observers or learnable parameters, and
//! Conv+BatchNorm with the BatchNorm folded into the fake-quantized weight).
//!
//! ```
//! use qgraph::train::{fit, Dataset, FitConfig, Loss, Sgd, Targets, TrainModel};
//! use qgraph::GraphBuilder;
//! use qtensor::Tensor;
//!
//! let mut b = GraphBuilder::new();
//! let x = b.input("x", &[4, 2]);
//! let y = b.linear("fc", x, 2, 1);
//! b.output(y);
//! let graph = b.build().unwrap();
//! let mut model = TrainModel::from_graph(&graph, 0).unwrap();
//! let inputs = Tensor::new([4, 2], vec![0., 0., 0., 1., 1., 0., 1., 1.]).unwrap();
//! let targets = Targets::Values(Tensor::new([4, 1], vec![1., 3., 2., 4.]).unwrap());
//! let data = Dataset::new(inputs, targets).unwrap();
//! let mut sgd = Sgd::new(0.2);
//! let history = fit(&mut model, &mut sgd, &data, &FitConfig::new(200, 4, Loss::Mse), |_, _, _| {}).unwrap();
//! assert!(history.last().unwrap().train.loss < 1e-3);
//! ```

mod data;
pub mod fake_quantize;
mod fit;
pub mod grad;
mod layer;
mod loss;
mod model;
mod op_layer;
mod optim;
pub mod qat_modules;
mod rng;

pub use data::Dataset;
pub use fake_quantize::{FakeQuantize, FakeQuantizeConfig};
pub use fit::{evaluate, fit, EpochMetrics, FitConfig, Metrics};
pub use layer::{accumulate, ForwardCtx, Layer, Mode, Param, ParamRef};
pub use loss::{accuracy, argmax, cross_entropy, mse, Loss, Targets};
pub use model::{TrainModel, TrainNode};
pub use op_layer::{trainable, OpLayer};
pub use optim::{Adam, Optimizer, Sgd};
pub use qat_modules::{QatConv2d, QatLinear};
pub use rng::Rng;
