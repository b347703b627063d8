//! The key/value cache that makes generation fast.
//!
//! Without it, producing token n+1 re-runs attention over all n previous
//! tokens, so generating N tokens costs O(N²) projections. Keys and values of
//! past positions never change (the mask stops them seeing the future), so we
//! keep them and only compute the new position's query, key and value.

use burn::tensor::Tensor;
use kernels::Backend;

/// Keys and values of one attention layer for every position seen so far.
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    /// `[batch, heads, past, head_dim]`, or None before the first token.
    key: Option<Tensor<B, 4>>,
    /// `[batch, heads, past, head_dim]`, or None before the first token.
    value: Option<Tensor<B, 4>>,
}

impl<B: Backend> LayerCache<B> {
    pub fn new() -> Self {
        Self { key: None, value: None }
    }

    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        self.key.as_ref().map_or(0, |k| k.dims()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends this step's keys/values `[batch, heads, new, head_dim]` and
    /// returns all of them `[batch, heads, past + new, head_dim]`.
    pub fn append(&mut self, key: Tensor<B, 4>, value: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let key = match self.key.take() {
            Some(past) => Tensor::cat(vec![past, key], 2),
            None => key,
        };
        let value = match self.value.take() {
            Some(past) => Tensor::cat(vec![past, value], 2),
            None => value,
        };
        self.key = Some(key.clone());
        self.value = Some(value.clone());
        (key, value)
    }
}

impl<B: Backend> Default for LayerCache<B> {
    fn default() -> Self {
        Self::new()
    }
}

/// One `LayerCache` per transformer block.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    pub layers: Vec<LayerCache<B>>,
}

impl<B: Backend> KvCache<B> {
    pub fn new(n_layers: usize) -> Self {
        Self { layers: (0..n_layers).map(|_| LayerCache::new()).collect() }
    }

    /// Positions cached so far (the same in every layer).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
