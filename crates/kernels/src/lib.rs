//! The fused operations of the model and its optimizer: the operations
//! that dominate a training step, each written as one operation with a
//! hand-written backward pass. The `model` crate calls them through the
//! named functions at the bottom of this file and never sees how they run.
//!
//! Why they exist: burn's autodiff records every primitive operation. A
//! softmax becomes max, subtract, exp, sum and divide, and the backward pass
//! replays the derivative of each one: a dozen passes over memory, mostly on
//! one core, and a fresh buffer for each. On the CPU that cost more than all
//! the matrix multiplications of the tiny model (README, Performance). Here
//! each operation is one node in the graph, and its backward pass is the
//! closed-form derivative:
//!
//! | operation | forward | backward (`dy` = gradient of the output) |
//! |---|---|---|
//! | `softmax_rows` | y = exp(x − max) / Σ exp(x − max) | dx = y ⊙ (dy − Σ y ⊙ dy) |
//! | `gelu_tanh` | y = ½x(1 + tanh u), u = √(2/π)(x + 0.044715x³) | dx = dy · (½(1 + tanh u) + ½x(1 − tanh²u)·√(2/π)(1 + 3·0.044715x²)) |
//! | `cross_entropy_rows` | nll = logsumexp(z) − z[t] | dz = (softmax(z) − onehot(t)) · dnll |
//! | `layer_norm_rows` | x̂ = (x − μ)·rstd, y = γ ⊙ x̂ + β | g = dy ⊙ γ; dx = rstd·(g − mean(g) − x̂·mean(g ⊙ x̂)); dγ = Σ dy ⊙ x̂; dβ = Σ dy |
//! | `causal_attention` | P = softmax(QKᵀ/√d, future masked), O = P·V | dV = Pᵀ·dO; dP = dO·Vᵀ; dS = P ⊙ (dP − Σ P ⊙ dP)/√d; dQ = dS·K; dK = dSᵀ·Q |
//! | `matmul` | y = a·b | da = dy·bᵀ; db = aᵀ·dy |
//! | `linear_rows` | y = x·W + b | dx = dy·Wᵀ; dW = xᵀ·dy; db = Σ dy over rows |
//!
//! Two more kernels serve the optimizer, not the model, and have no
//! backward pass: [`Backend::adamw_step`], the AdamW update of one weight
//! tensor ([`adamw`] explains it), and [`Backend::sum_squares`], what
//! gradient clipping measures.
//!
//! Attention and matmul are there for the copies they avoid: burn splits
//! heads with a transpose and makes it contiguous before each product, and
//! its matmul backward materialises the transposes; the CPU versions read
//! the same memory through strides instead.
//!
//! The layout, one layer per place:
//! - this file: the [`Backend`] trait, whose default methods are the plain
//!   tensor formulas of [`reference`] and [`adamw`] (what the CUDA backend
//!   runs, and what the tests hold every implementation to), and the
//!   functions the model calls;
//! - [`cpu`]: the same formulas as loops over host memory, for burn's two
//!   CPU backends (ndarray, and flex behind the `flex` feature). A GPU
//!   implementation belongs in a sibling folder of it, tested by the same
//!   tests (`tests/`, written once for any backend);
//! - [`autodiff`]: the graph node of each operation, which calls the inner
//!   backend's forward and keeps what its backward needs.
//!
//! The backends themselves are named once, at the end of this file
//! ([`Cpu`], [`CpuTrain`]) and in `train::device` (the `--device` flag).

pub mod adamw;
pub mod autodiff;
pub mod cpu;
pub mod quant;
pub mod reference;

use std::sync::Arc;

use burn::tensor::{DType, Int, Tensor};

use crate::quant::QuantizedMatrix;

