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

use std::ops::Range;

use burn::tensor::Tensor;
use rayon::prelude::*;

use super::host::{HostCopy, read, to_device};
use super::matmul::matmul_into;
use super::rows::{softmax_row, softmax_row_backward};
use super::simd::simd;
use super::view::MatRef;

/// Query rows go through the products in blocks of this many. Block
/// `r0..r1` can only see keys `0..r1`, so its products stop there: the
/// masked upper triangle is skipped block by block, which leaves
/// (n + 1) / 2n of the full products' work for n blocks (56% at 512 tokens).
/// Smaller blocks skip more, but each product call then does less work for
/// its fixed cost.
const BLOCK: usize = 64;

/// The query blocks of a sequence: `0..64, 64..128, …`, the last one short.
fn blocks(seq: usize) -> impl Iterator<Item = Range<usize>> {
    (0..seq).step_by(BLOCK).map(move |r0| r0..(r0 + BLOCK).min(seq))
}

/// `q, k, v [batch·seq, d_model]` → `(context [batch·seq, d_model],
/// weights [batch, heads, seq, seq])`; see `Backend::causal_attention`.
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
    let (q, k, v) = (read(q), read(k), read(v));
    let (q, k, v) = (&*q, &*k, &*v);
    let mut context = vec![0.0; batch * seq * d_model];
    // Zeroed here, and never written above each query block's reach: the
    // masked weights are 0 without a pass over them.
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
                for r in blocks(seq) {
                    // Scores of the block's queries against the keys they
                    // see, scaled by 1/√hd: [r, hd] · [hd, r.end] → p[r, 0..r.end].
                    let (q_block, k_seen) = (head(q).block(r.clone(), 0..hd), head(k).top(r.end));
                    matmul_into(&mut p[r.start * seq..], seq, q_block, k_seen.t(), scale);
                    // Query i sees keys 0..=i: the softmax runs over those,
                    // and the rest of the block's row gets weight 0 (a -inf
                    // mask, without writing one).
                    simd(|| {
                        for i in r.clone() {
                            let (seen, future) = p[i * seq..i * seq + r.end].split_at_mut(i + 1);
                            softmax_row(seen);
                            future.fill(0.0);
                        }
                    });
                    // [r, r.end] · [r.end, hd] → this head's columns of the context rows r.
                    let p = MatRef::new(p, seq, seq, seq).block(r.clone(), 0..r.end);
                    matmul_into(&mut context[r.start * d_model + h * hd..], d_model, p, head(v).top(r.end), 1.0);
                }
            }
        },
    );
    (to_device(context, [rows, d_model], &device), to_device(weights, [batch, n_heads, seq, seq], &device))
}

/// `(dq, dk, dv)`, each `[batch·seq, d_model]`; see the formulas at
/// `Backend::causal_attention_backward`. The products skip the masked
/// triangle block by block, like the forward pass.
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
    let (q, k, v, weights, dcontext) = (read(q), read(k), read(v), read(weights), read(dcontext));
    let (q, k, v, weights, dcontext) = (&*q, &*k, &*v, &*weights, &*dcontext);
    let per_seq = seq * d_model;
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    let grads = dq.par_chunks_mut(per_seq).zip(dk.par_chunks_mut(per_seq)).zip(dv.par_chunks_mut(per_seq));
    grads.enumerate().for_each(|(b, ((dq, dk), dv))| {
        let rows = b * per_seq..(b + 1) * per_seq;
        let (q, k, v, dctx) = (&q[rows.clone()], &k[rows.clone()], &v[rows.clone()], &dcontext[rows]);
        // Scratch: dL/dweights, then dL/dscores. Only each query block's
        // reach is written and read, so it is reused across heads unzeroed.
        let mut ds = vec![0.0; seq * seq];
        for h in 0..n_heads {
            let head = |x| head_view(x, h, seq, d_model, n_heads);
            let p_start = (b * n_heads + h) * seq * seq;
            let p_data = &weights[p_start..p_start + seq * seq];
            let p = MatRef::new(p_data, seq, seq, seq);
            for r in blocks(seq) {
                // dP = dO · Vᵀ over the keys the block sees: [r, hd] · [hd, r.end].
                let (do_block, v_seen) = (head(dctx).block(r.clone(), 0..hd), head(v).top(r.end));
                matmul_into(&mut ds[r.start * seq..], seq, do_block, v_seen.t(), 1.0);
                // The softmax backward, row by row: dP → P ⊙ (dP − Σⱼ Pⱼ dPⱼ).
                // Past the diagonal P = 0, so the gradient is 0 there, as the mask requires.
                simd(|| {
                    for i in r.clone() {
                        let row = i * seq..i * seq + r.end;
                        softmax_row_backward(&mut ds[row.clone()], &p_data[row]);
                    }
                });
            }
            let ds = MatRef::new(&ds, seq, seq, seq);
            for r in blocks(seq) {
                // Query block r: dQ = dS · K, [r, r.end] · [r.end, hd], with dS
                // the gradient of the scores before their 1/√hd scaling.
                let dq_rows = &mut dq[r.start * d_model + h * hd..];
                matmul_into(dq_rows, d_model, ds.block(r.clone(), 0..r.end), head(k).top(r.end), scale);
                // Key block c (= r): the queries from c.start on see it, so
                // dV = Pᵀ · dO and dK = dSᵀ · Q sum over those rows:
                // [c, seq − c.start] · [seq − c.start, hd].
                let (c, seen_by) = (r.clone(), r.start..seq);
                let (dv_rows, dk_rows) = (&mut dv[c.start * d_model + h * hd..], &mut dk[c.start * d_model + h * hd..]);
                let (p_seen, ds_seen) = (p.block(seen_by.clone(), c.clone()), ds.block(seen_by.clone(), c));
                matmul_into(dv_rows, d_model, p_seen.t(), head(dctx).block(seen_by.clone(), 0..hd), 1.0);
                matmul_into(dk_rows, d_model, ds_seen.t(), head(q).block(seen_by, 0..hd), scale);
            }
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
