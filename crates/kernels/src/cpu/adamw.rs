//! The AdamW update (see [`crate::adamw`] for the formula) as one pass over
//! memory, for the CPU backends.

use burn::tensor::Tensor;
use rayon::prelude::*;

use super::host::{HostCopy, read, take, to_device};
use crate::adamw::AdamwStep;

/// The same formula as one pass over memory, overwriting the weight and
/// the moments in place (their buffers are handed over, not copied, when
/// nothing else holds them), split across cores.
pub fn adamw_step<B: HostCopy, const D: usize>(
    weight: Tensor<B, D>,
    grad: Tensor<B, D>,
    m: Tensor<B, D>,
    v: Tensor<B, D>,
    s: &AdamwStep,
) -> (Tensor<B, D>, Tensor<B, D>, Tensor<B, D>) {
    let (dims, device) = (weight.dims(), weight.device());
    let (c1, c2) = s.corrections();
    // As the tensor version computes them: the scale in f64, then rounded.
    let (shrink, lr) = ((1.0 - s.lr * s.weight_decay as f64) as f32, s.lr as f32);
    let grad = read(grad);
    let (mut weight, mut m, mut v) = (take(weight), take(m), take(v));
    const CHUNK: usize = 16 * 1024;
    weight
        .par_chunks_mut(CHUNK)
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .zip(grad.par_chunks(CHUNK))
        .for_each(|(((w, m), v), g)| {
            for (((w, m), v), &g) in w.iter_mut().zip(m).zip(v).zip(g) {
                *m = *m * s.beta_1 + g * (1.0 - s.beta_1);
                *v = *v * s.beta_2 + g * g * (1.0 - s.beta_2);
                let update = (*m / c1) / ((*v / c2).sqrt() + s.epsilon);
                *w = *w * shrink - update * lr;
            }
        });
    (to_device(weight, dims, &device), to_device(m, dims, &device), to_device(v, dims, &device))
}
