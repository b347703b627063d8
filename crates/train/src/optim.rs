//! The optimizer: AdamW with GPT-style settings, or plain SGD for teaching.
//!
//! Weight decay pulls weights toward zero a little every step (a
//! regulariser). It is applied to the weight *matrices* of the linear layers
//! only: decaying biases and LayerNorm gains just fights their job of
//! shifting and scaling, and decaying embeddings would shrink the vectors of
//! rare tokens that seldom receive a gradient to push back. burn's optimizers
//! apply one decay to everything, so the gradients are split into two groups,
//! each stepped by its own optimizer with its own decay.

use std::collections::HashSet;

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer, Sgd, SgdConfig};
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::Tensor;
use model::AutodiffBackend;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum OptimizerKind {
    /// Adam with decoupled weight decay, β1 0.9, β2 0.95, eps 1e-8 (GPT-3's settings).
    Adamw,
    /// Plain stochastic gradient descent: w ← w - lr·g. Slow on transformers;
    /// here to compare against.
    Sgd,
}

/// One optimizer per parameter group, of the chosen kind.
enum Pair<B: AutodiffBackend, M: AutodiffModule<B>> {
    Adamw(OptimizerAdaptor<AdamW, M, B>, OptimizerAdaptor<AdamW, M, B>),
    Sgd(OptimizerAdaptor<Sgd<B::InnerBackend>, M, B>, OptimizerAdaptor<Sgd<B::InnerBackend>, M, B>),
}

pub struct Optim<B: AutodiffBackend, M: AutodiffModule<B>> {
    pair: Pair<B, M>,
    /// Parameters that are decayed (linear-layer weight matrices).
    decayed: HashSet<ParamId>,
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> Optim<B, M> {
    /// `no_decay` lists 2-D parameters that must not be decayed (embeddings);
    /// 1-D parameters (biases, LayerNorm) are never decayed.
    pub fn new(kind: OptimizerKind, weight_decay: f64, model: &M, no_decay: &[ParamId]) -> Self {
        let decay = weight_decay as f32;
        let pair = match kind {
            OptimizerKind::Adamw => {
                let base = AdamWConfig::new().with_beta_1(0.9).with_beta_2(0.95).with_epsilon(1e-8);
                Pair::Adamw(base.clone().with_weight_decay(decay).init(), base.with_weight_decay(0.0).init())
            }
            OptimizerKind::Sgd => {
                let with_decay = SgdConfig::new().with_weight_decay(Some(WeightDecayConfig::new(decay)));
                Pair::Sgd(with_decay.init(), SgdConfig::new().init())
            }
        };
        let decayed = matrices(model).into_iter().filter(|id| !no_decay.contains(id)).collect();
        Self { pair, decayed }
    }

    /// Applies one update with learning rate `lr`.
    pub fn step(&mut self, lr: f64, model: M, grads: GradientsParams) -> M {
        let (with_decay, without) = split(&model, grads, &self.decayed);
        match &mut self.pair {
            Pair::Adamw(a, b) => b.step(lr, a.step(lr, model, with_decay), without),
            Pair::Sgd(a, b) => b.step(lr, a.step(lr, model, with_decay), without),
        }
    }

    /// The optimizer state (Adam's moment estimates) as bytes, for checkpoints.
    pub fn to_bytes(&self) -> anyhow::Result<Vec<u8>> {
        let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
        let bytes = match &self.pair {
            Pair::Adamw(a, b) => Recorder::<B>::record(&recorder, (a.to_record(), b.to_record()), ())?,
            Pair::Sgd(a, b) => Recorder::<B>::record(&recorder, (a.to_record(), b.to_record()), ())?,
        };
        Ok(bytes)
    }

    /// Restores state written by `to_bytes`.
    pub fn load_bytes(self, bytes: Vec<u8>, device: &B::Device) -> anyhow::Result<Self> {
        let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
        let pair = match self.pair {
            Pair::Adamw(a, b) => {
                let (ra, rb) = recorder.load(bytes, device)?;
                Pair::Adamw(a.load_record(ra), b.load_record(rb))
            }
            Pair::Sgd(a, b) => {
                let (ra, rb) = recorder.load(bytes, device)?;
                Pair::Sgd(a.load_record(ra), b.load_record(rb))
            }
        };
        Ok(Self { pair, decayed: self.decayed })
    }
}

/// Ids of all 2-D parameters.
fn matrices<B: AutodiffBackend, M: Module<B>>(model: &M) -> Vec<ParamId> {
    struct Collect(Vec<ParamId>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if D == 2 {
                self.0.push(param.id);
            }
        }
    }
    let mut c = Collect(Vec::new());
    model.visit(&mut c);
    c.0
}

/// Moves the gradients of non-decayed parameters into a second set.
fn split<B: AutodiffBackend, M: Module<B>>(
    model: &M,
    mut grads: GradientsParams,
    decayed: &HashSet<ParamId>,
) -> (GradientsParams, GradientsParams) {
    struct Split<'a> {
        grads: &'a mut GradientsParams,
        rest: GradientsParams,
        decayed: &'a HashSet<ParamId>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Split<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if !self.decayed.contains(&param.id) {
                if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                    self.rest.register::<B::InnerBackend, D>(param.id, g);
                }
            }
        }
    }
    let mut s = Split { grads: &mut grads, rest: GradientsParams::new(), decayed };
    model.visit(&mut s);
    let rest = s.rest;
    (grads, rest)
}
