//! The optimizer: AdamW with GPT-style settings, or plain SGD for teaching.
//!
//! Weight decay pulls weights toward zero a little every step (a
//! regulariser). It is applied to the weight *matrices* of the linear layers
//! only: decaying biases and LayerNorm gains just fights their job of
//! shifting and scaling, and decaying embeddings would shrink the vectors of
//! rare tokens that seldom receive a gradient to push back. burn's optimizers
//! apply one decay to everything, so the gradients are split into two groups,
//! each stepped by its own optimizer with its own decay.
//!
//! The AdamW update itself is [`AdamW`] below, whose arithmetic is the
//! kernel `kernels::adamw_step` (formula and reasons in
//! `crates/kernels/src/adamw.rs`): one pass over memory instead of burn's dozen.

use std::collections::HashSet;

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{GradientsParams, LearningRate, Optimizer, Sgd, SgdConfig, SimpleOptimizer};
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Record, Recorder};
use burn::tensor::Tensor;
use kernels::adamw::AdamwStep;
use kernels::{AutodiffBackend, Backend};
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
                let base = AdamW { beta_1: 0.9, beta_2: 0.95, epsilon: 1e-8, weight_decay: 0.0 };
                Pair::Adamw(AdamW { weight_decay: decay, ..base }.into(), base.into())
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

/// Adam with decoupled weight decay, as burn's `SimpleOptimizer`: burn's
/// adaptor walks the model and calls `step` once per parameter tensor.
#[derive(Debug, Clone, Copy)]
pub struct AdamW {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    pub weight_decay: f32,
}

/// What AdamW remembers per parameter tensor between steps.
#[derive(Record, Clone)]
pub struct AdamWState<B: burn::tensor::backend::Backend, const D: usize> {
    /// Steps taken so far (t in the bias corrections).
    pub time: usize,
    /// m: running mean of the gradient, the parameter's shape.
    pub moment_1: Tensor<B, D>,
    /// v: running mean of the squared gradient, the parameter's shape.
    pub moment_2: Tensor<B, D>,
}

impl<B: Backend> SimpleOptimizer<B> for AdamW {
    type State<const D: usize> = AdamWState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        weight: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        // Moments start at zero: the first update is then (1 − β)·g, as the formula says.
        let (time, m, v) = match state {
            Some(s) => (s.time + 1, s.moment_1, s.moment_2),
            None => (1, grad.zeros_like(), grad.zeros_like()),
        };
        let settings = AdamwStep {
            lr,
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            weight_decay: self.weight_decay,
            time: time as i32,
        };
        let (weight, moment_1, moment_2) = kernels::adamw_step(weight, grad, m, v, &settings);
        (weight, Some(AdamWState { time, moment_1, moment_2 }))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        AdamWState { moment_1: state.moment_1.to_device(device), moment_2: state.moment_2.to_device(device), ..state }
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
            if !self.decayed.contains(&param.id)
                && let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id)
            {
                self.rest.register::<B::InnerBackend, D>(param.id, g);
            }
        }
    }
    let mut s = Split { grads: &mut grads, rest: GradientsParams::new(), decayed };
    model.visit(&mut s);
    let rest = s.rest;
    (grads, rest)
}

#[cfg(test)]
mod tests {
    use burn::module::Param;
    use burn::nn::Linear;
    use burn::optim::adaptor::OptimizerAdaptor;
    use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
    use burn::tensor::{Distribution, Tensor, Tolerance};
    use kernels::CpuTrain;

    use super::AdamW;

    /// Three steps of our AdamW and of burn's, from the same layer with
    /// the same gradients: the same weights (the arithmetic is the same,
    /// only fused into one pass).
    #[test]
    fn adamw_matches_burns_adamw() {
        let device = Default::default();
        let random = |dims: [usize; 2]| Tensor::<CpuTrain, 2>::random(dims, Distribution::Normal(0.0, 0.2), &device);
        // Made from tensors, not `LinearConfig::init`: its parameters are
        // initialised lazily, and each clone would draw its own.
        let layer = Linear {
            weight: Param::from_tensor(random([24, 40])),
            bias: Some(Param::from_tensor(random([1, 40]).squeeze_dim(0))),
        };
        let x = random([8, 24]) * 5.0;
        let mut ours = OptimizerAdaptor::from(AdamW { beta_1: 0.9, beta_2: 0.95, epsilon: 1e-8, weight_decay: 0.1 });
        let mut burns =
            AdamWConfig::new().with_beta_1(0.9).with_beta_2(0.95).with_epsilon(1e-8).with_weight_decay(0.1).init();
        let (mut a, mut b) = (layer.clone(), layer.clone());
        for _ in 0..3 {
            let loss = |l: &Linear<CpuTrain>| l.forward(x.clone()).powi_scalar(2).mean();
            let grads_a = GradientsParams::from_grads(loss(&a).backward(), &a);
            let grads_b = GradientsParams::from_grads(loss(&b).backward(), &b);
            a = ours.step(1e-2, a, grads_a);
            b = burns.step(1e-2, b, grads_b);
        }
        let moved = (a.weight.val() - layer.weight.val()).abs().mean().into_scalar();
        assert!(moved > 1e-2, "three steps of lr 1e-2 should move the weights: moved {moved}");
        let tol = Tolerance::absolute(1e-6).set_relative(1e-5);
        a.weight.val().into_data().assert_approx_eq::<f32>(&b.weight.val().into_data(), tol);
        let (bias_a, bias_b) = (a.bias.unwrap().val(), b.bias.unwrap().val());
        bias_a.into_data().assert_approx_eq::<f32>(&bias_b.into_data(), tol);
    }
}
