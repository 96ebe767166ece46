//! Quantized data types and their integer ranges.

use std::fmt;

/// A quantized integer type, named as PyTorch names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// Unsigned 8-bit, range [0, 255]: PyTorch `quint8`, the usual activation type.
    QUInt8,
    /// Signed 8-bit, range [-128, 127]: PyTorch `qint8`, the usual weight type.
    QInt8,
    /// Signed 32-bit: PyTorch `qint32`, used for biases and accumulators.
    QInt32,
    /// Unsigned 4-bit, two values packed per byte (low nibble first): PyTorch `quint4x2`.
    QUInt4x2,
}

impl DType {
    /// Every dtype, in a stable order.
    pub const ALL: [DType; 4] = [DType::QUInt8, DType::QInt8, DType::QInt32, DType::QUInt4x2];

    /// Smallest representable integer.
    pub const fn qmin(self) -> i32 {
        match self {
            DType::QUInt8 | DType::QUInt4x2 => 0,
            DType::QInt8 => -128,
            DType::QInt32 => i32::MIN,
        }
    }

    /// Largest representable integer.
    pub const fn qmax(self) -> i32 {
        match self {
            DType::QUInt8 => 255,
            DType::QInt8 => 127,
            DType::QInt32 => i32::MAX,
            DType::QUInt4x2 => 15,
        }
    }

    /// Bits per value.
    pub const fn bits(self) -> u32 {
        match self {
            DType::QUInt8 | DType::QInt8 => 8,
            DType::QInt32 => 32,
            DType::QUInt4x2 => 4,
        }
    }

    /// Whether the integer type is signed.
    pub const fn is_signed(self) -> bool {
        matches!(self, DType::QInt8 | DType::QInt32)
    }

    /// PyTorch's name for the dtype.
    pub const fn name(self) -> &'static str {
        match self {
            DType::QUInt8 => "quint8",
            DType::QInt8 => "qint8",
            DType::QInt32 => "qint32",
            DType::QUInt4x2 => "quint4x2",
        }
    }

    /// Parses PyTorch's name (`"quint8"`, `"qint8"`, `"qint32"`, `"quint4x2"`).
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Bytes needed to store `n` values of this type.
    pub const fn storage_bytes(self, n: usize) -> usize {
        match self {
            DType::QUInt8 | DType::QInt8 => n,
            DType::QInt32 => 4 * n,
            DType::QUInt4x2 => n.div_ceil(2),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
