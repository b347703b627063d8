//! The row kernels (softmax, GELU, cross-entropy, LayerNorm), the sum of
//! squares and AdamW, for any backend `A`.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Distribution, ElementConversion, Int, Tensor, TensorData};

use super::common::{AutodiffBackend, Inner, assert_close, check_against_reference, random, value_and_grad};
use crate::{Backend, adamw, reference};

pub fn softmax_matches_the_plain_formula_and_its_gradient<A: AutodiffBackend>() {
    // 3 rows of 70 so rows are not a multiple of any SIMD width; one row
    // with -inf entries, as the causal mask makes.
    let x = random::<A>(3, 70, 3.0);
    let mask = Tensor::<A, 2>::zeros([3, 70], &Default::default())
        .slice_assign([0..1, 40..70], Tensor::full([1, 30], f32::NEG_INFINITY, &Default::default()));
    check_against_reference(A::softmax_rows, reference::softmax_rows, x + mask, "softmax");
}

pub fn gelu_matches_the_plain_formula_and_its_gradient<A: AutodiffBackend>() {
    check_against_reference(A::gelu_tanh, reference::gelu_tanh, random(5, 33, 3.0), "gelu");
}

/// The plain backward formulas (what the CUDA backend runs) against burn's
/// own derivative of the plain forward formulas.
pub fn plain_backward_formulas_match_autodiff<A: AutodiffBackend>() {
    let x = random::<A>(4, 50, 2.0);
    let w = random::<A>(4, 50, 1.0);
    let backward_of = |f: fn(Tensor<A, 2>) -> Tensor<A, 2>| value_and_grad(f, &x, &w).1;
    let (x_in, w_in) = (x.clone().inner(), w.clone().inner());
    let y = reference::softmax_rows(x_in.clone());
    let softmax_dx = reference::softmax_rows_backward(y, w_in.clone());
    assert_close(softmax_dx, backward_of(reference::softmax_rows), "softmax");
    let gelu_dx = reference::gelu_tanh_backward(x_in, w_in);
    assert_close(gelu_dx, backward_of(reference::gelu_tanh), "gelu");
}

fn nll_via_log_softmax<A: AutodiffBackend>(logits: Tensor<A, 2>, targets: Tensor<A, 1, Int>) -> Tensor<A, 1> {
    let [rows, _] = logits.dims();
    log_softmax(logits, 1).gather(1, targets.reshape([rows, 1])).reshape([rows]).neg()
}

