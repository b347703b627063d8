//! The position-wise feed-forward network: expand 4×, GELU, project back.
//!
//! Attention moves information *between* positions; the MLP then processes
//! each position on its own. Most of a GPT's parameters live here.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Tensor, backend::Backend};

use crate::config::GptConfig;
use crate::init;
use crate::lora::LoraLinear;

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

    /// `[batch, seq, d_model]` → `[batch, seq, 4·d_model]` → `[batch, seq, d_model]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        // GELU: a smooth ReLU. Exact (erf) form, as PyTorch's nn.GELU();
        // GPT-2 used a tanh approximation of the same curve.
        let hidden = gelu(self.fc.forward(x));
        self.dropout.forward(self.proj.forward(hidden))
    }
}
