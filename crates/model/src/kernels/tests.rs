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
    eprintln!("{what}: max abs diff {}", (a.clone() - b.clone()).abs().max().into_scalar());
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

/// Attention: the CPU kernel's context against the plain formula's, and
/// its q/k/v gradients, like those of the plain backward formula (the CUDA
/// path), against finite differences of an f64 loop implementation. (Not
/// against burn's autodiff of the plain formula here: that one is off by
/// ~1e-4 relative, measured, while both hand-derived backward passes agree
/// with the finite differences to ~1e-7.) Odd sizes: 3 heads of 4, 7 positions.
#[test]
fn attention_matches_the_plain_formula_and_finite_differences() {
    let dims @ (batch, seq, d_model, heads) = (2, 7, 12, 3);
    let (q, k, v, w) = [(); 4].map(|_| random(batch * seq, d_model, 1.0)).into(); // [batch·seq, d_model]

    // Values: kernel vs plain formula.
    let (context, weights) = CpuTrain::causal_attention(q.clone(), k.clone(), v.clone(), batch, heads);
    let inner = |t: &Tensor<CpuTrain, 2>| t.clone().inner();
    let (context_plain, weights_plain) = reference::causal_attention(inner(&q), inner(&k), inner(&v), batch, heads);
    assert_close(context.inner(), context_plain, "context");
    let flat_w = |t: Tensor<Cpu, 4>| t.reshape([batch * heads * seq, seq]);
    assert_close(flat_w(weights.clone().inner()), flat_w(weights_plain.clone()), "weights");
    // Causal: query 2 gives no weight to keys 3 and later.
    let future: f32 = weights.inner().slice([0..batch, 0..heads, 2..3, 3..seq]).abs().sum().into_scalar();
    assert_eq!(future, 0.0);

    // Gradients of L = Σ context ⊙ w.
    let [qg, kg, vg] = [&q, &k, &v].map(|t| t.clone().detach().require_grad());
    let (context, _) = CpuTrain::causal_attention(qg.clone(), kg.clone(), vg.clone(), batch, heads);
    let grads = (context * w.clone()).sum().backward();
    let kernel = [&qg, &kg, &vg].map(|t| t.grad(&grads).unwrap());
    let (dq, dk, dv) =
        reference::causal_attention_backward(inner(&q), inner(&k), inner(&v), weights_plain, inner(&w), heads);
    let plain = [dq, dk, dv];

    let host = |t: &Tensor<CpuTrain, 2>| -> Vec<f64> {
        t.clone().into_data().to_vec::<f32>().unwrap().into_iter().map(f64::from).collect()
    };
    let inputs = [host(&q), host(&k), host(&v)];
    let w = host(&w);
    for (which, name) in ["dq", "dk", "dv"].iter().enumerate() {
        let numeric: Vec<f32> = (0..inputs[which].len())
            .map(|n| {
                let loss_at = |delta: f64| {
                    let mut x = inputs.clone();
                    x[which][n] += delta;
                    naive_attention_loss(&x[0], &x[1], &x[2], &w, dims)
                };
                ((loss_at(1e-5) - loss_at(-1e-5)) / 2e-5) as f32
            })
            .collect();
        let numeric = Tensor::<Cpu, 1>::from_floats(numeric.as_slice(), &Default::default()).reshape([batch * seq, d_model]);
        assert_close(kernel[which].clone(), numeric.clone(), &format!("{name} (kernel)"));
        assert_close(plain[which].clone(), numeric, &format!("{name} (plain formula)"));
    }
}

/// The CPU kernel takes queries in blocks of 64 and skips the products
/// above each block's reach; 150 positions cross two block edges and end on
/// a short block. Checked against the plain formula (values) and its plain
/// backward (the one the test above checks against finite differences).
#[test]
fn attention_blocks_match_the_plain_formula_on_long_sequences() {
    let (batch, seq, d_model, heads) = (2, 150, 16, 2);
    let (q, k, v, w) = [(); 4].map(|_| random(batch * seq, d_model, 1.0)).into(); // [batch·seq, d_model]
    let inner = |t: &Tensor<CpuTrain, 2>| t.clone().inner();
    let (context_plain, weights_plain) = reference::causal_attention(inner(&q), inner(&k), inner(&v), batch, heads);
    let [qg, kg, vg] = [&q, &k, &v].map(|t| t.clone().detach().require_grad());
    let (context, weights) = CpuTrain::causal_attention(qg.clone(), kg.clone(), vg.clone(), batch, heads);
    assert_close(context.clone().inner(), context_plain, "context");
    let flat_w = |t: Tensor<Cpu, 4>| t.reshape([batch * heads * seq, seq]);
    assert_close(flat_w(weights.inner()), flat_w(weights_plain.clone()), "weights");

    let grads = (context * w.clone()).sum().backward();
    let (dq, dk, dv) =
        reference::causal_attention_backward(inner(&q), inner(&k), inner(&v), weights_plain, inner(&w), heads);
    for ((t, plain), name) in [&qg, &kg, &vg].into_iter().zip([dq, dk, dv]).zip(["dq", "dk", "dv"]) {
        assert_close(t.grad(&grads).unwrap(), plain, name);
    }
}

