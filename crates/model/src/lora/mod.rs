//! LoRA: fine-tune a few small matrices instead of the whole model.
//!
//! Full fine-tuning learns an update ΔW for every weight matrix W. LoRA bets
//! that the update needs far fewer directions than W has, and learns it as
//! a product of two thin matrices: ΔW = (alpha/rank)·A·B, with A `[d_in, rank]`
//! and B `[rank, d_out]`. For a 128×128 matrix and rank 8 that is 2,048
//! trainable numbers instead of 16,384. The base weights stay frozen: no
//! gradients and no optimizer state for them, which is where the memory goes.
//!
//! [`layer`] is one adapted linear layer; [`gpt`] puts adapters on a whole
//! model, takes them out and merges them. Notebook 06 walks through both.

pub mod gpt;
pub mod layer;

pub use layer::{LoraAdapter, LoraConfig, LoraLinear, LoraTarget};