/// What the model and the optimizer ask of a backend: burn's `Backend`,
/// plus the operations it runs as single fused steps. Every method has a
/// plain default, so a backend opts in by overriding, and the default is
/// always there to check against. Tensors are 2-D, `[rows, cols]` (the
/// attention weights 4-D).
pub trait Backend: burn::tensor::backend::Backend {
    /// Softmax of each row of `x [rows, cols]`.
    fn softmax_rows(x: Tensor<Self, 2>) -> Tensor<Self, 2> {
        reference::softmax_rows(x)
    }
    /// dL/dx of the row softmax, from its output `y` and dL/dy.
    fn softmax_rows_backward(y: Tensor<Self, 2>, dy: Tensor<Self, 2>) -> Tensor<Self, 2> {
        reference::softmax_rows_backward(y, dy)
    }
    /// GPT-2's GELU (tanh form), element-wise.
    fn gelu_tanh(x: Tensor<Self, 2>) -> Tensor<Self, 2> {
        reference::gelu_tanh(x)
    }
    /// dL/dx of the GELU, from its input `x` and dL/dy.
    fn gelu_tanh_backward(x: Tensor<Self, 2>, dy: Tensor<Self, 2>) -> Tensor<Self, 2> {
        reference::gelu_tanh_backward(x, dy)
    }
    /// Cross-entropy of each row of `logits [rows, vocab]` against
    /// `targets [rows]`: returns `(nll [rows], logsumexp [rows])`. The
    /// log-sum-exp is what the backward pass needs to rebuild the softmax.
    fn cross_entropy_rows(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
    ) -> (Tensor<Self, 1>, Tensor<Self, 1>) {
        reference::cross_entropy_rows(logits, targets)
    }
    /// dL/dlogits, from the forward's inputs, its log-sum-exp and dL/dnll.
    fn cross_entropy_rows_backward(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
        logsumexp: Tensor<Self, 1>,
        dnll: Tensor<Self, 1>,
    ) -> Tensor<Self, 2> {
        reference::cross_entropy_rows_backward(logits, targets, logsumexp, dnll)
    }
    /// LayerNorm of each row of `x [rows, d]` with gain `gamma [d]` and bias
    /// `beta [d]`: returns `(y [rows, d], mean [rows], rstd [rows])`, rstd
    /// being 1/√(variance + eps). The backward pass needs the last two.
    fn layer_norm_rows(
        x: Tensor<Self, 2>,
        gamma: Tensor<Self, 1>,
        beta: Tensor<Self, 1>,
        eps: f64,
    ) -> (Tensor<Self, 2>, Tensor<Self, 1>, Tensor<Self, 1>) {
        reference::layer_norm_rows(x, gamma, beta, eps)
    }
    /// `(dx [rows, d], dgamma [d], dbeta [d])` from the forward's input, gain,
    /// statistics and dL/dy.
    fn layer_norm_rows_backward(
        x: Tensor<Self, 2>,
        gamma: Tensor<Self, 1>,
        mean: Tensor<Self, 1>,
        rstd: Tensor<Self, 1>,
        dy: Tensor<Self, 2>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 1>, Tensor<Self, 1>) {
        reference::layer_norm_rows_backward(x, gamma, mean, rstd, dy)
    }
    /// `a [m, k] · b [k, n]` → `[m, n]`; with `b_transposed`, `b` is
    /// given as bᵀ `[n, k]` (the layout of a tied embedding table).
    fn matmul(a: Tensor<Self, 2>, b: Tensor<Self, 2>, b_transposed: bool) -> Tensor<Self, 2> {
        reference::matmul(a, b, b_transposed)
    }
    /// `(da, db)` of `a · b`, from its inputs and dL/dy: da = dy · bᵀ,
    /// db = aᵀ · dy (returned as dbᵀ when `b_transposed`, like `b`).
    fn matmul_backward(
        a: Tensor<Self, 2>,
        b: Tensor<Self, 2>,
        dy: Tensor<Self, 2>,
        b_transposed: bool,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        reference::matmul_backward(a, b, dy, b_transposed)
    }
    /// `x [m, k] · deq(w) [k, n]` → `[m, n]` for a frozen quantized weight,
    /// dequantized a few rows at a time (see `quant`); on autodiff, only
    /// x's gradient flows back, computed the same way.
    fn quantized_matmul(x: Tensor<Self, 2>, w: Arc<QuantizedMatrix>) -> Tensor<Self, 2> {
        quant::dequantized_product(x, &w)
    }
    /// `x [m, k] · w [k, n] + bias [n]` → `[m, n]`, the bias added to every
    /// row: a linear layer.
    fn linear_rows(x: Tensor<Self, 2>, w: Tensor<Self, 2>, bias: Tensor<Self, 1>) -> Tensor<Self, 2> {
        reference::linear(x, w, bias)
    }
    /// `(dx, dw, dbias)` of a linear layer, from its inputs and dL/dy.
    fn linear_rows_backward(
        x: Tensor<Self, 2>,
        w: Tensor<Self, 2>,
        dy: Tensor<Self, 2>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>, Tensor<Self, 1>) {
        reference::linear_backward(x, w, dy)
    }
    /// Causal self-attention of `batch` sequences given as rows, `q, k, v
    /// [batch·seq, d_model]` (sequence after sequence), whose last dimension
    /// holds `n_heads` heads side by side: returns `(context [batch·seq,
    /// d_model], weights [batch, heads, seq, seq])`, the weights being
    /// softmax(QKᵀ/√head_dim) with the future masked out.
    fn causal_attention(
        q: Tensor<Self, 2>,
        k: Tensor<Self, 2>,
        v: Tensor<Self, 2>,
        batch: usize,
        n_heads: usize,
    ) -> (Tensor<Self, 2>, Tensor<Self, 4>) {
        reference::causal_attention(q, k, v, batch, n_heads)
    }
    /// `(dq, dk, dv)` from the forward's inputs, its weights and dL/dcontext.
    fn causal_attention_backward(
        q: Tensor<Self, 2>,
        k: Tensor<Self, 2>,
        v: Tensor<Self, 2>,
        weights: Tensor<Self, 4>,
        dcontext: Tensor<Self, 2>,
        n_heads: usize,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>, Tensor<Self, 2>) {
        reference::causal_attention_backward(q, k, v, weights, dcontext, n_heads)
    }
    /// Σ x² over every element of `x` (any rank), as a one-element tensor:
    /// one gradient's share of the global norm that clipping needs.
    fn sum_squares<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, 1> {
        reference::sum_squares(x)
    }
    /// One AdamW update of `weight` (any rank) from its gradient and its
    /// two moment estimates: returns the new `(weight, m, v)`.
    fn adamw_step<const D: usize>(
        weight: Tensor<Self, D>,
        grad: Tensor<Self, D>,
        m: Tensor<Self, D>,
        v: Tensor<Self, D>,
        step: &adamw::AdamwStep,
    ) -> (Tensor<Self, D>, Tensor<Self, D>, Tensor<Self, D>) {
        adamw::reference(weight, grad, m, v, step)
    }
}

