//! Ready-made model graphs with the parameter names of their reference implementations, and the
//! pre-processing they need (tokenizers), so real checkpoints load and run as they are.

pub mod bert;
pub mod tokenizer;
