//! AMX-INT8 path (placeholder until the tile kernel lands): never selected.

use super::epilogue::EpiloguePlan;
use super::pack::PackedWeights;

pub(crate) fn is_usable() -> bool {
    false
}

pub(crate) fn gemm(plan: &EpiloguePlan, a: &[u8], m: usize, w: &PackedWeights, _threads: Option<usize>) {
    super::reference::gemm(plan, a, m, w)
}
