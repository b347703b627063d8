//! Data for every stage: the tokenizer, corpus readers, the memory-mapped
//! token cache, the train/validation split, sliding windows and batching.
//!
//! Nothing here touches tensors: batches are plain `Vec<u32>`, and the train
//! crate turns them into tensors on whichever device trains. The walkthrough is
//! `notebooks-md/01-tokens-and-data.md`.

pub mod chat;
pub mod corpus;
pub mod dpo;
pub mod facts;
pub mod prepare;
pub mod sampler;
pub mod sft;
pub mod token_file;
pub mod tokenizer;
pub mod util;
pub mod windows;

pub use corpus::Corpus;
pub use sampler::{BatchSampler, SamplerPosition};
pub use token_file::TokenFile;
pub use tokenizer::Tokenizer;
pub use windows::{TokenBatch, WindowDataset, num_windows, train_val_split};

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;

#[doc = include_str!("../../../notebooks-md/01-tokens-and-data.md")]
#[cfg(doctest)]
pub struct Notebook01;
