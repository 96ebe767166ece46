//! Element-wise, pooling and lookup-table kernels (filled in by the conv work).
