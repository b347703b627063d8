//! Gradient clipping, by global norm and by value.
//!
//! By norm: treat the gradients of *all* parameters as one long vector g; if
//! its length ‖g‖ exceeds `max_norm`, scale every gradient by max_norm/‖g‖.
//! The direction of the update is kept, only its size is capped, so one
//! unlucky batch cannot throw the weights far away. This is what PyTorch's
//! `clip_grad_norm_` does. burn's built-in `GradientClipping::Norm` instead
//! clips each parameter tensor by its *own* norm, which changes the direction
//! of the overall update (small tensors are never scaled, large ones are), so
//! the global version is implemented here.
//!
//! By value: clamp every gradient element into [-v, v]. Cruder (it bends the
//! direction) but bounded per element.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{ElementConversion, Tensor};
use kernels::AutodiffBackend;
use kernels::Backend;

/// Visits every parameter that has a gradient.
struct GradVisitor<'a, B: AutodiffBackend, F> {
    grads: &'a mut GradientsParams,
    f: F,
    _b: std::marker::PhantomData<B>,
}

/// What to do with one gradient: read it, or replace it.
trait GradFn<B: Backend> {
    fn apply<const D: usize>(&mut self, id: ParamId, grad: Tensor<B, D>) -> Option<Tensor<B, D>>;
}

impl<B: AutodiffBackend, F: GradFn<B::InnerBackend>> ModuleVisitor<B> for GradVisitor<'_, B, F> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let new = self.f.apply(param.id, grad.clone()).unwrap_or(grad);
            self.grads.register::<B::InnerBackend, D>(param.id, new);
        }
    }
}

fn visit_grads<B: AutodiffBackend, M: Module<B>, F: GradFn<B::InnerBackend>>(
    model: &M,
    grads: &mut GradientsParams,
    f: F,
) -> F {
    let mut visitor = GradVisitor::<B, F> { grads, f, _b: std::marker::PhantomData };
    model.visit(&mut visitor);
    visitor.f
}

/// ‖g‖ over all gradients: sqrt(Σ over every element of every tensor of g²).
pub fn global_grad_norm<B: AutodiffBackend, M: Module<B>>(model: &M, grads: &mut GradientsParams) -> f64 {
    struct SumSquares<B: Backend>(Option<Tensor<B, 1>>);
    impl<B: Backend> GradFn<B> for SumSquares<B> {
        fn apply<const D: usize>(&mut self, _: ParamId, grad: Tensor<B, D>) -> Option<Tensor<B, D>> {
            let sq = kernels::sum_squares(grad); // [1]: one pass (a kernel on the CPU)
            self.0 = Some(match self.0.take() {
                Some(acc) => acc + sq,
                None => sq,
            });
            None
        }
    }
    // Sums stay on the device; only the final scalar is read back (one sync).
    let total = visit_grads::<B, M, _>(model, grads, SumSquares(None)).0;
    total.map_or(0.0, |t| t.into_scalar().elem::<f64>().sqrt())
}

/// Multiplies every gradient by `factor` (how loss scaling's gradients are
/// brought back to their true size).
pub fn scale_grads<B: AutodiffBackend, M: Module<B>>(model: &M, grads: &mut GradientsParams, factor: f64) {
    visit_grads::<B, M, _>(model, grads, Scale(factor));
}

struct Scale(f64);
impl<B: Backend> GradFn<B> for Scale {
    fn apply<const D: usize>(&mut self, _: ParamId, grad: Tensor<B, D>) -> Option<Tensor<B, D>> {
        Some(grad * self.0)
    }
}

/// Scales all gradients so their global norm is at most `max_norm`.
/// Returns the norm *before* clipping (the number worth logging).
pub fn clip_grad_norm<B: AutodiffBackend, M: Module<B>>(model: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let norm = global_grad_norm::<B, M>(model, grads);
    clip_to_norm::<B, M>(model, grads, norm, max_norm);
    norm
}

