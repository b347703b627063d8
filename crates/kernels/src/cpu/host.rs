//! Tensor values as plain Rust slices, for the CPU kernels ([`super::rows`],
//! [`super::matmul`], [`super::attention`], [`super::adamw`]).
//!
//! A CPU backend's tensor already lives in host memory, so a kernel needs
//! no copy to read it; copies are what a careless version pays most for
//! (README, Performance). Two ways in, and one out:
//! - [`read`]: a read-only view of the backend's own buffer (a copy only
//!   when the tensor is strided, e.g. a transpose not yet made contiguous);
//! - [`take`]: an owned buffer for a kernel that overwrites its input in
//!   place: the tensor's own buffer when nothing else holds it (burn's
//!   tensors are reference-counted, and autodiff keeps the ones its
//!   backward pass needs), a copy when something does;
//! - [`to_device`]: a `Vec` handed back to the backend, which keeps it
//!   without copying.

use std::ops::Deref;

use burn::tensor::{Int, Tensor, TensorData, TensorPrimitive, backend::Backend};

/// A CPU backend whose tensors the kernels can read as slices.
pub trait HostCopy: Backend {
    /// A view of `x`'s values in row-major order.
    fn read<const D: usize>(x: Tensor<Self, D>) -> HostSlice {
        HostSlice::Copied(Self::take(x))
    }

    /// `x`'s values as an owned `Vec`, row-major: the buffer itself when
    /// `x` was its only holder, else a copy.
    fn take<const D: usize>(x: Tensor<Self, D>) -> Vec<f32> {
        x.into_data().into_vec::<f32>().expect("the CPU kernels run on f32 tensors")
    }
}

/// `x`'s values, read-only; see [`HostCopy::read`].
pub fn read<B: HostCopy, const D: usize>(x: Tensor<B, D>) -> HostSlice {
    B::read(x)
}

/// `x`'s values, owned, to be overwritten; see [`HostCopy::take`].
pub fn take<B: HostCopy, const D: usize>(x: Tensor<B, D>) -> Vec<f32> {
    B::take(x)
}

/// Values a kernel reads: a tensor's own buffer, or a copy of it. Holding
/// the tensor keeps the buffer alive and unchanged (burn copies a shared
/// buffer before writing to it).
pub enum HostSlice {
    /// Copied out (a strided tensor, or a backend without a view).
    Copied(Vec<f32>),
    /// A burn-ndarray tensor, checked contiguous and row-major when made.
    NdArray(burn_ndarray::NdArrayTensor),
    /// A burn-flex tensor, checked the same way.
    #[cfg(feature = "flex")]
    Flex(burn_flex::FlexTensor),
}

impl Deref for HostSlice {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        const CHECKED: &str = "checked contiguous f32 when made";
        match self {
            HostSlice::Copied(values) => values,
            HostSlice::NdArray(burn_ndarray::NdArrayTensor::F32(storage)) => storage.view().to_slice().expect(CHECKED),
            HostSlice::NdArray(_) => unreachable!("{CHECKED}"),
            #[cfg(feature = "flex")]
            HostSlice::Flex(tensor) => tensor.as_slice::<f32>().expect(CHECKED),
        }
    }
}

impl HostCopy for burn::backend::NdArray<f32> {
    fn read<const D: usize>(x: Tensor<Self, D>) -> HostSlice {
        let tensor = ndarray_f32(x);
        let burn_ndarray::NdArrayTensor::F32(storage) = &tensor else { unreachable!() };
        match storage.view().to_slice() {
            Some(_) => HostSlice::NdArray(tensor),
            None => HostSlice::Copied(storage.view().iter().copied().collect()), // strided: logical order
        }
    }

    // burn-ndarray's `into_data` hands over the buffer when the tensor is
    // not shared, but copies element by element through a slow
    // n-dimensional iterator when it is. Copying the slice is one memcpy.
    fn take<const D: usize>(x: Tensor<Self, D>) -> Vec<f32> {
        let tensor = ndarray_f32(x);
        let burn_ndarray::NdArrayTensor::F32(storage) = &tensor else { unreachable!() };
        match (storage.is_unique(), storage.view().to_slice()) {
            (false, Some(values)) => values.to_vec(),
            _ => Tensor::<Self, D>::from_primitive(TensorPrimitive::Float(tensor))
                .into_data()
                .into_vec::<f32>()
                .expect("an f32 tensor"),
        }
    }
}

fn ndarray_f32<const D: usize>(x: Tensor<burn::backend::NdArray<f32>, D>) -> burn_ndarray::NdArrayTensor {
    match x.into_primitive() {
        TensorPrimitive::Float(tensor @ burn_ndarray::NdArrayTensor::F32(_)) => tensor,
        _ => panic!("the CPU kernels run on f32 tensors"),
    }
}

#[cfg(feature = "flex")]
impl HostCopy for burn::backend::Flex {
    fn read<const D: usize>(x: Tensor<Self, D>) -> HostSlice {
        let tensor = x.into_primitive().tensor();
        match tensor.as_slice::<f32>() {
            Some(_) => HostSlice::Flex(tensor),
            None => HostSlice::Copied(Self::take(Tensor::<Self, D>::from_primitive(TensorPrimitive::Float(tensor)))),
        }
    }
}

/// Target ids as indices, checked against the vocabulary.
pub(super) fn host_ids<B: Backend>(targets: Tensor<B, 1, Int>, vocab: usize) -> Vec<usize> {
    let data = targets.into_data();
    data.iter::<i64>()
        .map(|t| match usize::try_from(t) {
            Ok(t) if t < vocab => t,
            _ => panic!("cross-entropy target {t} is outside the vocabulary 0..{vocab}"),
        })
        .collect()
}

/// `values` (row-major) as a tensor of `shape`; the backend keeps the `Vec`.
pub(super) fn to_device<B: Backend, const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}
