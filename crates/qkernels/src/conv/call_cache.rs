//! Per-call constants of a packed convolution, kept between calls. A convolution call turns
//! the activation parameters `(x_q, y_q, activation)` into per-output-channel constants (the
//! requantization of [`super::requant`], each kernel's epilogue layout, the GEMM's requantize
//! stage). Inside a statically quantized graph those parameters never change between calls, so
//! every packed convolution keeps the constants of its last few keys ([`CallCache`]) and builds
//! them only for a key it has not seen recently.
//!
//! Exactness: a key compares the scales bit for bit and holds everything the constants are
//! computed from besides the packed weights and bias, which never change after packing, so a
//! cached entry is exactly what a fresh build would give. Entries are built outside the lock
//! and shared through `Arc`, so calls from several threads at once only contend for a lookup;
//! each kernel's part of an entry is built on its first use ([`std::sync::OnceLock`]).

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use super::depthwise::DepthwiseEpilogues;
use super::direct;
use super::requant::{ActQuant, ConvRequant, FusedActivation};
use crate::gemm::RequantStage;
use crate::Result;

/// How many keys a cache keeps (a layer shared by a few call sites with different parameters
/// still hits; one graph node uses one).
const ENTRIES: usize = 4;

/// The activation parameters of one call, compared bit for bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct CallKey {
    x_scale: u32,
    x_zero_point: i32,
    y_scale: u32,
    y_zero_point: i32,
    activation: FusedActivation,
}

impl CallKey {
    pub(crate) fn new(x_q: ActQuant, y_q: ActQuant, activation: FusedActivation) -> CallKey {
        CallKey {
            x_scale: x_q.scale.to_bits(),
            x_zero_point: x_q.zero_point,
            y_scale: y_q.scale.to_bits(),
            y_zero_point: y_q.zero_point,
            activation,
        }
    }
}

/// The values built for the last [`ENTRIES`] keys, most recently used first.
pub(crate) struct CallCache<K, V> {
    entries: Mutex<Vec<(K, Arc<V>)>>,
}

impl<K: PartialEq + Copy, V> CallCache<K, V> {
    pub(crate) fn new() -> CallCache<K, V> {
        CallCache {
            entries: Mutex::new(Vec::with_capacity(ENTRIES)),
        }
    }

    /// A poisoned lock still holds whole entries (nothing panics while it is held).
    fn lock(&self) -> MutexGuard<'_, Vec<(K, Arc<V>)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value of `key`, built by `build` (outside the lock) when it is not cached; errors
    /// are returned and not cached.
    pub(crate) fn get_or_try_insert(&self, key: K, build: impl FnOnce() -> Result<V>) -> Result<Arc<V>> {
        {
            let mut entries = self.lock();
            if let Some(i) = entries.iter().position(|(k, _)| *k == key) {
                if i > 0 {
                    let hit = entries.remove(i);
                    entries.insert(0, hit);
                }
                return Ok(entries[0].1.clone());
            }
        }
        let value = Arc::new(build()?);
        let mut entries = self.lock();
        // Another thread may have built the same key meanwhile; either value is the same.
        if let Some(i) = entries.iter().position(|(k, _)| *k == key) {
            entries.remove(i);
        }
        entries.insert(0, (key, value.clone()));
        entries.truncate(ENTRIES);
        Ok(value)
    }

    /// Forgets every entry (the packed weights changed).
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

impl<K: PartialEq + Copy, V> Default for CallCache<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

/// A clone shares the entries built so far (they depend only on what the clone copies).
impl<K: Clone, V> Clone for CallCache<K, V> {
    fn clone(&self) -> Self {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner()).clone();
        CallCache {
            entries: Mutex::new(entries),
        }
    }
}

impl<K, V> std::fmt::Debug for CallCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.entries.lock().map_or(0, |e| e.len());
        f.debug_struct("CallCache").field("entries", &n).finish()
    }
}

/// The constants of a `Conv2d` call: the requantization, and each path's own layout of it.
pub(crate) struct ConvCall {
    pub(crate) rq: ConvRequant,
    pub(crate) direct: OnceLock<direct::Epilogue>,
    pub(crate) depthwise: DepthwiseEpilogues,
    /// One GEMM requantize stage per group.
    pub(crate) gemm: OnceLock<Vec<RequantStage>>,
}

impl ConvCall {
    pub(crate) fn new(rq: ConvRequant) -> ConvCall {
        ConvCall {
            rq,
            direct: OnceLock::new(),
            depthwise: DepthwiseEpilogues::default(),
            gemm: OnceLock::new(),
        }
    }
}

/// The constants of a `ConvTranspose2d` call: the output channels' requantization, and for
/// the GEMM and direct paths that of the `kh * kw * c_out` product columns.
pub(crate) struct TransposeCall {
    pub(crate) rq: ConvRequant,
    /// The requantized bias each output channel gets where no tap lands (output padding).
    pub(crate) empty: OnceLock<Vec<u8>>,
    pub(crate) column_rq: OnceLock<ConvRequant>,
    pub(crate) direct: OnceLock<direct::Epilogue>,
    pub(crate) gemm: OnceLock<RequantStage>,
}

impl TransposeCall {
    pub(crate) fn new(rq: ConvRequant) -> TransposeCall {
        TransposeCall {
            rq,
            empty: OnceLock::new(),
            column_rq: OnceLock::new(),
            direct: OnceLock::new(),
            gemm: OnceLock::new(),
        }
    }
}

/// The value of `cell`, built by `build` when it is empty (errors leave it empty). Two threads
/// may both build it; the values are equal and one is kept.
pub(crate) fn get_or_try_init<T>(cell: &OnceLock<T>, build: impl FnOnce() -> Result<T>) -> Result<&T> {
    if let Some(v) = cell.get() {
        return Ok(v);
    }
    let v = build()?;
    Ok(cell.get_or_init(|| v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_most_recent_keys_and_builds_each_once() {
        let cache: CallCache<u32, u32> = CallCache::new();
        let mut builds = 0;
        for round in 0..3 {
            for key in 0..ENTRIES as u32 {
                let v = cache
                    .get_or_try_insert(key, || {
                        builds += 1;
                        Ok(key * 10)
                    })
                    .unwrap();
                assert_eq!(*v, key * 10, "round {round}");
            }
        }
        assert_eq!(builds, ENTRIES);
        // One more key evicts the least recently used (key 0).
        cache.get_or_try_insert(99, || Ok(990)).unwrap();
        assert_eq!(cache.len(), ENTRIES);
        let mut rebuilt = false;
        cache
            .get_or_try_insert(0, || {
                rebuilt = true;
                Ok(0)
            })
            .unwrap();
        assert!(rebuilt);
    }

    #[test]
    fn errors_are_not_cached() {
        let cache: CallCache<u32, u32> = CallCache::new();
        let err = cache.get_or_try_insert(1, || {
            Err(crate::KernelError::Param {
                op: "test",
                detail: "no".into(),
            })
        });
        assert!(err.is_err());
        assert_eq!(cache.len(), 0);
        assert_eq!(*cache.get_or_try_insert(1, || Ok(7)).unwrap(), 7);
    }
}
