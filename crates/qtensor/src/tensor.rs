//! `Tensor`: a dense, contiguous, row-major f32 tensor, the float currency of every layer.
//!
//! A tensor may carry one derived form of its data, such as a packed GEMM layout of a weight, so
//! that a kernel builds it once rather than on every call. The derived form is dropped whenever the
//! data is borrowed mutably ([`Tensor::data_mut`], the only mutable access), so it can never be
//! served for data it was not built from; clones share it, and equality and `Debug` ignore it.

use std::any::Any;
use std::fmt;
use std::panic::{RefUnwindSafe, UnwindSafe};
use std::sync::{Arc, OnceLock};

use half::{bf16, f16};

use crate::{QError, Result};

/// A dense row-major f32 tensor.
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
    derived: DerivedSlot,
}

/// The type-erased derived form a tensor may carry (see the module doc).
type Derived = Arc<dyn Any + Send + Sync + UnwindSafe + RefUnwindSafe>;

/// Holds at most one [`Derived`] value, set once and cleared by every mutable borrow of the data.
#[derive(Clone, Default)]
struct DerivedSlot(OnceLock<Derived>);

impl PartialEq for Tensor {
    /// Shapes and elements equal (the derived form is a cache and does not count).
    fn eq(&self, other: &Tensor) -> bool {
        self.shape == other.shape && self.data == other.data
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tensor")
            .field("shape", &self.shape)
            .field("data", &self.data)
            .finish()
    }
}