/// `clip_grad_norm` for gradients whose global norm is already known.
pub fn clip_to_norm<B: AutodiffBackend, M: Module<B>>(
    model: &M,
    grads: &mut GradientsParams,
    norm: f64,
    max_norm: f64,
) {
    // The 1e-6 avoids dividing by zero for an all-zero gradient.
    let scale = max_norm / (norm + 1e-6);
    if scale < 1.0 {
        scale_grads::<B, M>(model, grads, scale);
    }
}

/// Clamps every gradient element into `[-max_value, max_value]`.
pub fn clip_grad_value<B: AutodiffBackend, M: Module<B>>(model: &M, grads: &mut GradientsParams, max_value: f64) {
    struct Clamp(f64);
    impl<B: Backend> GradFn<B> for Clamp {
        fn apply<const D: usize>(&mut self, _: ParamId, grad: Tensor<B, D>) -> Option<Tensor<B, D>> {
            Some(grad.clamp(-self.0, self.0))
        }
    }
    visit_grads::<B, M, _>(model, grads, Clamp(max_value));
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;
    use burn::tensor::{TensorData, Tolerance};
    use kernels::CpuTrain;

    /// Two parameters whose gradients we choose: loss = a·x + b·y gives ∂/∂x = a.
    #[derive(Module, Debug)]
    struct TwoParams<B: Backend> {
        x: Param<Tensor<B, 1>>,
        y: Param<Tensor<B, 2>>,
    }

    fn setup() -> (TwoParams<CpuTrain>, GradientsParams) {
        let device = Default::default();
        let m = TwoParams::<CpuTrain> {
            x: Param::from_tensor(Tensor::zeros([2], &device)),
            y: Param::from_tensor(Tensor::zeros([1, 2], &device)),
        };
        // Gradients: x → [3, 4], y → [[0, 12]]; global norm sqrt(9+16+144) = 13.
        let gx = Tensor::<CpuTrain, 1>::from_data([3.0, 4.0], &device);
        let gy = Tensor::<CpuTrain, 2>::from_data([[0.0, 12.0]], &device);
        let loss = (m.x.val() * gx).sum() + (m.y.val() * gy).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        (m, grads)
    }

    fn grad_of<const D: usize>(grads: &GradientsParams, p: &Param<Tensor<CpuTrain, D>>) -> TensorData {
        grads.get::<kernels::Cpu, D>(p.id).unwrap().into_data()
    }

    #[test]
    fn global_norm_matches_a_hand_computation() {
        let (m, mut grads) = setup();
        assert!((global_grad_norm(&m, &mut grads) - 13.0).abs() < 1e-5);
        let before = clip_grad_norm(&m, &mut grads, 6.5); // halve everything
        assert!((before - 13.0).abs() < 1e-5);
        let tol = Tolerance::absolute(1e-5);
        grad_of(&grads, &m.x).assert_approx_eq::<f32>(&TensorData::from([1.5, 2.0]), tol);
        grad_of(&grads, &m.y).assert_approx_eq::<f32>(&TensorData::from([[0.0, 6.0]]), tol);
        assert!((global_grad_norm(&m, &mut grads) - 6.5).abs() < 1e-4);
        // Under the limit: untouched.
        let (m, mut grads) = setup();
        clip_grad_norm(&m, &mut grads, 100.0);
        grad_of(&grads, &m.y).assert_approx_eq::<f32>(&TensorData::from([[0.0, 12.0]]), tol);
    }

    #[test]
    fn clipping_by_value_clamps_each_element() {
        let (m, mut grads) = setup();
        clip_grad_value(&m, &mut grads, 3.5);
        let tol = Tolerance::absolute(1e-6);
        grad_of(&grads, &m.x).assert_approx_eq::<f32>(&TensorData::from([3.0, 3.5]), tol);
        grad_of(&grads, &m.y).assert_approx_eq::<f32>(&TensorData::from([[0.0, 3.5]]), tol);
    }
}