/// burn's `AutodiffBackend` with the fused operations, whose inner backend
/// (the one validation and generation run on, without a graph) has them too.
pub trait AutodiffBackend: burn::tensor::backend::AutodiffBackend<InnerBackend: Backend> + Backend {}
impl<B> AutodiffBackend for B where B: burn::tensor::backend::AutodiffBackend<InnerBackend: Backend> + Backend {}

/// The CPU backend every test and the default run use: burn's ndarray, f32.
pub type Cpu = burn::backend::NdArray<f32>;
/// The CPU backend with automatic differentiation, for training.
pub type CpuTrain = burn::backend::Autodiff<Cpu>;

// The CUDA backend keeps the plain defaults for now: its element-wise
// operations already run in parallel on the GPU. Fused GPU kernels will
// override them from a folder beside `cpu/`.
#[cfg(feature = "cuda")]
impl Backend for burn::backend::Cuda<f32, i32> {}

// ---------------------------------------------------------------------------
// The functions the model and the optimizer call.
// ---------------------------------------------------------------------------

/// Softmax over the last dimension, any rank: `[..., cols]` → `[..., cols]`.
pub fn softmax<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let dims = x.dims();
    let cols = dims[D - 1];
    let rows = x.shape().num_elements() / cols;
    B::softmax_rows(x.reshape([rows, cols])).reshape(dims) // [rows, cols] in between
}

/// GPT-2's GELU (tanh form) of every element of `x [rows, cols]`.
pub fn gelu<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    B::gelu_tanh(x)
}

