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

use burn::tensor::{Int, Tensor};

use crate::Backend;
use crate::adamw::AdamwStep;

// One implementation for both CPU backends: the loops only need to read
// and write host buffers (`host::HostCopy`), which both provide.
macro_rules! cpu_kernels {
    ($backend:ty) => {
        impl Backend for $backend {
            fn softmax_rows(x: Tensor<Self, 2>) -> Tensor<Self, 2> {
                rows::softmax_rows(x)
            }
            fn softmax_rows_backward(y: Tensor<Self, 2>, dy: Tensor<Self, 2>) -> Tensor<Self, 2> {
                rows::softmax_rows_backward(y, dy)
            }
            fn gelu_tanh(x: Tensor<Self, 2>) -> Tensor<Self, 2> {
                rows::gelu_tanh(x)
            }
            fn gelu_tanh_backward(x: Tensor<Self, 2>, dy: Tensor<Self, 2>) -> Tensor<Self, 2> {
                rows::gelu_tanh_backward(x, dy)
            }
            fn cross_entropy_rows(
                logits: Tensor<Self, 2>,
                targets: Tensor<Self, 1, Int>,
            ) -> (Tensor<Self, 1>, Tensor<Self, 1>) {
                rows::cross_entropy_rows(logits, targets)
            }
            fn cross_entropy_rows_backward(
                logits: Tensor<Self, 2>,
                targets: Tensor<Self, 1, Int>,
                logsumexp: Tensor<Self, 1>,
                dnll: Tensor<Self, 1>,
            ) -> Tensor<Self, 2> {
                rows::cross_entropy_rows_backward(logits, targets, logsumexp, dnll)
            }
            fn layer_norm_rows(
                x: Tensor<Self, 2>,
                gamma: Tensor<Self, 1>,
                beta: Tensor<Self, 1>,
                eps: f64,
            ) -> (Tensor<Self, 2>, Tensor<Self, 1>, Tensor<Self, 1>) {
                rows::layer_norm_rows(x, gamma, beta, eps)
            }
            fn layer_norm_rows_backward(
                x: Tensor<Self, 2>,
                gamma: Tensor<Self, 1>,
                mean: Tensor<Self, 1>,
                rstd: Tensor<Self, 1>,
                dy: Tensor<Self, 2>,
            ) -> (Tensor<Self, 2>, Tensor<Self, 1>, Tensor<Self, 1>) {
                rows::layer_norm_rows_backward(x, gamma, mean, rstd, dy)
            }
            fn matmul(a: Tensor<Self, 2>, b: Tensor<Self, 2>, b_transposed: bool) -> Tensor<Self, 2> {
                matmul::matmul(a, b, b_transposed)
            }
            fn matmul_backward(
                a: Tensor<Self, 2>,
                b: Tensor<Self, 2>,
                dy: Tensor<Self, 2>,
                b_transposed: bool,
            ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
                matmul::matmul_backward(a, b, dy, b_transposed)
            }
            fn linear_rows(x: Tensor<Self, 2>, w: Tensor<Self, 2>, bias: Tensor<Self, 1>) -> Tensor<Self, 2> {
                matmul::linear(x, w, bias)
            }
            fn linear_rows_backward(
                x: Tensor<Self, 2>,
                w: Tensor<Self, 2>,
                dy: Tensor<Self, 2>,
            ) -> (Tensor<Self, 2>, Tensor<Self, 2>, Tensor<Self, 1>) {
                matmul::linear_backward(x, w, dy)
            }
            fn causal_attention(
                q: Tensor<Self, 2>,
                k: Tensor<Self, 2>,
                v: Tensor<Self, 2>,
                batch: usize,
                n_heads: usize,
            ) -> (Tensor<Self, 2>, Tensor<Self, 4>) {
                attention::causal_attention(q, k, v, batch, n_heads)
            }
            fn causal_attention_backward(
                q: Tensor<Self, 2>,
                k: Tensor<Self, 2>,
                v: Tensor<Self, 2>,
                weights: Tensor<Self, 4>,
                dcontext: Tensor<Self, 2>,
                n_heads: usize,
            ) -> (Tensor<Self, 2>, Tensor<Self, 2>, Tensor<Self, 2>) {
                attention::causal_attention_backward(q, k, v, weights, dcontext, n_heads)
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
cpu_kernels!(burn::backend::NdArray<f32>);
#[cfg(feature = "flex")]
cpu_kernels!(burn::backend::Flex);
