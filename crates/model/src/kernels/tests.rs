//! Each fused kernel against its plain formula: the same values, and the
//! same gradients as burn's autodiff derives from the plain formula.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Distribution, Int, Tensor, TensorData, Tolerance};

use super::{Kernels, reference};
use crate::{Cpu, CpuTrain};

type Fwd2 = fn(Tensor<CpuTrain, 2>) -> Tensor<CpuTrain, 2>;

fn random(rows: usize, cols: usize, scale: f64) -> Tensor<CpuTrain, 2> {
    Tensor::random([rows, cols], Distribution::Normal(0.0, scale), &Default::default())
}

/// `f(x)` and d/dx of Σ f(x)⊙w, for a fixed random weighting `w` (so every
/// output element's gradient matters, not only their sum).
fn value_and_grad(f: Fwd2, x: &Tensor<CpuTrain, 2>, w: &Tensor<CpuTrain, 2>) -> (Tensor<Cpu, 2>, Tensor<Cpu, 2>) {
    let x = x.clone().detach().require_grad();
    let y = f(x.clone());
    let grads = (y.clone() * w.clone()).sum().backward();
    (y.inner(), x.grad(&grads).expect("x requires a gradient"))
}

fn assert_close(a: Tensor<Cpu, 2>, b: Tensor<Cpu, 2>, what: &str) {
    let tol = Tolerance::absolute(2e-5).set_relative(1e-4);
    a.into_data().assert_approx_eq::<f32>(&b.into_data(), tol);
    eprintln!("{what}: equal");
}

/// The fused node (CPU loops) and the plain formula differentiated by burn.
fn check_against_reference(fused: Fwd2, plain: Fwd2, x: Tensor<CpuTrain, 2>, what: &str) {
    let [rows, cols] = x.dims();
    let w = random(rows, cols, 1.0);
    let (y_fused, dx_fused) = value_and_grad(fused, &x, &w);
    let (y_plain, dx_plain) = value_and_grad(plain, &x, &w);
    assert_close(y_fused, y_plain, &format!("{what} value"));
    assert_close(dx_fused, dx_plain, &format!("{what} gradient"));
}

#[test]
fn softmax_matches_the_plain_formula_and_its_gradient() {
    // 3 rows of 70 so rows are not a multiple of any SIMD width; one row
    // with -inf entries, as the causal mask makes.
    let x = random(3, 70, 3.0);
    let mask = Tensor::<CpuTrain, 2>::zeros([3, 70], &Default::default())
        .slice_assign([0..1, 40..70], Tensor::full([1, 30], f32::NEG_INFINITY, &Default::default()));
    check_against_reference(CpuTrain::softmax_rows, reference::softmax_rows, x + mask, "softmax");
}

#[test]
fn gelu_matches_the_plain_formula_and_its_gradient() {
    check_against_reference(CpuTrain::gelu_tanh, reference::gelu_tanh, random(5, 33, 3.0), "gelu");
}

/// The plain backward formulas (what the CUDA backend runs) against burn's
/// own derivative of the plain forward formulas.
#[test]
fn plain_backward_formulas_match_autodiff() {
    let x = random(4, 50, 2.0);
    let w = random(4, 50, 1.0);
    let backward_of = |f: Fwd2| value_and_grad(f, &x, &w).1;
    let (x_in, w_in) = (x.clone().inner(), w.clone().inner());
    let y = reference::softmax_rows(x_in.clone());
    assert_close(reference::softmax_rows_backward(y, w_in.clone()), backward_of(reference::softmax_rows), "softmax");
    assert_close(reference::gelu_tanh_backward(x_in, w_in), backward_of(reference::gelu_tanh), "gelu");
}

fn nll_via_log_softmax(logits: Tensor<CpuTrain, 2>, targets: Tensor<CpuTrain, 1, Int>) -> Tensor<CpuTrain, 1> {
    let [rows, _] = logits.dims();
    log_softmax(logits, 1).gather(1, targets.reshape([rows, 1])).reshape([rows]).neg()
}

