//! The GPT model: a GPT-2-style decoder-only transformer, written to be read.
//!
//! Read in this order: [`config`], [`attention`], [`mlp`], [`norm`],
//! [`block`], [`gpt`], then [`loss`], [`kv_cache`] and [`generate`];
//! [`lora`] adds adapters to a trained model. The walkthrough is
//! `notebooks-md/02-the-model.md`.
//!
//! Every type here is generic over `B: Backend`, which is
//! `kernels::Backend`: burn's backend trait plus the fused operations of the
//! `kernels` crate (softmax, GELU, LayerNorm, cross-entropy, attention and
//! the products), which the layers call by name. How those run on each
//! device is the kernels crate's business; the model only says what it
//! computes.

pub mod attention;
pub mod block;
pub mod config;
pub mod generate;
pub mod gpt;
pub mod init;
pub mod kv_cache;
pub mod lora;
pub mod loss;
pub mod mlp;
pub mod norm;
pub mod params;
pub mod precision;

pub use config::{ComputeConfig, GptConfig};
pub use generate::{GenerateOptions, Sampling, generate, sample_next};
pub use gpt::Gpt;
pub use kv_cache::KvCache;
pub use params::{ParamCounts, count_params};
pub use precision::Precision;

#[cfg(test)]
mod tests;

#[doc = include_str!("../../../notebooks-md/02-the-model.md")]
#[cfg(doctest)]
pub struct Notebook02;

#[doc = include_str!("../../../notebooks-md/06-lora.md")]
#[cfg(doctest)]
pub struct Notebook06;
