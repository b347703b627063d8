//! GPT-2's initialisation, in one place.
//!
//! Every weight matrix starts as N(0, 0.02²) and every bias at zero. The two
//! projections that write *into* the residual stream (attention output and MLP
//! output) get a smaller std, 0.02/√(2·n_layers): each block adds two such
//! branches to the stream, and the variance of a sum of 2·n_layers random
//! contributions grows with their count. Shrinking each one keeps the
//! residual stream at about the same scale however deep the model is, so
//! training starts stable (GPT-2 paper, section 2.3).

use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::tensor::{Distribution, Tensor};
use kernels::Backend;

/// Standard deviation of ordinary weights.
pub const INIT_STD: f64 = 0.02;

/// The smaller std of the residual projections.
pub fn residual_std(n_layers: usize) -> f64 {
    INIT_STD / (2.0 * n_layers as f64).sqrt()
}

/// A `Linear` with weight `[d_in, d_out]` ~ N(0, std²) and a zero bias.
/// (burn's own initialisers also draw the bias at random; GPT-2 zeroes it.)
pub fn linear<B: Backend>(d_in: usize, d_out: usize, bias: bool, std: f64, device: &B::Device) -> Linear<B> {
    let weight = Tensor::random([d_in, d_out], Distribution::Normal(0.0, std), device);
    Linear {
        weight: Param::from_tensor(weight),
        bias: bias.then(|| Param::from_tensor(Tensor::zeros([d_out], device))),
    }
}

/// An embedding table `[n, d]` ~ N(0, 0.02²).
pub fn embedding<B: Backend>(n: usize, d: usize, device: &B::Device) -> Embedding<B> {
    let weight = Tensor::random([n, d], Distribution::Normal(0.0, INIT_STD), device);
    Embedding { weight: Param::from_tensor(weight) }
}
