//! The position-wise feed-forward network: expand 4×, GELU, project back.
//!
//! Attention moves information *between* positions; the MLP then processes
//! each position on its own. Most of a GPT's parameters live here.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::Tensor;

use kernels::Backend;

use crate::config::GptConfig;
use crate::init;
use crate::lora::layer::LoraLinear;

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// Expansion, weight `[d_model, 4·d_model]`.
    pub fc: LoraLinear<B>,
    /// Projection back into the residual stream, weight `[4·d_model, d_model]`.
    pub proj: LoraLinear<B>,
    dropout: Dropout,
}

impl<B: Backend> Mlp<B> {
    pub fn new(cfg: &GptConfig, device: &B::Device) -> Self {
        let (d, hidden) = (cfg.d_model, 4 * cfg.d_model);
        Self {
            fc: LoraLinear::new(init::linear(d, hidden, true, init::INIT_STD, device)),
            proj: LoraLinear::new(init::linear(hidden, d, true, init::residual_std(cfg.n_layers), device)),
            dropout: DropoutConfig::new(cfg.dropout).init(),
        }
    }

    /// `[rows, d_model]` → `[rows, 4·d_model]` → `[rows, d_model]`, one row per position.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        // GELU, a smooth ReLU, in GPT-2's tanh form:
        // 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))). It stays within 5e-4 of
        // the exact x·Φ(x) (burn's `gelu`, tested below) and is what GPT-2 and
        // the PyTorch reference (`approximate="tanh"`) use. It runs as one
        // fused kernel with a hand-written backward pass (see `kernels`).
        let hidden = kernels::gelu(self.fc.forward(x));
        self.dropout.forward(self.proj.forward(hidden))
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::gelu;
    use kernels::Cpu;

    use super::*;

    #[test]
    fn gelu_is_the_tanh_formula_and_close_to_exact_gelu() {
        let device = Default::default();
        let xs: Vec<f32> = (-60..=60).map(|i| i as f32 / 10.0).collect(); // -6.0 ..= 6.0
        let x = Tensor::<Cpu, 1>::from_floats(xs.as_slice(), &device).reshape([1, xs.len()]);
        let ours: Vec<f32> = kernels::gelu(x.clone()).into_data().to_vec().unwrap();
        let exact: Vec<f32> = gelu(x).into_data().to_vec().unwrap(); // burn's x·Φ(x)
        let c = (2.0f32 / std::f32::consts::PI).sqrt();
        for ((&x, &g), &e) in xs.iter().zip(&ours).zip(&exact) {
            let tanh_form = 0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh());
            assert!((g - tanh_form).abs() < 1e-5, "x {x}: {g} vs the tanh formula {tanh_form}");
            assert!((g - e).abs() < 5e-4, "x {x}: {g} vs exact {e}");
        }
    }
}
