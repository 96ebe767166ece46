//! Which implementation of the element-wise kernels runs: the portable reference (the oracle)
//! or an x86-64 vector path, chosen at run time from the CPU's features. Every path gives the
//! same bytes; `QFORGE_KERNEL=reference` forces the portable one, `QFORGE_ELTWISE=NAME` any
//! other the CPU runs, and tests pick each path explicitly through the `*_on` functions.

/// An implementation of the element-wise kernels (add, mul, cat, max pool, activation tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EltwisePath {
    /// Scalar code, one element at a time (every CPU).
    Portable,
    /// 256-bit AVX2 + FMA.
    Avx2,
    /// 512-bit AVX-512 F/BW/VL + FMA.
    Avx512,
    /// [`EltwisePath::Avx512`] plus VBMI byte permutes: maps from one byte to another with fixed
    /// parameters (requantizing copies, activation tables) become 256-entry table lookups.
    Avx512Vbmi,
}

impl EltwisePath {
    /// The paths this CPU can run, slowest first.
    pub fn available() -> Vec<EltwisePath> {
        [
            EltwisePath::Portable,
            EltwisePath::Avx2,
            EltwisePath::Avx512,
            EltwisePath::Avx512Vbmi,
        ]
        .into_iter()
        .filter(|p| p.is_available())
        .collect()
    }

    /// Whether this CPU has the features the path needs.
    pub fn is_available(self) -> bool {
        match self {
            EltwisePath::Portable => true,
            #[cfg(target_arch = "x86_64")]
            EltwisePath::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            EltwisePath::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            EltwisePath::Avx512Vbmi => EltwisePath::Avx512.is_available() && is_x86_feature_detected!("avx512vbmi"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest available path, the portable one under `QFORGE_KERNEL=reference`, or the
    /// one `QFORGE_ELTWISE` names (`portable`, `avx2`, `avx512`, `avx512vbmi`) when this CPU
    /// runs it (to compare paths inside a whole model; another name is logged as a warning and
    /// ignored).
    pub fn best() -> EltwisePath {
        if crate::conv::forced_reference() {
            return EltwisePath::Portable;
        }
        static NAMED: std::sync::OnceLock<Option<EltwisePath>> = std::sync::OnceLock::new();
        let named = NAMED.get_or_init(|| {
            let name = std::env::var("QFORGE_ELTWISE").ok()?;
            let path = EltwisePath::available()
                .into_iter()
                .find(|p| format!("{p:?}").eq_ignore_ascii_case(&name));
            if path.is_none() {
                tracing::warn!(
                    "QFORGE_ELTWISE={name} is not a path this CPU runs (it runs {:?}); using the fastest",
                    EltwisePath::available()
                );
            }
            path
        });
        if let Some(path) = *named {
            return path;
        }
        if EltwisePath::Avx512Vbmi.is_available() {
            EltwisePath::Avx512Vbmi
        } else if EltwisePath::Avx512.is_available() {
            EltwisePath::Avx512
        } else if EltwisePath::Avx2.is_available() {
            EltwisePath::Avx2
        } else {
            EltwisePath::Portable
        }
    }

    /// An error unless this CPU can run the path.
    pub(crate) fn check(self, op: &'static str) -> crate::Result<()> {
        if self.is_available() {
            Ok(())
        } else {
            Err(crate::KernelError::Param {
                op,
                detail: format!(
                    "the {self:?} path needs CPU features this machine lacks; pick one of {:?}",
                    EltwisePath::available()
                ),
            })
        }
    }
}
