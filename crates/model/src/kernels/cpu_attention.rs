//! Causal self-attention as loops over host memory, for the CPU backends.
//!
//! The plain version (`reference::causal_attention`) splits the heads out of
//! `[batch, seq, d_model]` with a transpose, which the matmuls then copy into
//! contiguous memory, and builds the score matrix in several passes (scale,
//! mask, softmax), each a new `[batch, heads, seq, seq]` tensor; the backward
//! pass replays all of it. Here each sequence is one task: for every head,
//! three small matrix products read the head's columns straight out of the
//! `[seq, d_model]` rows (a head is just a column range, reached through
//! strides, never copied), and the softmax runs in place on the scores.
//!
//! The matrix products are those of [`mod@super::matmul`], on strided views, so
//! transposes cost nothing.

use burn::tensor::Tensor;
use rayon::prelude::*;

use super::cpu::{HostCopy, host, softmax_row, softmax_row_backward, to_device};
use super::matmul::{MatRef, matmul_into};

/// `q, k, v [batch·seq, d_model]` → `(context [batch·seq, d_model],
/// weights [batch, heads, seq, seq])`; see `Kernels::causal_attention`.
pub fn causal_attention<B: HostCopy>(
    q: Tensor<B, 2>,
    k: Tensor<B, 2>,
    v: Tensor<B, 2>,
    batch: usize,
    n_heads: usize,
) -> (Tensor<B, 2>, Tensor<B, 4>) {
    let ([rows, d_model], device) = (q.dims(), q.device());
    let seq = rows / batch;
    let (hd, scale) = head_dim_and_scale(d_model, n_heads);
    let (q, k, v) = (host(q), host(k), host(v));
    let mut context = vec![0.0; batch * seq * d_model];
    let mut weights = vec![0.0; batch * n_heads * seq * seq];
    // One task per sequence: its context rows and weights are disjoint
    // chunks of the outputs. (Tasks per (sequence, head) would share the
    // context rows, each writing its own columns; not worth unsafe code at
    // these batch sizes.)
    let per_seq = seq * d_model;
    context.par_chunks_mut(per_seq).zip(weights.par_chunks_mut(n_heads * seq * seq)).enumerate().for_each(
        |(b, (context, weights))| {
            let rows = b * per_seq..(b + 1) * per_seq;
            let (q, k, v) = (&q[rows.clone()], &k[rows.clone()], &v[rows]);
            for (h, p) in weights.chunks_mut(seq * seq).enumerate() {
                let head = |x| head_view(x, h, seq, d_model, n_heads);
                // [seq, hd] · [hd, seq] → scores [seq, seq], scaled by 1/√hd.
                matmul_into(p, seq, head(q), head(k).t(), scale, false);
                // Query i sees keys 0..=i: the softmax runs over those, and
                // the future keys get weight 0 (a -inf mask, without writing one).
                for (i, row) in p.chunks_mut(seq).enumerate() {
                    let (seen, future) = row.split_at_mut(i + 1);
                    softmax_row(seen);
                    future.fill(0.0);
                }
                // [seq, seq] · [seq, hd] → this head's columns of the context.
                matmul_into(&mut context[h * hd..], d_model, MatRef::new(p, seq, seq, seq), head(v), 1.0, false);
            }
        },
    );
    (to_device(context, [rows, d_model], &device), to_device(weights, [batch, n_heads, seq, seq], &device))
}

/// `(dq, dk, dv)`, each `[batch·seq, d_model]`; see the formulas at
/// `Kernels::causal_attention_backward`.
pub fn causal_attention_backward<B: HostCopy>(
    q: Tensor<B, 2>,
    k: Tensor<B, 2>,
    v: Tensor<B, 2>,
    weights: Tensor<B, 4>,
    dcontext: Tensor<B, 2>,
    n_heads: usize,
) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>) {
    let ([rows, d_model], [_, _, seq, _], device) = (q.dims(), weights.dims(), q.device());
    let (hd, scale) = head_dim_and_scale(d_model, n_heads);
    let (q, k, v, weights, dcontext) = (host(q), host(k), host(v), host(weights), host(dcontext));
    let per_seq = seq * d_model;
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    let grads = dq.par_chunks_mut(per_seq).zip(dk.par_chunks_mut(per_seq)).zip(dv.par_chunks_mut(per_seq));
    grads.enumerate().for_each(|(b, ((dq, dk), dv))| {
        let rows = b * per_seq..(b + 1) * per_seq;
        let (q, k, v, dctx) = (&q[rows.clone()], &k[rows.clone()], &v[rows.clone()], &dcontext[rows]);
        let mut ds = vec![0.0; seq * seq]; // scratch: dL/dweights, then dL/dscores
        for h in 0..n_heads {
            let head = |x| head_view(x, h, seq, d_model, n_heads);
            let p_start = (b * n_heads + h) * seq * seq;
            let p = MatRef::new(&weights[p_start..p_start + seq * seq], seq, seq, seq);
            // dV = Pᵀ · dO: [seq, seq] · [seq, hd].
            matmul_into(&mut dv[h * hd..], d_model, p.t(), head(dctx), 1.0, false);
            // dP = dO · Vᵀ: [seq, hd] · [hd, seq].
            matmul_into(&mut ds, seq, head(dctx), head(v).t(), 1.0, false);
            // The softmax backward, row by row: dP → P ⊙ (dP − Σⱼ Pⱼ dPⱼ).
            // Future keys have P = 0, so their gradient is 0, as the mask requires.
            for (dp, p) in ds.chunks_mut(seq).zip(p.data().chunks(seq)) {
                softmax_row_backward(dp, p);
            }
            let ds = MatRef::new(&ds, seq, seq, seq);
            // dQ = dS · K and dK = dSᵀ · Q, [seq, seq] · [seq, hd], with dS
            // the gradient of the scores before their 1/√hd scaling.
            matmul_into(&mut dq[h * hd..], d_model, ds, head(k), scale, false);
            matmul_into(&mut dk[h * hd..], d_model, ds.t(), head(q), scale, false);
        }
    });
    let shape = [rows, d_model];
    (to_device(dq, shape, &device), to_device(dk, shape, &device), to_device(dv, shape, &device))
}

/// Head `h`'s columns of a sequence's `[seq, d_model]` rows: a `[seq, head_dim]` view.
fn head_view(x: &[f32], h: usize, seq: usize, d_model: usize, n_heads: usize) -> MatRef<'_> {
    let hd = d_model / n_heads;
    MatRef::new(&x[h * hd..], seq, hd, d_model)
}

/// Each head's width, and the 1/√head_dim its scores are scaled by.
fn head_dim_and_scale(d_model: usize, n_heads: usize) -> (usize, f32) {
    assert!(n_heads > 0 && d_model.is_multiple_of(n_heads), "d_model {d_model} does not split into {n_heads} heads");
    let hd = d_model / n_heads;
    (hd, 1.0 / (hd as f32).sqrt())
}
