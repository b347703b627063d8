//! Turning one long token stream into training examples.
//!
//! ```text
//! tokens:   t0 t1 t2 t3 t4 t5 t6 t7 t8 ...
//! window 0: input  t0 t1 t2 t3      target t1 t2 t3 t4   (max_length 4)
//! window 1: input  t2 t3 t4 t5      target t3 t4 t5 t6   (stride 2)
//! ```
//! The target is the input shifted left by one: at every position the model
//! learns to predict the token that follows. A stride equal to max_length
//! gives non-overlapping windows (each token seen once per epoch); a smaller
//! stride overlaps them (more examples, but correlated ones).

use std::ops::Range;
use std::sync::Arc;

use crate::token_file::TokenFile;
use crate::util::SplitMix64;

/// Splits `n` tokens into a training part and a validation part at the end.
/// Splitting the *stream* (not shuffled windows) keeps validation text truly
/// unseen: no training window overlaps it.
pub fn train_val_split(n: usize, val_ratio: f64) -> (Range<usize>, Range<usize>) {
    let n_val = (n as f64 * val_ratio).round() as usize;
    (0..n - n_val, n - n_val..n)
}

/// Number of windows of `max_length` inputs (+1 target) in `len` tokens.
pub fn num_windows(len: usize, max_length: usize, stride: usize) -> usize {
    if len < max_length + 1 { 0 } else { (len - max_length - 1) / stride + 1 }
}

/// A batch of windows as plain ids, row-major `[batch, seq]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub batch_size: usize,
    pub seq_len: usize,
}

/// The sliding windows over one range of a token file.
#[derive(Clone)]
pub struct WindowDataset {
    tokens: Arc<TokenFile>,
    /// Start position of every window in use.
    starts: Vec<usize>,
    pub max_length: usize,
}

impl WindowDataset {
    pub fn new(tokens: Arc<TokenFile>, range: Range<usize>, max_length: usize, stride: usize) -> Self {
        assert!(stride > 0 && max_length > 0);
        let n = num_windows(range.len(), max_length, stride);
        let starts = (0..n).map(|i| range.start + i * stride).collect();
        Self { tokens, starts, max_length }
    }

    /// Keeps a random subset of `max` windows (`--max-samples`), in order.
    pub fn subset(mut self, max: usize, seed: u64) -> Self {
        if max < self.starts.len() {
            SplitMix64(seed).shuffle(&mut self.starts);
            self.starts.truncate(max);
            self.starts.sort_unstable();
        }
        self
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Gathers the windows `indices` into one batch.
    pub fn batch(&self, indices: &[usize]) -> TokenBatch {
        let seq_len = self.max_length;
        let mut inputs = Vec::with_capacity(indices.len() * seq_len);
        let mut targets = Vec::with_capacity(indices.len() * seq_len);
        for &i in indices {
            let start = self.starts[i];
            self.tokens.extend_into(start, seq_len, &mut inputs);
            self.tokens.extend_into(start + 1, seq_len, &mut targets);
        }
        TokenBatch { inputs, targets, batch_size: indices.len(), seq_len }
    }
}
