//! The GPT model: a GPT-2-style decoder-only transformer, written to be read.
//!
//! Read in this order: [`config`], [`attention`], [`mlp`], [`block`],
//! [`gpt`], then [`loss`] and [`kv_cache`]. The walkthrough is
//! `notebooks-md/02-the-model.md`.

pub mod attention;
pub mod block;
pub mod config;
pub mod generate;
pub mod gpt;
pub mod init;
pub mod kernels;
pub mod kv_cache;
pub mod lora;
pub mod loss;
pub mod mlp;
pub mod norm;
pub mod params;
pub mod preference;

pub use config::GptConfig;
pub use generate::{Sampling, generate, sample_next};
pub use gpt::Gpt;
pub use kv_cache::KvCache;
pub use params::{ParamCounts, count_params};

/// What every generic type here asks of its backend: burn's `Backend` plus
/// the fused kernels of [`kernels`]. Every backend this project runs on has
/// them (the CPU ones as fast loops, CUDA as plain tensor formulas), so
/// read `B: Backend` as burn's trait.
pub trait Backend: kernels::Kernels {}
impl<B: kernels::Kernels> Backend for B {}

/// burn's `AutodiffBackend`, whose inner backend (the one validation and
/// generation run on) has the kernels too.
pub trait AutodiffBackend: burn::tensor::backend::AutodiffBackend<InnerBackend: Backend> + Backend {}
impl<B> AutodiffBackend for B where B: burn::tensor::backend::AutodiffBackend<InnerBackend: Backend> + Backend {}

/// The CPU backend every test and the default run use.
pub type Cpu = burn::backend::NdArray<f32>;
/// The CPU backend with automatic differentiation, for training.
pub type CpuTrain = burn::backend::Autodiff<Cpu>;

#[cfg(test)]
mod tests;

#[doc = include_str!("../../../notebooks-md/02-the-model.md")]
#[cfg(doctest)]
pub struct Notebook02;

#[doc = include_str!("../../../notebooks-md/06-lora.md")]
#[cfg(doctest)]
pub struct Notebook06;
