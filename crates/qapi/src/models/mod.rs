//! Ready-made model graphs with the parameter names of their reference implementations (HF
//! BERT, torchvision MobileNetV2 and ResNet18, the benchmark UNet), seeded initialisation, and
//! the pre-processing they need (tokenizers), so real checkpoints load and run as they are.

pub mod bert;
pub mod init;
pub mod mobilenet_v2;
pub mod resnet18;
pub mod tokenizer;
pub mod unet;

pub use init::init_weights;
pub use mobilenet_v2::{mobilenet_v2, MobileNetV2Config};
pub use resnet18::{resnet18, ResNet18Config};
pub use unet::{unet, UNetConfig};
