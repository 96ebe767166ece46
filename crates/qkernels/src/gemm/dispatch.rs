//! Which kernel path runs, and why: CPU feature detection, the `QFORGE_KERNEL` override, and
//! the explicit per-call choice tests use.

use crate::{KernelError, Result};

/// A GEMM implementation. All produce identical results; they differ in speed and in the CPU
/// features they need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KernelPath {
    /// Portable scalar code, the oracle (every CPU).
    Reference,
    /// AVX2 + FMA, exact 16-bit widening (`vpmaddwd`), no saturating `vpmaddubsw`.
    Avx2,
    /// 256-bit VNNI with VEX encoding (`vpdpbusd ymm`, Alder Lake / Sapphire Rapids and later).
    AvxVnni,
    /// AVX-512 VNNI (`vpdpbusd zmm`, Cascade Lake and later).
    Avx512Vnni,
    /// AMX-INT8 tiles (Sapphire Rapids and later, when the OS grants tile state).
    Amx,
}

impl KernelPath {
    /// Every path, slowest first.
    pub const ALL: [KernelPath; 5] = [
        KernelPath::Reference,
        KernelPath::Avx2,
        KernelPath::AvxVnni,
        KernelPath::Avx512Vnni,
        KernelPath::Amx,
    ];

    /// The name `QFORGE_KERNEL` accepts.
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Reference => "reference",
            KernelPath::Avx2 => "avx2",
            KernelPath::AvxVnni => "avxvnni",
            KernelPath::Avx512Vnni => "avx512vnni",
            KernelPath::Amx => "amx",
        }
    }

    /// Parses a `QFORGE_KERNEL` value.
    pub fn from_name(name: &str) -> Result<KernelPath> {
        KernelPath::ALL
            .into_iter()
            .find(|p| p.name() == name.trim().to_ascii_lowercase())
            .ok_or_else(|| KernelError::UnknownPath(name.to_string()))
    }

    /// Whether this CPU (and OS, for AMX) can run the path.
    pub fn is_available(self) -> bool {
        match self {
            KernelPath::Reference => true,
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            KernelPath::AvxVnni => {
                is_x86_feature_detected!("avxvnni")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx512Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
                    && is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            KernelPath::Amx => super::amx::is_usable(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

impl std::fmt::Display for KernelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The paths this CPU can run, slowest first (the reference is always there).
pub fn available_paths() -> Vec<KernelPath> {
    KernelPath::ALL.into_iter().filter(|p| p.is_available()).collect()
}

/// The fastest available path. AVX-512 VNNI ranks above AVX-VNNI (twice the width).
pub fn best_path() -> KernelPath {
    *available_paths()
        .last()
        .expect("the reference path is always available")
}

fn unavailable(path: KernelPath) -> KernelError {
    KernelError::PathUnavailable {
        path: path.name().to_string(),
        available: available_paths()
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Resolves the path of one call: explicit choice, else `QFORGE_KERNEL`, else the best.
pub(crate) fn select(explicit: Option<KernelPath>) -> Result<KernelPath> {
    let requested = match explicit {
        Some(p) => Some(p),
        None => match std::env::var("QFORGE_KERNEL") {
            Ok(name) if !name.trim().is_empty() => Some(KernelPath::from_name(&name)?),
            _ => None,
        },
    };
    match requested {
        Some(p) if p.is_available() => Ok(p),
        Some(p) => Err(unavailable(p)),
        None => Ok(best_path()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_fail() {
        for p in KernelPath::ALL {
            assert_eq!(KernelPath::from_name(p.name()).unwrap(), p);
        }
        assert_eq!(KernelPath::from_name("AVX2").unwrap(), KernelPath::Avx2);
        assert!(matches!(
            KernelPath::from_name("neon"),
            Err(KernelError::UnknownPath(_))
        ));
    }

    #[test]
    fn reference_is_always_available_and_unavailable_paths_are_refused() {
        assert_eq!(available_paths()[0], KernelPath::Reference);
        for p in KernelPath::ALL {
            match select(Some(p)) {
                Ok(q) => assert_eq!(q, p),
                Err(e) => {
                    assert!(!p.is_available());
                    assert!(matches!(e, KernelError::PathUnavailable { .. }));
                }
            }
        }
    }

    #[test]
    fn the_vnni_chain_rate_is_measured_exactly_where_the_path_exists() {
        let rate = super::super::vnni_chain_gops();
        assert_eq!(rate.is_some(), KernelPath::Avx512Vnni.is_available());
        if let Some(gops) = rate {
            assert!(gops.is_finite() && gops > 0.0, "{gops}");
        }
    }
}
