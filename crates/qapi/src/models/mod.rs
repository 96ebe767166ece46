//! Model builders with PyTorch parameter names, for benchmarks, demos and loading checkpoints.

pub mod init;
pub mod mobilenet_v2;
pub mod resnet18;
pub mod unet;

pub use init::init_weights;
pub use mobilenet_v2::{mobilenet_v2, MobileNetV2Config};
pub use resnet18::{resnet18, ResNet18Config};
pub use unet::{unet, UNetConfig};
