//! Cross-entropy: how surprised the model is by the token that came next.
//!
//! For one position with logits z and true next token y:
//! `loss = -log softmax(z)[y] = logsumexp(z) - z[y]`. A model guessing
//! uniformly over V tokens scores ln V (8.32 for V = 4096): the number a fresh
//! model should start near, and a quick sanity check of any training run.

use burn::tensor::{Int, Tensor};

use kernels::Backend;

use crate::precision::full;

/// Negative log-probability of each target: logits `[n, vocab]`, targets `[n]` → `[n]`.
///
/// One fused kernel (`kernels::token_nll`): the log-sum-exp subtracts the row max
/// before exponentiating, so large logits cannot overflow, and the backward
/// pass is softmax(z) − onehot(y) in one sweep over the logits. The same
/// value as `-log_softmax(logits)[y]` (tested).
///
/// Computed in f32 whatever precision the logits came in (see
/// `model::precision`): the log-sum-exp over the vocabulary and the number
/// training minimises are where rounding would hurt most.
pub fn token_nll<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    kernels::token_nll(full(logits), targets)
}

/// Mean cross-entropy over all positions → `[1]`.
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    token_nll(logits, targets).mean()
}

/// Mean cross-entropy over the positions where `mask` is 1 (fine-tuning uses
/// this to learn only from the answer, never from the prompt or padding).
/// `mask [n]` holds 0.0/1.0; whatever the logits at masked positions, they
/// contribute nothing, to the value or to the gradient.
pub fn masked_cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    mask: Tensor<B, 1>,
) -> Tensor<B, 1> {
    let nll = token_nll(logits, targets);
    // Clamp the count at 1 so an all-masked batch gives 0, not 0/0.
    let count = mask.clone().sum().clamp_min(1.0);
    (nll * mask).sum() / count
}
