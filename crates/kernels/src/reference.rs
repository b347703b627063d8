//! The kernels written as ordinary tensor operations: the formulas of the
//! table in the crate's documentation, one line each. They run on any
//! backend (the CUDA one uses them), and the tests hold every other
//! implementation to them. (The AdamW formula is in [`crate::adamw`].)

use burn::tensor::{Bool, FloatDType, IndexingUpdateOp, Int, Tensor, backend::Backend};

/// Softmax of each row, `[rows, cols]`. Subtracting the row max first keeps
/// exp from overflowing; it cancels in the ratio.
pub fn softmax_rows<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let max = x.clone().max_dim(1); // [rows, 1]
    let exp = (x - max).exp(); // [rows, cols]
    let sum = exp.clone().sum_dim(1); // [rows, 1]
    exp / sum
}

/// dx = y ⊙ (dy − Σ_j y_j·dy_j): the softmax Jacobian applied to dy.
pub fn softmax_rows_backward<B: Backend>(y: Tensor<B, 2>, dy: Tensor<B, 2>) -> Tensor<B, 2> {
    let dot = (y.clone() * dy.clone()).sum_dim(1); // [rows, 1]
    y * (dy - dot)
}

/// √(2/π), the tanh-GELU's inner scale.
pub const GELU_C: f64 = 0.797_884_560_802_865_4;
/// The cubic term's weight in GPT-2's GELU.
pub const GELU_A: f64 = 0.044_715;

/// ½x(1 + tanh u), u = √(2/π)(x + 0.044715x³).
pub fn gelu_tanh<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let u = (x.clone() + x.clone().powi_scalar(3) * GELU_A) * GELU_C;
    x * (u.tanh() + 1.0) * 0.5
}

/// dy · (½(1 + tanh u) + ½x(1 − tanh²u) · √(2/π)(1 + 3·0.044715x²)).
pub fn gelu_tanh_backward<B: Backend>(x: Tensor<B, 2>, dy: Tensor<B, 2>) -> Tensor<B, 2> {
    let x2 = x.clone() * x.clone();
    let t = ((x.clone() + x2.clone() * x.clone() * GELU_A) * GELU_C).tanh();
    let du_dx = (x2 * (3.0 * GELU_A) + 1.0) * GELU_C;
    let sech2 = t.clone().powi_scalar(2).neg() + 1.0;
    let dgelu = (t + 1.0) * 0.5 + x * sech2 * du_dx * 0.5;
    dy * dgelu
}

/// `(nll [rows], logsumexp [rows])` of `logits [rows, vocab]` against `targets [rows]`.
pub fn cross_entropy_rows<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let [rows, _vocab] = logits.dims();
    let max = logits.clone().max_dim(1); // [rows, 1]
    let lse = (logits.clone() - max.clone()).exp().sum_dim(1).log() + max; // [rows, 1]
    let picked = logits.gather(1, targets.reshape([rows, 1])); // [rows, 1]: the target's logit
    ((lse.clone() - picked).reshape([rows]), lse.reshape([rows]))
}

/// dz = (softmax(z) − onehot(t)) · dnll, row by row.
pub fn cross_entropy_rows_backward<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    logsumexp: Tensor<B, 1>,
    dnll: Tensor<B, 1>,
) -> Tensor<B, 2> {
    let [rows, _vocab] = logits.dims();
    let dnll = dnll.reshape([rows, 1]);
    let probs = (logits - logsumexp.reshape([rows, 1])).exp(); // [rows, vocab]: softmax(z)
    // Subtract dnll at each row's target column.
    (probs * dnll.clone()).scatter(1, targets.reshape([rows, 1]), dnll.neg(), IndexingUpdateOp::Add)
}

/// `(y, mean [rows], rstd [rows])`: each row normalised to mean 0 and
/// variance 1, then scaled by `gamma` and shifted by `beta`.
pub fn layer_norm_rows<B: Backend>(
    x: Tensor<B, 2>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f64,
) -> (Tensor<B, 2>, Tensor<B, 1>, Tensor<B, 1>) {
    let [rows, d] = x.dims();
    let mean = x.clone().mean_dim(1); // [rows, 1]
    let centered = x - mean.clone(); // [rows, d]
    let var = (centered.clone() * centered.clone()).mean_dim(1); // [rows, 1], biased as PyTorch's
    let rstd = (var + eps).sqrt().recip(); // [rows, 1]
    let y = centered * rstd.clone() * gamma.reshape([1, d]) + beta.reshape([1, d]);
    (y, mean.reshape([rows]), rstd.reshape([rows]))
}

/// `(dx, dgamma, dbeta)`; see the table in the crate's documentation.
pub fn layer_norm_rows_backward<B: Backend>(
    x: Tensor<B, 2>,
    gamma: Tensor<B, 1>,
    mean: Tensor<B, 1>,
    rstd: Tensor<B, 1>,
    dy: Tensor<B, 2>,
) -> (Tensor<B, 2>, Tensor<B, 1>, Tensor<B, 1>) {
    let [rows, d] = x.dims();
    let rstd = rstd.reshape([rows, 1]);
    let xhat = (x - mean.reshape([rows, 1])) * rstd.clone(); // [rows, d]
    let dbeta = dy.clone().sum_dim(0).reshape([d]);
    let dgamma = (dy.clone() * xhat.clone()).sum_dim(0).reshape([d]);
    let g = dy * gamma.reshape([1, d]); // dL/dx̂
    let g_mean = g.clone().mean_dim(1); // [rows, 1]
    let gx_mean = (g.clone() * xhat.clone()).mean_dim(1); // [rows, 1]
    let dx = (g - g_mean - xhat * gx_mean) * rstd;
    (dx, dgamma, dbeta)
}

