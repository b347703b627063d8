//! Which examples go into which batch: batch size, shuffling, drop_last.
//!
//! The sampler deals only in example *indices*, so the same code batches
//! pretraining windows, SFT conversations and DPO pairs.

use serde::{Deserialize, Serialize};

use crate::util::SplitMix64;

/// Where a sampler stands: enough to resume mid-epoch exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerPosition {
    pub epoch: usize,
    /// Index of the next batch within the epoch.
    pub batch: usize,
}

#[derive(Debug, Clone)]
pub struct BatchSampler {
    n_items: usize,
    batch_size: usize,
    /// New random order every epoch (training); fixed order (validation).
    shuffle: bool,
    /// Drop the last, smaller batch (training: every step sees the same
    /// number of examples; validation keeps it so nothing goes unscored).
    drop_last: bool,
    seed: u64,
    order: Vec<usize>,
    position: SamplerPosition,
}

impl BatchSampler {
    pub fn new(n_items: usize, batch_size: usize, shuffle: bool, drop_last: bool, seed: u64) -> Self {
        assert!(batch_size > 0, "batch size must be positive");
        let mut sampler = Self {
            n_items,
            batch_size,
            shuffle,
            drop_last,
            seed,
            order: Vec::new(),
            position: SamplerPosition::default(),
        };
        sampler.restore(SamplerPosition::default());
        sampler
    }

    /// Batches in one pass over the data: ⌊n/b⌋ with drop_last, else ⌈n/b⌉.
    pub fn batches_per_epoch(&self) -> usize {
        if self.drop_last { self.n_items / self.batch_size } else { self.n_items.div_ceil(self.batch_size) }
    }

    /// The next batch of indices, moving on to a freshly shuffled epoch when
    /// this one is used up. Returns the epoch the batch belongs to.
    pub fn next_batch(&mut self) -> (usize, Vec<usize>) {
        assert!(self.batches_per_epoch() > 0, "not enough examples for one batch");
        if self.position.batch >= self.batches_per_epoch() {
            self.restore(SamplerPosition { epoch: self.position.epoch + 1, batch: 0 });
        }
        let start = self.position.batch * self.batch_size;
        let end = (start + self.batch_size).min(self.n_items);
        self.position.batch += 1;
        (self.position.epoch, self.order[start..end].to_vec())
    }

    pub fn position(&self) -> SamplerPosition {
        self.position
    }

    /// Jumps to a saved position. The order of an epoch depends only on
    /// (seed, epoch), so nothing else needs saving.
    pub fn restore(&mut self, position: SamplerPosition) {
        self.order = (0..self.n_items).collect();
        if self.shuffle {
            // Mix the epoch into the seed: a different order every epoch.
            SplitMix64(self.seed ^ (position.epoch as u64).wrapping_mul(0x2545f4914f6cdd1d)).shuffle(&mut self.order);
        }
        self.position = position;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_last_and_batch_counts() {
        assert_eq!(BatchSampler::new(10, 4, false, true, 0).batches_per_epoch(), 2);
        assert_eq!(BatchSampler::new(10, 4, false, false, 0).batches_per_epoch(), 3);
        let mut val = BatchSampler::new(10, 4, false, false, 0);
        let sizes: Vec<usize> = (0..3).map(|_| val.next_batch().1.len()).collect();
        assert_eq!(sizes, [4, 4, 2]);
        let (epoch, first) = val.next_batch();
        assert_eq!((epoch, first), (1, vec![0, 1, 2, 3])); // unshuffled: same order again
    }

    #[test]
    fn shuffle_is_seeded_and_covers_every_item_once_per_epoch() {
        let run = |seed| {
            let mut s = BatchSampler::new(100, 10, true, true, seed);
            (0..20).flat_map(|_| s.next_batch().1).collect::<Vec<_>>()
        };
        let (a, b, c) = (run(7), run(7), run(8));
        assert_eq!(a, b, "same seed, same order");
        assert_ne!(a, c, "different seed, different order");
        assert_ne!(a[..100], a[100..], "each epoch reshuffles");
        let mut epoch0 = a[..100].to_vec();
        epoch0.sort();
        assert_eq!(epoch0, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn restoring_a_position_continues_identically() {
        let mut a = BatchSampler::new(50, 8, true, true, 3);
        for _ in 0..9 {
            a.next_batch();
        }
        let mut b = BatchSampler::new(50, 8, true, true, 3);
        b.restore(a.position());
        for _ in 0..10 {
            assert_eq!(a.next_batch(), b.next_batch());
        }
    }
}