impl Tensor {
    /// Wraps `data` with `shape`; the element counts must agree.
    pub fn new(shape: impl Into<Vec<usize>>, data: Vec<f32>) -> Result<Tensor> {
        let shape = shape.into();
        let expected = shape.iter().product::<usize>();
        if expected != data.len() {
            return Err(QError::ShapeMismatch {
                shape,
                expected,
                got: data.len(),
            });
        }
        Ok(Tensor {
            shape,
            data,
            derived: DerivedSlot::default(),
        })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: impl Into<Vec<usize>>) -> Tensor {
        let shape = shape.into();
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![0.0; n],
            derived: DerivedSlot::default(),
        }
    }

    /// A tensor filled with `value`.
    pub fn full(shape: impl Into<Vec<usize>>, value: f32) -> Tensor {
        let shape = shape.into();
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![value; n],
            derived: DerivedSlot::default(),
        }
    }

    /// A 0-d tensor.
    pub fn scalar(value: f32) -> Tensor {
        Tensor {
            shape: Vec::new(),
            data: vec![value],
            derived: DerivedSlot::default(),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The elements, mutably; drops the derived form the tensor carried, if any.
    pub fn data_mut(&mut self) -> &mut [f32] {
        self.derived = DerivedSlot::default();
        &mut self.data
    }

    /// The derived form of type `T` of this tensor's data (e.g. a packed weight layout): built by
    /// `make` on first use, then shared by every later call (and by clones) until the data is next
    /// borrowed mutably. A tensor keeps one derived form: if it already carries one of another type,
    /// `make`'s result is returned without being kept. `make` must not ask this tensor for its
    /// derived form again (the first call holds the slot while it builds).
    pub fn derived<T>(&self, make: impl FnOnce(&Tensor) -> T) -> Arc<T>
    where
        T: Any + Send + Sync + UnwindSafe + RefUnwindSafe,
    {
        let mut make = Some(make);
        let slot = self.derived.0.get_or_init(|| {
            let build = make.take().expect("make is only taken here or below");
            Arc::new(build(self)) as Derived
        });
        let erased: Arc<dyn Any + Send + Sync> = slot.clone();
        match erased.downcast::<T>() {
            Ok(kept) => kept,
            Err(_) => {
                let build = make
                    .take()
                    .expect("the slot was filled by an earlier call, so make is unused");
                Arc::new(build(self))
            }
        }
    }

    /// Whether the tensor currently carries a derived form (see [`Tensor::derived`]).
    pub fn has_derived(&self) -> bool {
        self.derived.0.get().is_some()
    }

    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// Same data, new shape with the same element count.
    pub fn reshape(self, shape: impl Into<Vec<usize>>) -> Result<Tensor> {
        Tensor::new(shape, self.data)
    }

    /// Row-major strides in elements.
    pub fn strides(&self) -> Vec<usize> {
        strides(&self.shape)
    }

    /// Errors with the first NaN or infinity, naming `what` in the message.
    pub fn check_finite(&self, what: &'static str) -> Result<()> {
        match crate::quantize::first_non_finite(&self.data) {
            Some((index, value)) => Err(QError::NonFinite { what, index, value }),
            None => Ok(()),
        }
    }

    /// (min, max) over all elements; errors on an empty or non-finite tensor.
    pub fn min_max(&self) -> Result<(f32, f32)> {
        if self.data.is_empty() {
            return Err(QError::Empty { what: "tensor" });
        }
        self.check_finite("tensor")?;
        Ok(min_max(&self.data))
    }

    /// Converts to IEEE half precision (round to nearest even).
    pub fn to_f16(&self) -> Vec<f16> {
        self.data.iter().map(|&x| f16::from_f32(x)).collect()
    }

    /// Converts to bfloat16 (round to nearest even).
    pub fn to_bf16(&self) -> Vec<bf16> {
        self.data.iter().map(|&x| bf16::from_f32(x)).collect()
    }

    /// Builds from half-precision values.
    pub fn from_f16(shape: impl Into<Vec<usize>>, values: &[f16]) -> Result<Tensor> {
        Tensor::new(shape, values.iter().map(|v| v.to_f32()).collect())
    }

    /// Builds from bfloat16 values.
    pub fn from_bf16(shape: impl Into<Vec<usize>>, values: &[bf16]) -> Result<Tensor> {
        Tensor::new(shape, values.iter().map(|v| v.to_f32()).collect())
    }
}

/// Row-major strides of `shape`, in elements.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// (min, max) of a non-empty slice of finite values.
pub fn min_max(values: &[f32]) -> (f32, f32) {
    values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
        (lo.min(v), hi.max(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(t: &Tensor) -> f32 {
        t.data().iter().sum()
    }

    #[test]
    fn derived_form_is_built_once_and_shared_by_clones() {
        let t = Tensor::new([3], vec![1.0, 2.0, 3.0]).unwrap();
        assert!(!t.has_derived());
        let a = t.derived(sum);
        let b = t.derived(|_| -> f32 { panic!("must not rebuild") });
        assert_eq!((*a, *b), (6.0, 6.0));
        assert!(Arc::ptr_eq(&a, &b));
        let c = t.clone();
        assert!(Arc::ptr_eq(&a, &c.derived(|_| -> f32 { panic!("clone shares it") })));
        assert_eq!(t, c);
    }

    #[test]
    fn a_mutable_borrow_drops_the_derived_form() {
        let mut t = Tensor::new([3], vec![1.0, 2.0, 3.0]).unwrap();
        let shared = t.clone();
        assert_eq!(*t.derived(sum), 6.0);
        t.data_mut()[0] = 10.0;
        assert!(!t.has_derived());
        assert_eq!(*t.derived(sum), 15.0);
        // The clone keeps its own data and its own derived form.
        assert_eq!(*shared.derived(sum), 6.0);
    }

    #[test]
    fn a_derived_form_of_another_type_is_built_but_not_kept() {
        let t = Tensor::new([2], vec![1.0, 2.0]).unwrap();
        assert_eq!(*t.derived(sum), 3.0);
        let n = t.derived(|t| t.numel());
        assert_eq!(*n, 2);
        assert_eq!(*t.derived(|_| -> f32 { panic!("the f32 form is kept") }), 3.0);
    }
}
