//! The kernels as loops over host memory, for burn's CPU backends.
//!
//! Each kernel reads its inputs straight from the backend's buffers
//! ([`host`]), makes one pass over each row, rows split across cores by
//! rayon, and hands the result back: one pass per row instead of the dozen
//! separate tensor operations (each reading and writing all of memory) of
//! the plain version. The arithmetic is the formulas of
//! [`crate::reference`], written per element.
//!
//! - [`rows`]: softmax, GELU, cross-entropy, LayerNorm, sum of squares;
//! - [`matmul`]: products on strided views ([`view`]: a transpose costs
//!   nothing), and the linear layer (through OpenBLAS with the `openblas`
//!   feature);
//! - [`attention`]: causal attention, one task per sequence, heads read in
//!   place;
//! - [`adamw`]: the optimizer's update, in place;
//! - [`simd`]: what makes the loops fast (AVX2 picked at run time, sums in
//!   eight lanes, a vectorisable `exp`).

pub mod adamw;
pub mod attention;
pub mod host;
pub mod matmul;
#[cfg(feature = "openblas")]
pub mod openblas;
pub mod rows;
pub mod simd;
pub mod view;

use burn::tensor::{DType, FloatDType, Int, Tensor};

use crate::Backend;
use crate::adamw::AdamwStep;

