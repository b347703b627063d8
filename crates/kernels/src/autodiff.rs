//! Each kernel as one node of burn's autodiff graph.
//!
//! A node runs the inner backend's forward kernel, keeps what the backward
//! kernel will need (its *state*), and, when `backward()` reaches it, turns
//! the gradient of its output into the gradient of its input with the
//! inner backend's backward kernel. This is how burn's own operations are
//! built; the pattern is the same for each below:
//! 1. a unit struct naming the operation, implementing `Backward` (its
//!    `State` type says what is kept from the forward pass);
//! 2. the forward: compute on the inner backend, then register the node
//!    (`prepare` → `Tracked`, keeping the state) or, when no input needs a
//!    gradient, skip the bookkeeping (`UnTracked`).

use std::sync::Arc;

use burn::backend::Autodiff;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Int, Tensor, TensorPrimitive};

use crate::Backend;
use crate::quant::QuantizedMatrix;

impl<B: Backend, C: CheckpointStrategy> Backend for Autodiff<B, C> {
    fn softmax_rows(x: Tensor<Self, 2>) -> Tensor<Self, 2> {
        #[derive(Debug)]
        struct SoftmaxRows;

        impl<B: Backend> Backward<B, 1> for SoftmaxRows {
            type State = FloatTensor<B>; // y [rows, cols]: the backward needs the output

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let y = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |dy| {
                    float(B::softmax_rows_backward(tensor(y), tensor(dy)))
                });
            }
        }

        let x = x.into_primitive().tensor();
        let y = float(B::softmax_rows(tensor(x.primitive.clone())));
        let out = match SoftmaxRows.prepare::<C>([x.node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(y.clone(), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }

    fn gelu_tanh(x: Tensor<Self, 2>) -> Tensor<Self, 2> {
        #[derive(Debug)]
        struct Gelu;

        impl<B: Backend> Backward<B, 1> for Gelu {
            type State = FloatTensor<B>; // x [rows, cols]: the backward needs the input

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let x = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |dy| float(B::gelu_tanh_backward(tensor(x), tensor(dy))));
            }
        }

        let x = x.into_primitive().tensor();
        let y = float(B::gelu_tanh(tensor(x.primitive.clone())));
        let out = match Gelu.prepare::<C>([x.node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(x.primitive, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }

    fn cross_entropy_rows(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
    ) -> (Tensor<Self, 1>, Tensor<Self, 1>) {
        #[derive(Debug)]
        struct CrossEntropyRows;

        impl<B: Backend> Backward<B, 1> for CrossEntropyRows {
            // logits [rows, vocab], targets [rows], logsumexp [rows]
            type State = (FloatTensor<B>, IntTensor<B>, FloatTensor<B>);

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let (logits, targets, lse) = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |dnll| {
                    let targets = Tensor::<B, 1, Int>::from_primitive(targets);
                    float(B::cross_entropy_rows_backward(tensor(logits), targets, tensor(lse), tensor(dnll)))
                });
            }
        }

        let logits = logits.into_primitive().tensor();
        let targets = targets.inner();
        let (nll, lse) = B::cross_entropy_rows(tensor(logits.primitive.clone()), targets.clone());
        let nll = float(nll);
        let out = match CrossEntropyRows.prepare::<C>([logits.node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                prep.finish((logits.primitive, targets.into_primitive(), float(lse.clone())), nll)
            }
            OpsKind::UnTracked(prep) => prep.finish(nll),
        };
        // The log-sum-exp leaves the graph as a constant: nothing differentiates through it.
        (Tensor::from_primitive(TensorPrimitive::Float(out)), Tensor::from_inner(lse))
    }

    fn layer_norm_rows(
        x: Tensor<Self, 2>,
        gamma: Tensor<Self, 1>,
        beta: Tensor<Self, 1>,
        eps: f64,
    ) -> (Tensor<Self, 2>, Tensor<Self, 1>, Tensor<Self, 1>) {
        let (x, gamma, beta) =
            (x.into_primitive().tensor(), gamma.into_primitive().tensor(), beta.into_primitive().tensor());
        let (y, mean, rstd) = B::layer_norm_rows(
            tensor(x.primitive.clone()),
            tensor(gamma.primitive.clone()),
            tensor(beta.primitive),
            eps,
        );
        let y = float(y);
        let out = match LayerNormRows.prepare::<C>([x.node, gamma.node, beta.node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                prep.finish((x.primitive, gamma.primitive, float(mean.clone()), float(rstd.clone())), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        (Tensor::from_primitive(TensorPrimitive::Float(out)), Tensor::from_inner(mean), Tensor::from_inner(rstd))
    }

    fn matmul(a: Tensor<Self, 2>, b: Tensor<Self, 2>, b_transposed: bool) -> Tensor<Self, 2> {
        let (a, b) = (a.into_primitive().tensor(), b.into_primitive().tensor());
        let y = float(B::matmul(tensor(a.primitive.clone()), tensor(b.primitive.clone()), b_transposed));
        let out = match (Matmul { b_transposed }).prepare::<C>([a.node, b.node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((a.primitive, b.primitive), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }

    fn linear_rows(x: Tensor<Self, 2>, w: Tensor<Self, 2>, bias: Tensor<Self, 1>) -> Tensor<Self, 2> {
        let (x, w, bias) = (x.into_primitive().tensor(), w.into_primitive().tensor(), bias.into_primitive().tensor());
        let y = float(B::linear_rows(tensor(x.primitive.clone()), tensor(w.primitive.clone()), tensor(bias.primitive)));
        let out = match Linear.prepare::<C>([x.node, w.node, bias.node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((x.primitive, w.primitive), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }

    fn quantized_matmul(x: Tensor<Self, 2>, w: Arc<QuantizedMatrix>) -> Tensor<Self, 2> {
        #[derive(Debug)]
        struct QuantizedMatmul;

        impl<B: Backend> Backward<B, 1> for QuantizedMatmul {
            // The weight, still quantized: the backward dequantizes it again,
            // piece by piece, rather than keep an f32 copy alive until then.
            type State = Arc<QuantizedMatrix>;

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let w = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |dy| {
                    float(crate::quant::dequantized_product_t(tensor::<B, 2>(dy), &w)) // dx = dy·deq(w)ᵀ
                });
            }
        }

        let x = x.into_primitive().tensor();
        let y = float(B::quantized_matmul(tensor(x.primitive.clone()), w.clone()));
        let out = match QuantizedMatmul.prepare::<C>([x.node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(w, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }

    fn causal_attention(
        q: Tensor<Self, 2>,
        k: Tensor<Self, 2>,
        v: Tensor<Self, 2>,
        batch: usize,
        n_heads: usize,
    ) -> (Tensor<Self, 2>, Tensor<Self, 4>) {
        let (q, k, v) = (q.into_primitive().tensor(), k.into_primitive().tensor(), v.into_primitive().tensor());
        let (q_in, k_in, v_in) =
            (tensor(q.primitive.clone()), tensor(k.primitive.clone()), tensor(v.primitive.clone()));
        let (context, weights) = B::causal_attention(q_in, k_in, v_in, batch, n_heads);
        let context = float(context);
        let node = CausalAttention { n_heads };
        let out = match node.prepare::<C>([q.node, k.node, v.node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                prep.finish((q.primitive, k.primitive, v.primitive, float(weights.clone())), context)
            }
            OpsKind::UnTracked(prep) => prep.finish(context),
        };
        // The weights leave the graph as a constant (for inspection only).
        (Tensor::from_primitive(TensorPrimitive::Float(out)), Tensor::from_inner(weights))
    }
}

// The LayerNorm node has three inputs (x, gamma, beta), so its backward
// registers up to three gradients itself (`register`) instead of using `unary`.
#[derive(Debug)]
struct LayerNormRows;

impl<B: Backend> Backward<B, 3> for LayerNormRows {
    // x [rows, d], gamma [d], mean [rows], rstd [rows]
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, gamma, mean, rstd) = ops.state;
        let dy = grads.consume::<B>(&ops.node);
        let (dx, dgamma, dbeta) =
            B::layer_norm_rows_backward(tensor(x), tensor(gamma), tensor(mean), tensor(rstd), tensor(dy));
        register::<B, 3>(grads, ops.parents.map(|p| p.map(|p| p.id)), [float(dx), float(dgamma), float(dbeta)]);
    }
}

// The matmul node has two inputs, a and b.
#[derive(Debug)]
struct Matmul {
    b_transposed: bool,
}

impl<B: Backend> Backward<B, 2> for Matmul {
    type State = (FloatTensor<B>, FloatTensor<B>); // a [m, k], b [k, n]

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (a, b) = ops.state;
        let dy = grads.consume::<B>(&ops.node);
        let ids = ops.parents.map(|p| p.map(|p| p.id));
        if let [Some(a_id), None] = ids {
            // b needs no gradient (a frozen weight, as under LoRA): skip its
            // product. da = dy·bᵀ is itself a matmul, with b's layout flipped.
            let da = B::matmul(tensor(dy), tensor(b), !self.b_transposed); // [m, n]·[n, k]
            grads.register::<B>(a_id, float(da));
            return;
        }
        let (da, db) = B::matmul_backward(tensor(a), tensor(b), tensor(dy), self.b_transposed);
        register::<B, 2>(grads, ids, [float(da), float(db)]);
    }
}

// A linear layer has three inputs (x, w, bias); the backward needs only the first two.
#[derive(Debug)]
struct Linear;

impl<B: Backend> Backward<B, 3> for Linear {
    type State = (FloatTensor<B>, FloatTensor<B>); // x [m, k], w [k, n]

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, w) = ops.state;
        let dy = grads.consume::<B>(&ops.node);
        let ids = ops.parents.map(|p| p.map(|p| p.id));
        if let [Some(x_id), None, None] = ids {
            // A frozen layer (LoRA's base): only dx = dy·wᵀ, one product of two.
            let dx = B::matmul(tensor(dy), tensor(w), true); // [m, n]·[n, k]
            grads.register::<B>(x_id, float(dx));
            return;
        }
        let (dx, dw, dbias) = B::linear_rows_backward(tensor(x), tensor(w), tensor(dy));
        register::<B, 3>(grads, ids, [float(dx), float(dw), float(dbias)]);
    }
}

// Attention has three inputs (q, k, v), registered like LayerNorm's.
#[derive(Debug)]
struct CausalAttention {
    n_heads: usize,
}

impl<B: Backend> Backward<B, 3> for CausalAttention {
    // q, k, v [batch·seq, d_model], weights [batch, heads, seq, seq]
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (q, k, v, weights) = ops.state;
        let dcontext = grads.consume::<B>(&ops.node);
        let (dq, dk, dv) = B::causal_attention_backward(
            tensor(q),
            tensor(k),
            tensor(v),
            tensor(weights),
            tensor(dcontext),
            self.n_heads,
        );
        register::<B, 3>(grads, ops.parents.map(|p| p.map(|p| p.id)), [float(dq), float(dk), float(dv)]);
    }
}

/// Registers each input's gradient, for the inputs that want one (`ids`:
/// the parents' node ids, `None` for an input that needs no gradient).
fn register<B: Backend, const N: usize>(
    grads: &mut Gradients,
    ids: [Option<NodeId>; N],
    input_grads: [FloatTensor<B>; N],
) {
    for (id, grad) in ids.into_iter().zip(input_grads) {
        if let Some(id) = id {
            grads.register::<B>(id, grad);
        }
    }
}

/// A float primitive as a tensor of rank `D`.
fn tensor<B: Backend, const D: usize>(primitive: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

/// A tensor's float primitive.
fn float<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}