#[test]
fn cross_entropy_matches_log_softmax_and_its_gradient() {
    let device = Default::default();
    let (rows, vocab) = (6, 97);
    // Large logits: a naive exp would overflow f32.
    let logits = random(rows, vocab, 1.0) * 50.0;
    let targets = Tensor::<CpuTrain, 1, Int>::from_data(TensorData::from([0, 96, 5, 5, 50, 1]), &device);
    let dnll = Tensor::<CpuTrain, 1>::from_data(TensorData::from([1.0, 0.5, 0.0, 2.0, -1.0, 0.25]), &device);

    let grad_of = |use_fused: bool| {
        let z = logits.clone().detach().require_grad();
        let nll = match use_fused {
            true => CpuTrain::cross_entropy_rows(z.clone(), targets.clone()).0,
            false => nll_via_log_softmax(z.clone(), targets.clone()),
        };
        let grads = (nll.clone() * dnll.clone()).sum().backward();
        (nll.inner().reshape([rows, 1]), z.grad(&grads).unwrap())
    };
    let (nll_fused, dz_fused) = grad_of(true);
    let (nll_plain, dz_plain) = grad_of(false);
    assert_close(nll_fused, nll_plain, "nll");
    assert_close(dz_fused, dz_plain.clone(), "dlogits (fused)");

    // The plain backward formula, as the CUDA backend runs it.
    let (_, lse) = reference::cross_entropy_rows(logits.clone().inner(), targets.clone().inner());
    let dz = reference::cross_entropy_rows_backward(logits.inner(), targets.inner(), lse, dnll.inner());
    assert_close(dz, dz_plain, "dlogits (plain)");
}

#[test]
#[should_panic(expected = "outside the vocabulary")]
fn cross_entropy_rejects_a_target_outside_the_vocabulary() {
    let targets = Tensor::<Cpu, 1, Int>::from_data(TensorData::from([3, 10]), &Default::default());
    let _ = Cpu::cross_entropy_rows(random(2, 10, 1.0).inner(), targets);
}

#[test]
fn fast_exp_matches_std_exp() {
    let mut worst = 0.0f64;
    for i in 0..=200_000 {
        let x = -87.0 + 175.0 * i as f32 / 200_000.0; // -87 ..= 88
        let (ours, std) = (super::cpu::exp(x) as f64, (x as f64).exp());
        worst = worst.max(((ours - std) / std).abs());
    }
    eprintln!("worst relative error {worst:e}");
    assert!(worst < 1e-7, "worst relative error {worst:e}");
    assert_eq!(super::cpu::exp(f32::NEG_INFINITY), 0.0);
    assert_eq!(super::cpu::exp(-100.0), 0.0);
    assert_eq!(super::cpu::exp(0.0), 1.0);
}

/// The plain LayerNorm backward (what the CUDA backend runs) against burn's
/// derivative of the plain forward, for x, gamma and beta.
#[test]
fn plain_layer_norm_backward_matches_autodiff() {
    let (x, w) = (random(4, 24, 2.0), random(4, 24, 1.0));
    let gamma = Tensor::<CpuTrain, 1>::random([24], Distribution::Normal(1.0, 0.5), &Default::default());
    let beta = Tensor::<CpuTrain, 1>::random([24], Distribution::Normal(0.0, 0.5), &Default::default());
    let (xg, gg, bg) = (x.clone().require_grad(), gamma.clone().require_grad(), beta.clone().require_grad());
    let (y, mean, rstd) = reference::layer_norm_rows(xg.clone(), gg.clone(), bg.clone(), 1e-5);
    let grads = (y * w.clone()).sum().backward();
    let (dx, dgamma, dbeta) =
        reference::layer_norm_rows_backward(x.inner(), gamma.inner(), mean.inner(), rstd.inner(), w.inner());
    assert_close(dx, xg.grad(&grads).unwrap(), "dx");
    assert_close(dgamma.unsqueeze(), gg.grad(&grads).unwrap().unsqueeze(), "dgamma");
    assert_close(dbeta.unsqueeze(), bg.grad(&grads).unwrap().unsqueeze(), "dbeta");
}
