//! u8 x s8 GEMM (filled in by the GEMM work).
