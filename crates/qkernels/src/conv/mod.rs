//! Quantized convolution (filled in by the conv work).