// One implementation for both CPU backends: the loops only need to read
// and write host buffers (`host::HostCopy`), which both provide.
//
// The loops compute in f32. A bf16 or fp16 input (mixed precision, on the
// flex backend) is widened on the way in and every output rounded back to
// the inputs' precision on the way out: what a GPU kernel does when it
// loads 16-bit values and accumulates in f32. So a softmax or a product
// given bf16 computes in f32 and stores bf16. The CPU has no faster 16-bit
// arithmetic, so this costs two conversions and buys only the rounding
// (which is what a learner comparing the curves wants to see). The
// optimizer's kernels (AdamW, sum of squares) are not wrapped: they see
// the f32 master weights and their f32 gradients only.
macro_rules! cpu_kernels {
    ($backend:ty) => {
        impl Backend for $backend {
            fn softmax_rows(x: Tensor<Self, 2>) -> Tensor<Self, 2> {
                let dt = x.dtype();
                narrow(rows::softmax_rows(widen(x)), dt)
            }
            fn softmax_rows_backward(y: Tensor<Self, 2>, dy: Tensor<Self, 2>) -> Tensor<Self, 2> {
                let dt = y.dtype();
                narrow(rows::softmax_rows_backward(widen(y), widen(dy)), dt)
            }
            fn gelu_tanh(x: Tensor<Self, 2>) -> Tensor<Self, 2> {
                let dt = x.dtype();
                narrow(rows::gelu_tanh(widen(x)), dt)
            }
            fn gelu_tanh_backward(x: Tensor<Self, 2>, dy: Tensor<Self, 2>) -> Tensor<Self, 2> {
                let dt = x.dtype();
                narrow(rows::gelu_tanh_backward(widen(x), widen(dy)), dt)
            }
            fn cross_entropy_rows(
                logits: Tensor<Self, 2>,
                targets: Tensor<Self, 1, Int>,
            ) -> (Tensor<Self, 1>, Tensor<Self, 1>) {
                let dt = logits.dtype();
                narrow2(rows::cross_entropy_rows(widen(logits), targets), dt)
            }
            fn cross_entropy_rows_backward(
                logits: Tensor<Self, 2>,
                targets: Tensor<Self, 1, Int>,
                logsumexp: Tensor<Self, 1>,
                dnll: Tensor<Self, 1>,
            ) -> Tensor<Self, 2> {
                let dt = logits.dtype();
                narrow(rows::cross_entropy_rows_backward(widen(logits), targets, widen(logsumexp), widen(dnll)), dt)
            }
            fn layer_norm_rows(
                x: Tensor<Self, 2>,
                gamma: Tensor<Self, 1>,
                beta: Tensor<Self, 1>,
                eps: f64,
            ) -> (Tensor<Self, 2>, Tensor<Self, 1>, Tensor<Self, 1>) {
                let dt = x.dtype();
                narrow3(rows::layer_norm_rows(widen(x), widen(gamma), widen(beta), eps), dt)
            }
            fn layer_norm_rows_backward(
                x: Tensor<Self, 2>,
                gamma: Tensor<Self, 1>,
                mean: Tensor<Self, 1>,
                rstd: Tensor<Self, 1>,
                dy: Tensor<Self, 2>,
            ) -> (Tensor<Self, 2>, Tensor<Self, 1>, Tensor<Self, 1>) {
                let dt = x.dtype();
                narrow3(rows::layer_norm_rows_backward(widen(x), widen(gamma), widen(mean), widen(rstd), widen(dy)), dt)
            }
            fn matmul(a: Tensor<Self, 2>, b: Tensor<Self, 2>, b_transposed: bool) -> Tensor<Self, 2> {
                let dt = a.dtype();
                narrow(matmul::matmul(widen(a), widen(b), b_transposed), dt)
            }
            fn matmul_backward(
                a: Tensor<Self, 2>,
                b: Tensor<Self, 2>,
                dy: Tensor<Self, 2>,
                b_transposed: bool,
            ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
                let dt = a.dtype();
                narrow2(matmul::matmul_backward(widen(a), widen(b), widen(dy), b_transposed), dt)
            }
            fn linear_rows(x: Tensor<Self, 2>, w: Tensor<Self, 2>, bias: Tensor<Self, 1>) -> Tensor<Self, 2> {
                let dt = x.dtype();
                narrow(matmul::linear(widen(x), widen(w), widen(bias)), dt)
            }
            fn linear_rows_backward(
                x: Tensor<Self, 2>,
                w: Tensor<Self, 2>,
                dy: Tensor<Self, 2>,
            ) -> (Tensor<Self, 2>, Tensor<Self, 2>, Tensor<Self, 1>) {
                let dt = x.dtype();
                narrow3(matmul::linear_backward(widen(x), widen(w), widen(dy)), dt)
            }
            fn causal_attention(
                q: Tensor<Self, 2>,
                k: Tensor<Self, 2>,
                v: Tensor<Self, 2>,
                batch: usize,
                n_heads: usize,
            ) -> (Tensor<Self, 2>, Tensor<Self, 4>) {
                let dt = q.dtype();
                narrow2(attention::causal_attention(widen(q), widen(k), widen(v), batch, n_heads), dt)
            }
            fn causal_attention_backward(
                q: Tensor<Self, 2>,
                k: Tensor<Self, 2>,
                v: Tensor<Self, 2>,
                weights: Tensor<Self, 4>,
                dcontext: Tensor<Self, 2>,
                n_heads: usize,
            ) -> (Tensor<Self, 2>, Tensor<Self, 2>, Tensor<Self, 2>) {
                let dt = q.dtype();
                narrow3(
                    attention::causal_attention_backward(
                        widen(q),
                        widen(k),
                        widen(v),
                        widen(weights),
                        widen(dcontext),
                        n_heads,
                    ),
                    dt,
                )
            }
            fn sum_squares<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, 1> {
                rows::sum_squares(x)
            }
            fn adamw_step<const D: usize>(
                weight: Tensor<Self, D>,
                grad: Tensor<Self, D>,
                m: Tensor<Self, D>,
                v: Tensor<Self, D>,
                step: &AdamwStep,
            ) -> (Tensor<Self, D>, Tensor<Self, D>, Tensor<Self, D>) {
                adamw::adamw_step(weight, grad, m, v, step)
            }
        }
    };
}
/// `x` in f32 (no-op if it is).
fn widen<B: burn::tensor::backend::Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.cast(FloatDType::F32)
}

/// `x` rounded to `dtype`, the precision the kernel's inputs came in.
fn narrow<B: burn::tensor::backend::Backend, const D: usize>(x: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    x.cast(FloatDType::from(dtype))
}

fn narrow2<B: burn::tensor::backend::Backend, const D1: usize, const D2: usize>(
    (x, y): (Tensor<B, D1>, Tensor<B, D2>),
    dtype: DType,
) -> (Tensor<B, D1>, Tensor<B, D2>) {
    (narrow(x, dtype), narrow(y, dtype))
}

fn narrow3<B: burn::tensor::backend::Backend, const D1: usize, const D2: usize, const D3: usize>(
    (x, y, z): (Tensor<B, D1>, Tensor<B, D2>, Tensor<B, D3>),
    dtype: DType,
) -> (Tensor<B, D1>, Tensor<B, D2>, Tensor<B, D3>) {
    (narrow(x, dtype), narrow(y, dtype), narrow(z, dtype))
}

cpu_kernels!(burn::backend::NdArray<f32>);
#[cfg(feature = "flex")]
cpu_kernels!(burn::backend::Flex);
