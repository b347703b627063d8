//! Causal multi-head self-attention.
//!
//! Each position asks a question (its query), every position offers an
//! answer key and a value; a position's output is the average of the values,
//! weighted by how well its query matches each key. "Causal": position t may
//! only look at positions ≤ t, so the model can be trained to predict the next
//! token at every position at once without peeking at it.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Int, Tensor};
use crate::kernels::reference::{merge_heads, split_heads};
use crate::{Backend, kernels};

use crate::config::GptConfig;
use crate::init;
use crate::kv_cache::LayerCache;
use crate::lora::LoraLinear;

#[derive(Module, Debug)]
pub struct MultiHeadAttention<B: Backend> {
    /// Query projection, weight `[d_model, d_model]` (all heads side by side).
    /// Each projection is a `LoraLinear`: a plain `Linear` unless LoRA attaches an adapter.
    pub query: LoraLinear<B>,
    /// Key projection, weight `[d_model, d_model]`.
    pub key: LoraLinear<B>,
    /// Value projection, weight `[d_model, d_model]`.
    pub value: LoraLinear<B>,
    /// Mixes the heads' outputs back into the residual stream, `[d_model, d_model]`.
    pub out_proj: LoraLinear<B>,
    /// Dropout on the attention weights (plain path only, see `GptConfig::fused_attention`).
    attn_dropout: Dropout,
    /// Dropout on the output before it joins the residual stream.
    resid_dropout: Dropout,
    n_heads: usize,
    fused: bool,
}

impl<B: Backend> MultiHeadAttention<B> {
    pub fn new(cfg: &GptConfig, device: &B::Device) -> Self {
        let d = cfg.d_model;
        let std = init::INIT_STD;
        Self {
            query: LoraLinear::new(init::linear(d, d, cfg.qkv_bias, std, device)),
            key: LoraLinear::new(init::linear(d, d, cfg.qkv_bias, std, device)),
            value: LoraLinear::new(init::linear(d, d, cfg.qkv_bias, std, device)),
            out_proj: LoraLinear::new(init::linear(d, d, true, init::residual_std(cfg.n_layers), device)),
            attn_dropout: DropoutConfig::new(cfg.dropout).init(),
            resid_dropout: DropoutConfig::new(cfg.dropout).init(),
            n_heads: cfg.n_heads,
            fused: cfg.fused_attention,
        }
    }

    /// `x`: `[batch, seq, d_model]` → `[batch, seq, d_model]`.
    /// With a cache, `x` holds only the new positions and the keys/values of
    /// earlier ones come from (and are appended to) the cache.
    pub fn forward(&self, x: Tensor<B, 3>, cache: Option<&mut LayerCache<B>>) -> Tensor<B, 3> {
        let [batch, seq, d_model] = x.dims();
        let y = self.forward_rows(kernels::to_rows(x), batch, cache);
        kernels::from_rows(y, [batch, seq, d_model])
    }

    /// The same on rows: `x [batch·seq, d_model]`, sequence after sequence.
    pub fn forward_rows(&self, x: Tensor<B, 2>, batch: usize, cache: Option<&mut LayerCache<B>>) -> Tensor<B, 2> {
        let queries = self.query.forward(x.clone()); // [batch·seq, d_model]: every head side by side
        let keys = self.key.forward(x.clone());
        let values = self.value.forward(x);

        let context_vec = match cache {
            // Training and scoring: one kernel call, which reads each head's
            // columns in place (see `kernels::causal_attention`).
            None if self.fused => kernels::causal_attention(queries, keys, values, batch, self.n_heads),
            cache => {
                // [batch·seq, d_model] → [batch, seq, heads, head_dim] → [batch, heads, seq, head_dim]
                let split = |t| split_heads(t, batch, self.n_heads);
                let (queries, keys, values) = (split(queries), split(keys), split(values));
                // With a cache: keys/values grow to [batch, heads, past + seq, head_dim].
                let (keys, values) = match cache {
                    Some(cache) => cache.append(keys, values),
                    None => (keys, values),
                };
                let context_vec = if self.fused {
                    fused_attention(queries, keys, values)
                } else {
                    self.plain_attention(queries, keys, values)
                }; // [batch, heads, seq, head_dim]
                // [batch, heads, seq, head_dim] → [batch, seq, heads, head_dim] → [batch·seq, d_model]
                merge_heads(context_vec)
            }
        };
        self.resid_dropout.forward(self.out_proj.forward(context_vec))
    }

    /// softmax(Q·Kᵀ/√d + mask)·V, written out step by step.
    /// queries `[b, h, q, hd]`, keys/values `[b, h, k, hd]` with k ≥ q (the
    /// last q keys belong to the queries' own positions).
    pub fn plain_attention(&self, queries: Tensor<B, 4>, keys: Tensor<B, 4>, values: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, _, n_q, head_dim] = queries.dims();
        let n_k = keys.dims()[2];
        // [b, h, q, hd] · [b, h, hd, k] → [b, h, q, k]: one score per (query, key) pair.
        let scores = queries.matmul(keys.swap_dims(2, 3)) / (head_dim as f64).sqrt();
        // Dividing by √head_dim keeps the scores' variance near 1 whatever the
        // head width, so softmax does not saturate into a one-hot at init.
        // Adding -inf hides the future: exp(-inf) = 0 in the softmax. The
        // bias is [1, 1, q, k] and broadcasts over batch and heads, so no
        // [b, h, q, k] copy of the mask is made.
        let bias = causal_bias::<B>(n_q, n_k, &scores.device());
        let scores = scores + bias;
        // One fused softmax per row (see `kernels`); rows sum to 1.
        let attn_weights = self.attn_dropout.forward(kernels::softmax_last(scores));
        attn_weights.matmul(values) // [b, h, q, k] · [b, h, k, hd] → [b, h, q, hd]
    }
}

/// The same computation as one call of burn's `attention`, used when
/// generating with a KV cache (queries fewer than keys). `is_causal` aligns
/// the mask bottom-right, which is exactly what a KV cache needs: the q
/// queries are the last q of the k positions.
pub fn fused_attention<B: Backend>(queries: Tensor<B, 4>, keys: Tensor<B, 4>, values: Tensor<B, 4>) -> Tensor<B, 4> {
    let options = AttentionModuleOptions { scale: None, softcap: None, is_causal: true };
    attention(queries, keys, values, None, None, options)
}

/// `[1, 1, n_q, n_k]`: -inf where key j is in the future of query i, else 0.
pub fn causal_bias<B: Backend>(n_q: usize, n_k: usize, device: &B::Device) -> Tensor<B, 4> {
    Tensor::zeros([1, 1, n_q, n_k], device).mask_fill(causal_mask::<B>(n_q, n_k, device), f32::NEG_INFINITY)
}

/// `[1, 1, n_q, n_k]`, true where key j is in the future of query i.
/// Query i sits at absolute position (n_k - n_q) + i.
pub fn causal_mask<B: burn::tensor::backend::Backend>(n_q: usize, n_k: usize, device: &B::Device) -> Tensor<B, 4, Bool> {
    let offset = (n_k - n_q) as i64;
    let rows = Tensor::<B, 1, Int>::arange(offset..offset + n_q as i64, device).reshape([n_q, 1]);
    let cols = Tensor::<B, 1, Int>::arange(0..n_k as i64, device).reshape([1, n_k]);
    // [1, n_k] > [n_q, 1] broadcasts to [n_q, n_k].
    cols.greater(rows).reshape([1, 1, n_q, n_k])
}
