//! LayerNorm: each position's vector rescaled to mean 0 and variance 1, then
//! given a learned per-feature gain γ and bias β.
//!
//! The same computation as burn's `nn::LayerNorm` (and PyTorch's), with the
//! same parameter names; it runs as one fused kernel with a hand-written
//! backward pass (`kernels::layer_norm`), which on the CPU replaces about
//! twenty separate element-wise passes per call.

use burn::module::{Module, Param};
use burn::tensor::Tensor;

use kernels::Backend;

#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// Gain γ `[d_model]`, starts at 1: the identity scale.
    pub gamma: Param<Tensor<B, 1>>,
    /// Bias β `[d_model]`, starts at 0.
    pub beta: Param<Tensor<B, 1>>,
    /// Added to the variance before the square root, so a constant vector
    /// (variance 0) does not divide by zero.
    epsilon: f64,
}

impl<B: Backend> LayerNorm<B> {
    pub fn new(d_model: usize, epsilon: f64, device: &B::Device) -> Self {
        Self {
            gamma: Param::from_tensor(Tensor::ones([d_model], device)),
            beta: Param::from_tensor(Tensor::zeros([d_model], device)),
            epsilon,
        }
    }

    /// `[rows, d_model]` → `[rows, d_model]`, each row normalised on its own.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        kernels::layer_norm(x, self.gamma.val(), self.beta.val(), self.epsilon)
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::LayerNormConfig;
    use burn::tensor::{Distribution, Tolerance};
    use kernels::CpuTrain;

    use super::*;

    /// Values and all three gradients equal burn's own LayerNorm's.
    #[test]
    fn matches_burns_layer_norm_values_and_gradients() {
        let device = Default::default();
        let ours = LayerNorm::<CpuTrain>::new(48, 1e-5, &device);
        // A non-trivial gain and bias, the same in both.
        let gamma = Tensor::<CpuTrain, 1>::random([48], Distribution::Normal(1.0, 0.5), &device);
        let beta = Tensor::<CpuTrain, 1>::random([48], Distribution::Normal(0.0, 0.5), &device);
        let ours =
            LayerNorm { gamma: Param::from_tensor(gamma.clone()), beta: Param::from_tensor(beta.clone()), ..ours };
        let mut burns = LayerNormConfig::new(48).with_epsilon(1e-5).init::<CpuTrain>(&device);
        burns.gamma = Param::from_tensor(gamma);
        burns.beta = Some(Param::from_tensor(beta));

        let x = Tensor::<CpuTrain, 2>::random([15, 48], Distribution::Normal(2.0, 3.0), &device);
        let w = Tensor::<CpuTrain, 2>::random([15, 48], Distribution::Normal(0.0, 1.0), &device);
        let tol = Tolerance::absolute(1e-5).set_relative(1e-4);
        let run = |forward: &dyn Fn(Tensor<CpuTrain, 2>) -> Tensor<CpuTrain, 2>,
                   gamma: &Param<Tensor<CpuTrain, 1>>,
                   beta: &Param<Tensor<CpuTrain, 1>>| {
            let x = x.clone().require_grad();
            let y = forward(x.clone());
            let grads = (y.clone() * w.clone()).sum().backward();
            let grad = |t: Tensor<CpuTrain, 1>| t.grad(&grads).unwrap().into_data();
            (y.inner().into_data(), x.grad(&grads).unwrap().into_data(), grad(gamma.val()), grad(beta.val()))
        };
        let a = run(&|x| ours.forward(x), &ours.gamma, &ours.beta);
        let b = run(&|x| burns.forward(x), &burns.gamma, burns.beta.as_ref().unwrap());
        a.0.assert_approx_eq::<f32>(&b.0, tol);
        a.1.assert_approx_eq::<f32>(&b.1, tol);
        a.2.assert_approx_eq::<f32>(&b.2, tol);
        a.3.assert_approx_eq::<f32>(&b.3, tol);
    }
}