/// Σ context ⊙ w for causal attention written as loops in f64: the ground
/// truth the finite differences are taken of. Inputs `[batch·seq, d_model]`.
fn naive_attention_loss(q: &[f64], k: &[f64], v: &[f64], w: &[f64], dims: (usize, usize, usize, usize)) -> f64 {
    let (batch, seq, d_model, heads) = dims;
    let hd = d_model / heads;
    let mut loss = 0.0;
    for b in 0..batch {
        for h in 0..heads {
            let at = |t: usize, c: usize| (b * seq + t) * d_model + h * hd + c;
            for i in 0..seq {
                let dot = |j: usize| (0..hd).map(|c| q[at(i, c)] * k[at(j, c)]).sum::<f64>();
                let scores: Vec<f64> = (0..=i).map(|j| dot(j) / (hd as f64).sqrt()).collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = e.iter().sum();
                for c in 0..hd {
                    let context: f64 = (0..=i).map(|j| e[j] / total * v[at(j, c)]).sum();
                    loss += context * w[at(i, c)];
                }
            }
        }
    }
    loss
}

/// The matmul kernel, both layouts of `b`, against burn's matmul and its
/// autodiff gradients for both inputs; and the plain backward formula.
#[test]
fn matmul_matches_burn_and_its_gradients() {
    let (m, k, n) = (9, 13, 7);
    let (a, w) = (random(m, k, 1.0), random(m, n, 1.0));
    for b_transposed in [false, true] {
        let b = if b_transposed { random(n, k, 1.0) } else { random(k, n, 1.0) };
        let run = |fused: bool| {
            let (a, b) = (a.clone().detach().require_grad(), b.clone().detach().require_grad());
            let y = match (fused, b_transposed) {
                (true, _) => CpuTrain::matmul(a.clone(), b.clone(), b_transposed),
                (false, false) => a.clone().matmul(b.clone()),
                (false, true) => a.clone().matmul(b.clone().transpose()),
            };
            let grads = (y.clone() * w.clone()).sum().backward();
            (y.inner(), a.grad(&grads).unwrap(), b.grad(&grads).unwrap())
        };
        let ((y, da, db), (y_burn, da_burn, db_burn)) = (run(true), run(false));
        let what = |s: &str| format!("{s} (b transposed: {b_transposed})");
        assert_close(y, y_burn, &what("a·b"));
        assert_close(da, da_burn.clone(), &what("da"));
        assert_close(db, db_burn.clone(), &what("db"));
        let (da, db) = reference::matmul_backward(a.clone().inner(), b.inner(), w.clone().inner(), b_transposed);
        assert_close(da, da_burn, &what("da (plain formula)"));
        assert_close(db, db_burn, &what("db (plain formula)"));
    }
}