pub fn cross_entropy_matches_log_softmax_and_its_gradient<A: AutodiffBackend>() {
    let device = Default::default();
    let (rows, vocab) = (6, 97);
    // Large logits: a naive exp would overflow f32.
    let logits = random::<A>(rows, vocab, 1.0) * 50.0;
    let targets = Tensor::<A, 1, Int>::from_data(TensorData::from([0, 96, 5, 5, 50, 1]), &device);
    let dnll = Tensor::<A, 1>::from_data(TensorData::from([1.0, 0.5, 0.0, 2.0, -1.0, 0.25]), &device);

    let grad_of = |use_fused: bool| {
        let z = logits.clone().detach().require_grad();
        let nll = match use_fused {
            true => A::cross_entropy_rows(z.clone(), targets.clone()).0,
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

/// x, γ and β of a LayerNorm with a non-trivial gain and bias, and the
/// gradient weighting.
fn layer_norm_inputs<A: AutodiffBackend>() -> [Tensor<A, 2>; 4] {
    let gamma = Tensor::random([1, 24], Distribution::Normal(1.0, 0.5), &Default::default());
    let beta = Tensor::random([1, 24], Distribution::Normal(0.0, 0.5), &Default::default());
    [random(4, 24, 2.0) + 3.0, gamma, beta, random(4, 24, 1.0)]
}

/// The fused LayerNorm node against the plain formula differentiated by
/// burn: values, and the gradients of x, γ and β.
pub fn layer_norm_matches_the_plain_formula_and_its_gradients<A: AutodiffBackend>() {
    let [x, gamma, beta, w] = layer_norm_inputs::<A>();
    let run = |fused: bool| {
        let [x, gamma, beta] = [&x, &gamma, &beta].map(|t| t.clone().require_grad());
        let (g, b) = (gamma.clone().reshape([24]), beta.clone().reshape([24]));
        let y = match fused {
            true => A::layer_norm_rows(x.clone(), g, b, 1e-5).0,
            false => reference::layer_norm_rows(x.clone(), g, b, 1e-5).0,
        };
        let grads = (y.clone() * w.clone()).sum().backward();
        [y.inner(), x.grad(&grads).unwrap(), gamma.grad(&grads).unwrap(), beta.grad(&grads).unwrap()]
    };
    let (fused, plain) = (run(true), run(false));
    for ((a, b), what) in fused.into_iter().zip(plain).zip(["y", "dx", "dgamma", "dbeta"]) {
        assert_close(a, b, what);
    }
}

/// The plain LayerNorm backward (what the CUDA backend runs) against burn's
/// derivative of the plain forward, for x, gamma and beta.
pub fn plain_layer_norm_backward_matches_autodiff<A: AutodiffBackend>() {
    let [x, gamma, beta, w] = layer_norm_inputs::<A>();
    let (gamma, beta) = (gamma.reshape([24]), beta.reshape([24]));
    let (xg, gg, bg) = (x.clone().require_grad(), gamma.clone().require_grad(), beta.clone().require_grad());
    let (y, mean, rstd) = reference::layer_norm_rows(xg.clone(), gg.clone(), bg.clone(), 1e-5);
    let grads = (y * w.clone()).sum().backward();
    let (dx, dgamma, dbeta) =
        reference::layer_norm_rows_backward(x.inner(), gamma.inner(), mean.inner(), rstd.inner(), w.inner());
    assert_close(dx, xg.grad(&grads).unwrap(), "dx");
    assert_close(dgamma.unsqueeze(), gg.grad(&grads).unwrap().unsqueeze(), "dgamma");
    assert_close(dbeta.unsqueeze(), bg.grad(&grads).unwrap().unsqueeze(), "dbeta");
}

/// The sum of squares over more than one chunk (the last one short).
pub fn sum_squares_matches_the_plain_formula<A: AutodiffBackend>() {
    let x = random::<A>(3, 20_000, 1.0).inner();
    let fused = Inner::<A>::sum_squares(x.clone()).into_scalar().elem::<f32>();
    let plain = reference::sum_squares(x).into_scalar().elem::<f32>();
    assert!((fused - plain).abs() <= 1e-5 * plain, "{fused} (kernel) vs {plain} (plain)");
    assert!(plain > 50_000.0, "60,000 draws of N(0, 1) square to about 60,000");
}

/// The AdamW kernel against the plain formula over three steps (so the
/// moments and the bias corrections carry over), with weight decay on.
pub fn adamw_matches_the_plain_formula<A: AutodiffBackend>() {
    let (rows, cols) = (37, 1000); // more than one rayon chunk, and a short last one
    let start = random::<A>(rows, cols, 1.0).inner();
    let zeros = || Tensor::<Inner<A>, 2>::zeros([rows, cols], &Default::default());
    let (mut fused, mut plain) = ((start.clone(), zeros(), zeros()), (start, zeros(), zeros()));
    for time in 1..=3 {
        let grad = random::<A>(rows, cols, 0.1).inner();
        let step = adamw::AdamwStep { lr: 1e-2, beta_1: 0.9, beta_2: 0.95, epsilon: 1e-8, weight_decay: 0.1, time };
        fused = Inner::<A>::adamw_step(fused.0, grad.clone(), fused.1, fused.2, &step);
        plain = adamw::reference(plain.0, grad, plain.1, plain.2, &step);
    }
    assert_close(fused.1, plain.1, "AdamW first moment");
    assert_close(fused.2, plain.2, "AdamW second moment");
    // Each step moves a weight by about lr (1e-2), far above the tolerance,
    // so a kernel that skipped or botched the update would fail here.
    assert_close(fused.0, plain.0, "AdamW weights");
}
