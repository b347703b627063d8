//! The whole GPT: embeddings → N transformer blocks → LayerNorm → logits.
//!
//! ```text
//! tokens [b, t] ─ token embedding [b, t, d] ─┐
//!                 position embedding [t, d] ─┴─ + ─ dropout ─ block × N ─ LayerNorm ─ head → logits [b·t, vocab]
//! ```
//!
//! From the embeddings on, activations travel as rows, `[b·t, d]`: one row
//! per position, sequence after sequence. Every layer but attention treats
//! each position on its own, so rows are all they need, and attention is
//! told where one sequence ends (`batch`). Notebook 02 explains the choice.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Embedding, Linear};
use burn::tensor::{Int, Tensor, TensorData};
use kernels::Backend;

use crate::block::TransformerBlock;
use crate::config::{ComputeConfig, GptConfig};
use crate::init;
use crate::kv_cache::KvCache;
use crate::loss::cross_entropy;
use crate::norm::LayerNorm;
use crate::precision::{Precision, full};

#[derive(Module, Debug)]
pub struct Gpt<B: Backend> {
    /// Token embedding table `[vocab, d_model]`: one learned vector per token.
    pub token_emb: Embedding<B>,
    /// Learned position embedding `[context_length, d_model]`: attention by
    /// itself cannot tell positions apart, so each position adds its own vector.
    pub pos_emb: Embedding<B>,
    emb_dropout: Dropout,
    pub blocks: Vec<TransformerBlock<B>>,
    /// Final LayerNorm `[d_model]`: pre-norm blocks leave the stream
    /// un-normalised, so it is normalised once before the head.
    pub final_norm: LayerNorm<B>,
    /// Output head `[d_model, vocab]` when embeddings are untied; with tied
    /// embeddings (GPT-2) the head reuses `token_emb` transposed.
    pub lm_head: Option<Linear<B>>,
    context_length: usize,
    /// The precision of the LM head's product (`ComputeConfig::precision`);
    /// not saved: the weights are f32 whatever precision trained them.
    #[module(skip)]
    precision: Precision,
}

impl<B: Backend> Gpt<B> {
    /// A freshly initialised model (see `init.rs` for why these values).
    /// Panics on an invalid config: call `GptConfig::validate` first for a
    /// message a user can act on.
    pub fn new(cfg: &GptConfig, device: &B::Device) -> Self {
        cfg.validate().expect("invalid GptConfig");
        Self {
            token_emb: init::embedding(cfg.vocab_size, cfg.d_model, device),
            pos_emb: init::embedding(cfg.context_length, cfg.d_model, device),
            emb_dropout: DropoutConfig::new(cfg.dropout).init(),
            blocks: (0..cfg.n_layers).map(|_| TransformerBlock::new(cfg, device)).collect(),
            final_norm: LayerNorm::new(cfg.d_model, cfg.layer_norm_eps, device),
            lm_head: (!cfg.tie_embeddings)
                .then(|| init::linear(cfg.d_model, cfg.vocab_size, false, init::INIT_STD, device)),
            context_length: cfg.context_length,
            precision: Precision::F32,
        }
    }

    /// The same model computing as `compute` says (see [`ComputeConfig`]).
    pub fn with_compute(mut self, compute: &ComputeConfig) -> Self {
        for block in &mut self.blocks {
            block.attention.fused = compute.fused_attention;
        }
        self.with_precision(compute.precision)
    }

    /// The same model, its products in `precision` (see `model::precision`).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        for (_, layer) in self.lora_layers_mut() {
            layer.precision = precision;
        }
        self.precision = precision;
        self
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    pub fn n_layers(&self) -> usize {
        self.blocks.len()
    }

    /// `tokens [batch, seq]` → `logits [batch·seq, vocab]`: at every
    /// position, a score for each possible next token (row `i·seq + t` is
    /// sequence i, position t).
    ///
    /// With a cache, `tokens` are only the new positions: the keys and
    /// values of earlier ones are read from the cache, and these are
    /// appended to it. The logits are the same as a forward pass over the
    /// whole text (tested).
    pub fn forward(&self, tokens: Tensor<B, 2, Int>, mut cache: Option<&mut KvCache<B>>) -> Tensor<B, 2> {
        let [batch, seq] = tokens.dims();
        let past = cache.as_ref().map_or(0, |c| c.len());
        assert!(
            past + seq <= self.context_length,
            "sequence of {} tokens exceeds the context length {}",
            past + seq,
            self.context_length
        );
        let device = tokens.device();
        let positions = Tensor::<B, 1, Int>::arange(past as i64..(past + seq) as i64, &device).reshape([1, seq]);
        // [batch, seq, d_model] + [1, seq, d_model] (broadcast over the batch)
        let x = self.token_emb.forward(tokens) + self.pos_emb.forward(positions);
        let [_, _, d_model] = x.dims();
        // [batch, seq, d_model] → [batch·seq, d_model]
        let mut x = self.emb_dropout.forward(x).reshape([batch * seq, d_model]);
        for (i, block) in self.blocks.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = block.forward(x, batch, layer_cache);
        }
        let x = self.final_norm.forward(x);
        self.head(x)
    }

    /// `[batch·seq, d_model]` → `[batch·seq, vocab]`: the product in the
    /// model's precision, the logits handed back in f32 (what the loss and
    /// the sampler read; see `model::precision`).
    fn head(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let low = self.precision;
        let x = low.low(x);
        let logits = match &self.lm_head {
            Some(head) => {
                let w = low.low(head.weight.val()); // [d_model, vocab]; the head has no bias
                kernels::matmul(x, w) // [batch·seq, d_model] · [d_model, vocab] → [batch·seq, vocab]
            }
            None => {
                // Tied: logits = x · Eᵀ, E = token_emb [vocab, d_model].
                // `matmul_bt` reads E as stored and multiplies by its transpose.
                let emb = low.low(self.token_emb.weight.val()); // [vocab, d_model]
                kernels::matmul_bt(x, emb) // [batch·seq, d_model] · [d_model, vocab] → [batch·seq, vocab]
            }
        };
        full(logits)
    }

    /// Mean next-token cross-entropy of `inputs [b, t]` against `targets [b, t]`.
    pub fn loss(&self, inputs: Tensor<B, 2, Int>, targets: Tensor<B, 2, Int>) -> Tensor<B, 1> {
        let [batch, seq] = targets.dims();
        // Every position is one row: logits [b·t, vocab] against targets [b·t].
        cross_entropy(self.forward(inputs, None), targets.reshape([batch * seq]))
    }

    /// Ids of the embedding tables, which AdamW leaves out of weight decay.
    pub fn embedding_param_ids(&self) -> Vec<burn::module::ParamId> {
        vec![self.token_emb.weight.id, self.pos_emb.weight.id]
    }
}

/// Host token ids, row-major `[batch·seq]`, → an int tensor `[batch, seq]` on `device`.
pub fn int_tensor<B: Backend>(ids: &[u32], batch: usize, seq: usize, device: &B::Device) -> Tensor<B, 2, Int> {
    let ids: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
    Tensor::from_data(TensorData::new(ids, [batch, seq]), device)
}