/// `a · b`, or `a · bᵀ` when `b_transposed`.
pub fn matmul<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>, b_transposed: bool) -> Tensor<B, 2> {
    if b_transposed { a.matmul(b.transpose()) } else { a.matmul(b) }
}

/// `(da, db)`: da = dy · bᵀ, db = aᵀ · dy (transposed back when `b_transposed`).
pub fn matmul_backward<B: Backend>(
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    dy: Tensor<B, 2>,
    b_transposed: bool,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    match b_transposed {
        false => (dy.clone().matmul(b.transpose()), a.transpose().matmul(dy)), // [m, n]·[n, k], [k, m]·[m, n]
        true => (dy.clone().matmul(b), dy.transpose().matmul(a)),              // [m, n]·[n, k], [n, m]·[m, k]
    }
}

/// x·w + bias, the bias `[n]` broadcast over the rows.
pub fn linear<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>, bias: Tensor<B, 1>) -> Tensor<B, 2> {
    x.matmul(w) + bias.unsqueeze() // [m, k]·[k, n] + [1, n]
}

/// `(dx, dw, dbias)`: the matmul's two, and dbias = Σ dy over rows.
pub fn linear_backward<B: Backend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
    dy: Tensor<B, 2>,
) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 1>) {
    let [_, n] = dy.dims();
    let dbias = dy.clone().sum_dim(0).reshape([n]); // [m, n] → [1, n] → [n]
    let (dx, dw) = matmul_backward(x, w, dy, false);
    (dx, dw, dbias)
}

/// Σ x² over all elements, `[1]`.
pub fn sum_squares<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, 1> {
    x.square().sum()
}

/// `[batch·seq, heads·hd]` → `[batch, heads, seq, hd]`.
pub fn split_heads<B: Backend>(x: Tensor<B, 2>, batch: usize, n_heads: usize) -> Tensor<B, 4> {
    let [rows, d_model] = x.dims();
    x.reshape([batch, rows / batch, n_heads, d_model / n_heads]).swap_dims(1, 2)
}

/// `[batch, heads, seq, hd]` → `[batch·seq, heads·hd]`.
pub fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 2> {
    let [batch, heads, seq, hd] = x.dims();
    x.swap_dims(1, 2).reshape([batch * seq, heads * hd])
}

/// `(context, weights)`: weights = softmax(Q·Kᵀ/√hd, future masked), context = weights·V.
pub fn causal_attention<B: Backend>(
    q: Tensor<B, 2>,
    k: Tensor<B, 2>,
    v: Tensor<B, 2>,
    batch: usize,
    n_heads: usize,
) -> (Tensor<B, 2>, Tensor<B, 4>) {
    let [rows, d_model] = q.dims();
    let seq = rows / batch;
    let scale = 1.0 / ((d_model / n_heads) as f64).sqrt();
    let split = |t| split_heads(t, batch, n_heads);
    let (q, k, v) = (split(q), split(k), split(v));
    let scores = q.matmul(k.swap_dims(2, 3)) * scale; // [b, h, s, hd] · [b, h, hd, s] → [b, h, s, s]
    // [s, s] → [1, 1, s, s]: true above the diagonal, where key j is in query i's future.
    let future = Tensor::<B, 2, Bool>::tril_mask([seq, seq], 0, &scores.device()).reshape([1, 1, seq, seq]);
    let scores = scores.mask_fill(future, f32::NEG_INFINITY);
    // The softmax in f32 whatever the scores' precision (mixed precision:
    // exp amplifies a rounded score's error); the weights are stored back
    // in the inputs' precision for the product with V.
    let dtype = FloatDType::from(scores.dtype());
    let scores = scores.cast(FloatDType::F32).reshape([batch * n_heads * seq, seq]);
    let weights = softmax_rows(scores).reshape([batch, n_heads, seq, seq]).cast(dtype);
    (merge_heads(weights.clone().matmul(v)), weights) // [b, h, s, s] · [b, h, s, hd] → [b, h, s, hd]
}

/// `(dq, dk, dv)`; see the table in the crate's documentation.
pub fn causal_attention_backward<B: Backend>(
    q: Tensor<B, 2>,
    k: Tensor<B, 2>,
    v: Tensor<B, 2>,
    weights: Tensor<B, 4>,
    dcontext: Tensor<B, 2>,
    n_heads: usize,
) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>) {
    let ([_, d_model], batch) = (q.dims(), weights.dims()[0]);
    let scale = 1.0 / ((d_model / n_heads) as f64).sqrt();
    let split = |t| split_heads(t, batch, n_heads);
    let (q, k, v) = (split(q), split(k), split(v));
    let d_out = split(dcontext); // [b, h, s, hd]
    let dv = weights.clone().swap_dims(2, 3).matmul(d_out.clone()); // [b, h, s, s] · [b, h, s, hd]
    let dp = d_out.matmul(v.swap_dims(2, 3)); // [b, h, s, hd] · [b, h, hd, s] → [b, h, s, s]
    let dot = (weights.clone() * dp.clone()).sum_dim(3); // [b, h, s, 1]
    let ds = weights * (dp - dot) * scale; // [b, h, s, s]; 0 wherever the weight is 0 (the future)
    let dq = ds.clone().matmul(k); // [b, h, s, s] · [b, h, s, hd]
    let dk = ds.swap_dims(2, 3).matmul(q); // [b, h, s, s] · [b, h, s, hd]
    (merge_heads(dq), merge_heads(dk), merge_heads(dv))
}
