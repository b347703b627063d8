//! One transformer block, pre-LayerNorm style:
//!
//! ```text
//! x = x + attention(layer_norm_1(x))
//! x = x + mlp(layer_norm_2(x))
//! ```
//!
//! The `x + ...` are the residual (shortcut) connections: each sub-layer only
//! adds a correction to a stream that flows unchanged from input to output, so
//! gradients reach early layers directly, however deep the stack. "Pre-norm"
//! normalises the *input* of each branch and leaves the stream itself
//! untouched; the original Transformer normalised after the addition
//! (post-norm), which needs careful warmup to train deep models at all.

use burn::module::Module;
use burn::tensor::Tensor;
use kernels::Backend;

use crate::attention::MultiHeadAttention;
use crate::config::GptConfig;
use crate::kv_cache::LayerCache;
use crate::mlp::Mlp;
use crate::norm::LayerNorm;
use crate::precision::add_to_stream;

#[derive(Module, Debug)]
pub struct TransformerBlock<B: Backend> {
    /// Normalises the input of the attention branch, gamma/beta `[d_model]`.
    pub norm1: LayerNorm<B>,
    pub attention: MultiHeadAttention<B>,
    /// Normalises the input of the MLP branch, gamma/beta `[d_model]`.
    pub norm2: LayerNorm<B>,
    pub mlp: Mlp<B>,
}

impl<B: Backend> TransformerBlock<B> {
    pub fn new(cfg: &GptConfig, device: &B::Device) -> Self {
        let norm = || LayerNorm::new(cfg.d_model, cfg.layer_norm_eps, device);
        Self {
            norm1: norm(),
            attention: MultiHeadAttention::new(cfg, device),
            norm2: norm(),
            mlp: Mlp::new(cfg, device),
        }
    }

    /// `batch` sequences given as rows, `[batch·seq, d_model]` →
    /// `[batch·seq, d_model]` (only attention needs to know where one
    /// sequence ends).
    pub fn forward(&self, x: Tensor<B, 2>, batch: usize, cache: Option<&mut LayerCache<B>>) -> Tensor<B, 2> {
        // The stream stays f32; each sublayer's (low-precision) output is
        // widened as it is added (see `model::precision`).
        let shortcut = x.clone();
        let x = add_to_stream(shortcut, self.attention.forward(self.norm1.forward(x), batch, cache));
        let shortcut = x.clone();
        add_to_stream(shortcut, self.mlp.forward(self.norm2.forward(x)))
    }
}
