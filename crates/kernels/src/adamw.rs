//! The AdamW update as one kernel: the optimizer's step for one parameter
//! tensor. This file holds the formula and its plain tensor version; the
//! CPU loop is `cpu/adamw.rs`.
//!
//! For each element, with gradient g and the step number t (1, 2, ...):
//!
//! ```text
//! m ← β1·m + (1 − β1)·g           running mean of the gradient      ("moment 1")
//! v ← β2·v + (1 − β2)·g²          running mean of its square        ("moment 2")
//! m̂ = m / (1 − β1ᵗ)               both started at 0, so early means are too
//! v̂ = v / (1 − β2ᵗ)               small; these divisions undo that bias
//! w ← w·(1 − lr·λ) − lr · m̂ / (√v̂ + ε)
//! ```
//!
//! m̂/√v̂ is about ±1 for a gradient that keeps its sign and smaller for one
//! that flips: every weight moves by about `lr`, whatever the scale of its
//! gradient. λ (weight decay) shrinks the weight itself, apart from the
//! gradient: the "decoupled" decay that makes it AdamW rather than Adam.
//!
//! Why a kernel: burn's AdamW writes each line above as separate tensor
//! operations, about a dozen passes over memory per parameter, each into a
//! new buffer. Here one pass updates the weight and both moments in place
//! (what that saved: README, Performance). The arithmetic is burn's, in the
//! same order, so both give the same numbers (tested in the train crate's
//! `optim.rs`).

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// The settings of one AdamW step.
#[derive(Debug, Clone, Copy)]
pub struct AdamwStep {
    /// The learning rate for this step (the schedule's value).
    pub lr: f64,
    /// Decay of the gradient's running mean (GPT: 0.9).
    pub beta_1: f32,
    /// Decay of the squared gradient's running mean (GPT: 0.95).
    pub beta_2: f32,
    /// Added to √v̂ so a weight that never had a gradient does not divide by 0.
    pub epsilon: f32,
    /// λ: the fraction of `lr` by which the weight shrinks each step.
    pub weight_decay: f32,
    /// The step number t, counted from 1: the bias corrections need it.
    pub time: i32,
}

impl AdamwStep {
    /// 1 − β1ᵗ and 1 − β2ᵗ, the bias corrections.
    pub fn corrections(&self) -> (f32, f32) {
        (1.0 - self.beta_1.powi(self.time), 1.0 - self.beta_2.powi(self.time))
    }
}

/// The plain formula, as tensor operations: returns `(weight, m, v)`.
pub fn reference<B: Backend, const D: usize>(
    weight: Tensor<B, D>,
    grad: Tensor<B, D>,
    m: Tensor<B, D>,
    v: Tensor<B, D>,
    s: &AdamwStep,
) -> (Tensor<B, D>, Tensor<B, D>, Tensor<B, D>) {
    let (c1, c2) = s.corrections();
    let m = m.mul_scalar(s.beta_1) + grad.clone().mul_scalar(1.0 - s.beta_1);
    let v = v.mul_scalar(s.beta_2) + grad.square().mul_scalar(1.0 - s.beta_2);
    let update = m.clone().div_scalar(c1) / (v.clone().div_scalar(c2).sqrt().add_scalar(s.epsilon));
    let weight = weight.mul_scalar(1.0 - s.lr * s.weight_decay as f64) - update.mul_scalar(s.lr);
    (weight, m, v)
}
