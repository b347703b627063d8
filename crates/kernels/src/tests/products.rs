//! The product kernels (causal attention, matmul, the linear layer) and
//! their gradients, for any backend `A`.

use burn::tensor::{ElementConversion, Tensor};

use super::common::{AutodiffBackend, Inner, assert_close, random};
use crate::reference;

/// Attention: the CPU kernel's context against the plain formula's, and
/// its q/k/v gradients, like those of the plain backward formula (the CUDA
/// path), against finite differences of an f64 loop implementation. (Not
/// against burn's autodiff of the plain formula here: that one is off by
/// ~1e-4 relative, measured, while both hand-derived backward passes agree
/// with the finite differences to ~1e-7.) Odd sizes: 3 heads of 4, 7 positions.
pub fn attention_matches_the_plain_formula_and_finite_differences<A: AutodiffBackend>() {
    let dims @ (batch, seq, d_model, heads) = (2, 7, 12, 3);
    let (q, k, v, w) = [(); 4].map(|_| random::<A>(batch * seq, d_model, 1.0)).into(); // [batch·seq, d_model]

    // Values: kernel vs plain formula.
    let (context, weights) = A::causal_attention(q.clone(), k.clone(), v.clone(), batch, heads);
    let inner = |t: &Tensor<A, 2>| t.clone().inner();
    let (context_plain, weights_plain) = reference::causal_attention(inner(&q), inner(&k), inner(&v), batch, heads);
    assert_close(context.inner(), context_plain, "context");
    let flat_w = |t: Tensor<Inner<A>, 4>| t.reshape([batch * heads * seq, seq]);
    assert_close(flat_w(weights.clone().inner()), flat_w(weights_plain.clone()), "weights");
    // Causal: query 2 gives no weight to keys 3 and later.
    let future = weights.inner().slice([0..batch, 0..heads, 2..3, 3..seq]).abs().sum().into_scalar().elem::<f32>();
    assert_eq!(future, 0.0);

    // Gradients of L = Σ context ⊙ w.
    let [qg, kg, vg] = [&q, &k, &v].map(|t| t.clone().detach().require_grad());
    let (context, _) = A::causal_attention(qg.clone(), kg.clone(), vg.clone(), batch, heads);
    let grads = (context * w.clone()).sum().backward();
    let kernel = [&qg, &kg, &vg].map(|t| t.grad(&grads).unwrap());
    let (dq, dk, dv) =
        reference::causal_attention_backward(inner(&q), inner(&k), inner(&v), weights_plain, inner(&w), heads);
    let plain = [dq, dk, dv];

    let host = |t: &Tensor<A, 2>| -> Vec<f64> {
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
        let numeric =
            Tensor::<Inner<A>, 1>::from_floats(numeric.as_slice(), &Default::default()).reshape([batch * seq, d_model]);
        assert_close(kernel[which].clone(), numeric.clone(), &format!("{name} (kernel)"));
        assert_close(plain[which].clone(), numeric, &format!("{name} (plain formula)"));
    }
}

/// The CPU kernel takes queries in blocks of 64 and skips the products
/// above each block's reach; 150 positions cross two block edges and end on
/// a short block. Checked against the plain formula (values) and its plain
/// backward (the one the test above checks against finite differences).
pub fn attention_on_long_sequences_matches_the_plain_formula<A: AutodiffBackend>() {
    let (batch, seq, d_model, heads) = (2, 150, 16, 2);
    let (q, k, v, w) = [(); 4].map(|_| random::<A>(batch * seq, d_model, 1.0)).into(); // [batch·seq, d_model]
    let inner = |t: &Tensor<A, 2>| t.clone().inner();
    let (context_plain, weights_plain) = reference::causal_attention(inner(&q), inner(&k), inner(&v), batch, heads);
    let [qg, kg, vg] = [&q, &k, &v].map(|t| t.clone().detach().require_grad());
    let (context, weights) = A::causal_attention(qg.clone(), kg.clone(), vg.clone(), batch, heads);
    assert_close(context.clone().inner(), context_plain, "context");
    let flat_w = |t: Tensor<Inner<A>, 4>| t.reshape([batch * heads * seq, seq]);
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
pub fn matmul_matches_burn_and_its_gradients<A: AutodiffBackend>() {
    let (m, k, n) = (9, 13, 7);
    let (a, w) = (random::<A>(m, k, 1.0), random::<A>(m, n, 1.0));
    for b_transposed in [false, true] {
        let b = if b_transposed { random::<A>(n, k, 1.0) } else { random::<A>(k, n, 1.0) };
        let run = |fused: bool| {
            let (a, b) = (a.clone().detach().require_grad(), b.clone().detach().require_grad());
            let y = match (fused, b_transposed) {
                (true, _) => A::matmul(a.clone(), b.clone(), b_transposed),
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
pub fn linear_matches_burn_and_its_gradients<A: AutodiffBackend>() {
    let (m, k, n) = (150, 13, 70);
    let [x, w, bias, weighting] = [(m, k), (k, n), (1, n), (m, n)].map(|(r, c)| random::<A>(r, c, 1.0));
    let bias = bias.reshape([n]);
    let run = |fused: bool| {
        let (x, w, bias) = (x.clone().require_grad(), w.clone().require_grad(), bias.clone().require_grad());
        let y = match fused {
            true => A::linear_rows(x.clone(), w.clone(), bias.clone()),
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
pub fn frozen_weights_still_give_the_input_gradient<A: AutodiffBackend>() {
    let (m, k, n) = (9, 13, 7);
    let (x, weighting) = (random::<A>(m, k, 1.0), random::<A>(m, n, 1.0));
    let dx_of = |y: Tensor<A, 2>, x: &Tensor<A, 2>| x.grad(&(y * weighting.clone()).sum().backward()).unwrap();
    for b_transposed in [false, true] {
        let w = if b_transposed { random::<A>(n, k, 1.0) } else { random::<A>(k, n, 1.0) }; // not tracked
        let plain_w = if b_transposed { w.clone().transpose() } else { w.clone() };
        let x = x.clone().require_grad();
        let fused = dx_of(A::matmul(x.clone(), w.clone(), b_transposed), &x);
        let plain = dx_of(x.clone().matmul(plain_w), &x);
        assert_close(fused, plain, &format!("dx, frozen matmul (b transposed: {b_transposed})"));
    }
    let (w, bias) = (random::<A>(k, n, 1.0), random::<A>(1, n, 1.0).reshape([n]));
    let x = x.require_grad();
    let fused = dx_of(A::linear_rows(x.clone(), w.clone(), bias.clone()), &x);
    let plain = dx_of(x.clone().matmul(w) + bias.unsqueeze(), &x);
    assert_close(fused, plain, "dx, frozen linear");
}