/// The linear kernel (x·w + bias) against burn's ops and their autodiff
/// gradients for all three inputs; and the plain backward formula. 150 rows
/// and 70 columns: more than one band of the bias sum, the last one short.
#[test]
fn linear_matches_burn_and_its_gradients() {
    let (m, k, n) = (150, 13, 70);
    let (x, w, bias, weighting) = (random(m, k, 1.0), random(k, n, 1.0), random(1, n, 1.0), random(m, n, 1.0));
    let bias = bias.reshape([n]);
    let run = |fused: bool| {
        let (x, w, bias) = (x.clone().require_grad(), w.clone().require_grad(), bias.clone().require_grad());
        let y = match fused {
            true => CpuTrain::linear_rows(x.clone(), w.clone(), bias.clone()),
            false => x.clone().matmul(w.clone()) + bias.clone().unsqueeze(),
        };
        let grads = (y.clone() * weighting.clone()).sum().backward();
        let dbias = bias.grad(&grads).unwrap().reshape([1, n]);
        (y.inner(), x.grad(&grads).unwrap(), w.grad(&grads).unwrap(), dbias)
    };
    let ((y, dx, dw, db), (y_burn, dx_burn, dw_burn, db_burn)) = (run(true), run(false));
    assert_close(y, y_burn, "x·w + bias");
    assert_close(dx, dx_burn.clone(), "dx");
    assert_close(dw, dw_burn.clone(), "dw");
    assert_close(db, db_burn.clone(), "dbias");
    let (dx, dw, db) = reference::linear_backward(x.inner(), w.inner(), weighting.inner());
    assert_close(dx, dx_burn, "dx (plain formula)");
    assert_close(dw, dw_burn, "dw (plain formula)");
    assert_close(db.reshape([1, n]), db_burn, "dbias (plain formula)");
}

/// With the weight frozen (LoRA's base layers), the nodes compute only the
/// input's gradient, by a different path: it must equal burn's.
#[test]
fn frozen_weights_still_give_the_input_gradient() {
    let (m, k, n) = (9, 13, 7);
    let (x, weighting) = (random(m, k, 1.0), random(m, n, 1.0));
    let dx_of = |y: Tensor<CpuTrain, 2>, x: &Tensor<CpuTrain, 2>| x.grad(&(y * weighting.clone()).sum().backward()).unwrap();
    for b_transposed in [false, true] {
        let w = if b_transposed { random(n, k, 1.0) } else { random(k, n, 1.0) }; // not tracked
        let plain_w = if b_transposed { w.clone().transpose() } else { w.clone() };
        let x = x.clone().require_grad();
        let fused = dx_of(CpuTrain::matmul(x.clone(), w.clone(), b_transposed), &x);
        let plain = dx_of(x.clone().matmul(plain_w), &x);
        assert_close(fused, plain, &format!("dx, frozen matmul (b transposed: {b_transposed})"));
    }
    let (w, bias) = (random(k, n, 1.0), random(1, n, 1.0).reshape([n]));
    let x = x.require_grad();
    let fused = dx_of(CpuTrain::linear_rows(x.clone(), w.clone(), bias.clone()), &x);
    let plain = dx_of(x.clone().matmul(w) + bias.unsqueeze(), &x);
    assert_close(fused, plain, "dx, frozen linear");
}

/// The sum of squares over more than one chunk (the last one short).
#[test]
fn sum_squares_matches_the_plain_formula() {
    let x = random(3, 20_000, 1.0).inner();
    let fused = Cpu::sum_squares(x.clone()).into_scalar();
    let plain = reference::sum_squares(x).into_scalar();
    eprintln!("sum of squares: {fused} (kernel), {plain} (plain)");
    assert!((fused - plain).abs() <= 1e-5 * plain, "{fused} vs {plain}");
    assert!(plain > 50_000.0, "60,000 draws of N(0, 1) square to about 60,000");
}

/// The AdamW loop against the plain formula over three steps (so the
/// moments and the bias corrections carry over), with weight decay on.
#[test]
fn adamw_loop_matches_the_plain_formula() {
    let (rows, cols) = (37, 1000); // more than one rayon chunk, and a short last one
    let start = random(rows, cols, 1.0).inner();
    let zeros = || Tensor::<Cpu, 2>::zeros([rows, cols], &Default::default());
    let (mut fused, mut plain) = ((start.clone(), zeros(), zeros()), (start, zeros(), zeros()));
    for time in 1..=3 {
        let grad = random(rows, cols, 0.1).inner();
        let step = super::adamw::AdamwStep { lr: 1e-2, beta_1: 0.9, beta_2: 0.95, epsilon: 1e-8, weight_decay: 0.1, time };
        fused = Cpu::adamw_step(fused.0, grad.clone(), fused.1, fused.2, &step);
        plain = super::adamw::reference(plain.0, grad, plain.1, plain.2, &step);
    }
    assert_close(fused.1, plain.1, "AdamW first moment");
    assert_close(fused.2, plain.2, "AdamW second moment");
    // Each step moves a weight by about lr (1e-2), far above the tolerance,
    // so a loop that skipped or botched the update would fail here.
    assert_close(fused.0, plain.0, "AdamW weights");
}