/// LayerNorm of each row of `x [rows, d]`: normalised to mean 0 and
/// variance 1 (`eps` added to the variance), then `gamma [d]` ⊙ · + `beta [d]`.
pub fn layer_norm<B: Backend>(x: Tensor<B, 2>, gamma: Tensor<B, 1>, beta: Tensor<B, 1>, eps: f64) -> Tensor<B, 2> {
    assert_same_dtype("layer_norm", &[x.dtype(), gamma.dtype(), beta.dtype()]);
    B::layer_norm_rows(x, gamma, beta, eps).0
}

/// `a [m, k] · b [k, n]` → `[m, n]`.
pub fn matmul<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
    assert_same_dtype("matmul", &[a.dtype(), b.dtype()]);
    B::matmul(a, b, false)
}

/// `a [m, k] · bᵀ`, for `b [n, k]` → `[m, n]`, without materialising bᵀ.
pub fn matmul_bt<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
    assert_same_dtype("matmul_bt", &[a.dtype(), b.dtype()]);
    B::matmul(a, b, true)
}

/// `x [m, k] · w [k, n] + bias [n]` → `[m, n]`: a linear layer.
pub fn linear<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>, bias: Tensor<B, 1>) -> Tensor<B, 2> {
    assert_same_dtype("linear", &[x.dtype(), w.dtype(), bias.dtype()]);
    B::linear_rows(x, w, bias)
}

/// `x [m, k] · deq(w) [k, n]` → `[m, n]`: a product with a frozen, quantized weight (QLoRA's base).
pub fn quantized_matmul<B: Backend>(x: Tensor<B, 2>, w: &Arc<QuantizedMatrix>) -> Tensor<B, 2> {
    B::quantized_matmul(x, w.clone())
}

/// Causal multi-head self-attention: `q, k, v [batch·seq, d_model]` →
/// `context [batch·seq, d_model]` (see [`Backend::causal_attention`]).
pub fn causal_attention<B: Backend>(
    q: Tensor<B, 2>,
    k: Tensor<B, 2>,
    v: Tensor<B, 2>,
    batch: usize,
    n_heads: usize,
) -> Tensor<B, 2> {
    assert_same_dtype("causal_attention", &[q.dtype(), k.dtype(), v.dtype()]);
    B::causal_attention(q, k, v, batch, n_heads).0
}

/// Negative log-probability of each target: logits `[n, vocab]`, targets `[n]` → `[n]`.
pub fn token_nll<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    B::cross_entropy_rows(logits, targets).0
}

/// Σ x² over every element of `x`, `[1]`.
pub fn sum_squares<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, 1> {
    B::sum_squares(x)
}

/// One AdamW update of `weight` from its gradient and moments: the new
/// `(weight, m, v)` (see [`adamw`]).
pub fn adamw_step<B: Backend, const D: usize>(
    weight: Tensor<B, D>,
    grad: Tensor<B, D>,
    m: Tensor<B, D>,
    v: Tensor<B, D>,
    step: &adamw::AdamwStep,
) -> (Tensor<B, D>, Tensor<B, D>, Tensor<B, D>) {
    // Master weights, their gradients and Adam's moments: f32 only (see
    // `model::precision`); a 16-bit weight would round most updates away.
    let dtypes = [weight.dtype(), grad.dtype(), m.dtype(), v.dtype()];
    assert!(dtypes.iter().all(|d| *d == DType::F32), "adamw_step: the optimizer runs on f32 tensors, got {dtypes:?}");
    B::adamw_step(weight, grad, m, v, step)
}

/// Panics, naming `what`, unless all `dtypes` are equal. burn checks only
/// the shapes and devices of an operation's inputs; given an f32 and a
/// bf16 tensor, some backends read both as the first one's dtype and
/// compute garbage without an error. Every kernel with several inputs
/// checks here (a comparison of tags, nothing read from memory).
pub fn assert_same_dtype(what: &str, dtypes: &[DType]) {
    if let Some(first) = dtypes.first() {
        assert!(
            dtypes.iter().all(|d| d == first),
            "{what}: inputs in different precisions {dtypes:?}; cast them to one first (see model::precision)"
        );
    }
}

#[cfg(test)]
mod tests;
