//! The row kernels for the CPU backends: softmax, GELU, cross-entropy and
//! LayerNorm, each one pass per row (rows split across cores), and the sum
//! of squares. The arithmetic is the formulas of [`crate::reference`],
//! written per element; [`super::simd`] is what makes the loops fast.
use burn::tensor::{Int, Tensor};
use rayon::prelude::*;

use super::host::{HostCopy, host_ids, read, take, to_device};
use super::simd::{MIN_PER_TASK, dot, exp, for_each_row, max, simd, sum_exp, sum_of};
use crate::reference::{GELU_A, GELU_C};

pub fn softmax_rows<B: HostCopy>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let ([rows, cols], device) = (x.dims(), x.device());
    let mut y = take(x); // becomes y, in place
    for_each_row(&mut y, cols, softmax_row);
    to_device(y, [rows, cols], &device)
}

/// One row's softmax, in place (shared with the attention kernel).
#[inline(always)]
pub fn softmax_row(row: &mut [f32]) {
    let max = max(row);
    row.iter_mut().for_each(|v| *v = exp(*v - max));
    let inv = 1.0 / sum_of(row, |v| v);
    row.iter_mut().for_each(|v| *v *= inv);
}

/// One row's softmax backward, in place: `g` holds dL/dy and becomes dL/dx,
/// from the softmax output `y` (shared with the attention kernel).
#[inline(always)]
pub fn softmax_row_backward(g: &mut [f32], y: &[f32]) {
    let dot = dot(g, y);
    g.iter_mut().zip(y).for_each(|(g, y)| *g = y * (*g - dot));
}

pub fn softmax_rows_backward<B: HostCopy>(y: Tensor<B, 2>, dy: Tensor<B, 2>) -> Tensor<B, 2> {
    let ([rows, cols], device) = (y.dims(), y.device());
    let y = read(y);
    let mut dx = take(dy); // becomes dx, in place
    let min_rows = (MIN_PER_TASK / cols).max(1);
    dx.par_chunks_mut(cols)
        .zip(y.par_chunks(cols))
        .with_min_len(min_rows)
        .for_each(|(g, y)| simd(|| softmax_row_backward(g, y)));
    to_device(dx, [rows, cols], &device)
}

/// sigmoid(2u) = ½(1 + tanh u); written with exp, which is cheaper than tanh.
#[inline(always)]
fn gelu_gate(x: f32) -> (f32, f32) {
    let u = GELU_C as f32 * (x + GELU_A as f32 * x * x * x);
    (u, 1.0 / (1.0 + exp(-2.0 * u)))
}

pub fn gelu_tanh<B: HostCopy>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let (dims, device) = (x.dims(), x.device());
    let x = read(x); // autodiff keeps x for the backward pass: read, don't overwrite
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(MIN_PER_TASK).zip(x.par_chunks(MIN_PER_TASK)).for_each(|(y, x)| {
        simd(|| y.iter_mut().zip(x).for_each(|(y, &x)| *y = x * gelu_gate(x).1)); // x · ½(1 + tanh u)
    });
    to_device(y, dims, &device)
}

pub fn gelu_tanh_backward<B: HostCopy>(x: Tensor<B, 2>, dy: Tensor<B, 2>) -> Tensor<B, 2> {
    let (dims, device) = (x.dims(), x.device());
    let x = read(x);
    let mut dx = take(dy); // becomes dx, in place
    dx.par_chunks_mut(MIN_PER_TASK).zip(x.par_chunks(MIN_PER_TASK)).for_each(|(g, x)| {
        simd(|| {
            for (g, &x) in g.iter_mut().zip(x) {
                let (_, s) = gelu_gate(x);
                let du_dx = GELU_C as f32 * (1.0 + 3.0 * GELU_A as f32 * x * x);
                // tanh u = 2s − 1, so ½(1 − tanh²u) = 2s(1 − s).
                *g *= s + 2.0 * x * s * (1.0 - s) * du_dx;
            }
        })
    });
    to_device(dx, dims, &device)
}

pub fn cross_entropy_rows<B: HostCopy>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let ([rows, vocab], device) = (logits.dims(), logits.device());
    let z = read(logits);
    let targets = host_ids(targets, vocab);
    let min_rows = (MIN_PER_TASK / vocab).max(1);
    let (nll, lse): (Vec<f32>, Vec<f32>) = z
        .par_chunks(vocab)
        .zip(targets.par_iter())
        .with_min_len(min_rows)
        .map(|(row, &t)| {
            simd(
                #[inline(always)]
                || {
                    let max = max(row);
                    let lse = max + sum_exp(row, max).ln();
                    (lse - row[t], lse)
                },
            )
        })
        .unzip();
    (to_device(nll, [rows], &device), to_device(lse, [rows], &device))
}

pub fn cross_entropy_rows_backward<B: HostCopy>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    logsumexp: Tensor<B, 1>,
    dnll: Tensor<B, 1>,
) -> Tensor<B, 2> {
    let ([rows, vocab], device) = (logits.dims(), logits.device());
    // In training nothing else holds the logits by now, so this is their
    // own buffer, overwritten in place: the largest tensor of a small
    // model, [batch·seq, vocab], is never copied.
    let mut dz = take(logits);
    let targets = host_ids(targets, vocab);
    let (lse, dnll) = (read(logsumexp), read(dnll));
    let (lse, dnll) = (&*lse, &*dnll);
    let min_rows = (MIN_PER_TASK / vocab).max(1);
    dz.par_chunks_mut(vocab).enumerate().with_min_len(min_rows).for_each(|(r, row)| {
        let (lse, g) = (lse[r], dnll[r]);
        simd(|| row.iter_mut().for_each(|v| *v = exp(*v - lse) * g)); // softmax · dnll
        row[targets[r]] -= g; // − onehot · dnll
    });
    to_device(dz, [rows, vocab], &device)
}

pub fn layer_norm_rows<B: HostCopy>(
    x: Tensor<B, 2>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f64,
) -> (Tensor<B, 2>, Tensor<B, 1>, Tensor<B, 1>) {
    let ([rows, d], device) = (x.dims(), x.device());
    let x = read(x); // autodiff keeps x for the backward pass
    let (gamma, beta) = (read(gamma), read(beta));
    let (gamma, beta) = (&*gamma, &*beta);
    let mut y = vec![0.0; x.len()];
    let min_rows = (MIN_PER_TASK / d).max(1);
    let (mean, rstd): (Vec<f32>, Vec<f32>) = y
        .par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .with_min_len(min_rows)
        .map(|(y, x)| {
            simd(|| {
                let mean = sum_of(x, |v| v) / d as f32;
                let var = sum_of(x, |v| (v - mean) * (v - mean)) / d as f32;
                let rstd = 1.0 / (var + eps as f32).sqrt();
                for (((y, x), g), b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
                    *y = (x - mean) * rstd * g + b;
                }
                (mean, rstd)
            })
        })
        .unzip();
    (to_device(y, [rows, d], &device), to_device(mean, [rows], &device), to_device(rstd, [rows], &device))
}

pub fn layer_norm_rows_backward<B: HostCopy>(
    x: Tensor<B, 2>,
    gamma: Tensor<B, 1>,
    mean: Tensor<B, 1>,
    rstd: Tensor<B, 1>,
    dy: Tensor<B, 2>,
) -> (Tensor<B, 2>, Tensor<B, 1>, Tensor<B, 1>) {
    let ([rows, d], device) = (x.dims(), x.device());
    let mut xhat = take(x); // becomes x̂, in place
    let (gamma, mean, rstd) = (read(gamma), read(mean), read(rstd));
    let (gamma, mean, rstd) = (&*gamma, &*mean, &*rstd);
    let mut dx = take(dy); // holds dy, becomes dx, in place
    let min_rows = (MIN_PER_TASK / d).max(1);
    xhat.par_chunks_mut(d).enumerate().with_min_len(min_rows).for_each(|(r, row)| {
        simd(|| row.iter_mut().for_each(|v| *v = (*v - mean[r]) * rstd[r]));
    });
    // dγ and dβ sum over rows: a small [rows, d] sweep, kept serial (and
    // before dy is overwritten).
    let (mut dgamma, mut dbeta) = (vec![0.0f32; d], vec![0.0f32; d]);
    simd(|| {
        for (dy, xhat) in dx.chunks(d).zip(xhat.chunks(d)) {
            for j in 0..d {
                dgamma[j] += dy[j] * xhat[j];
                dbeta[j] += dy[j];
            }
        }
    });
    dx.par_chunks_mut(d).zip(xhat.par_chunks(d)).enumerate().with_min_len(min_rows).for_each(|(r, (g, xhat))| {
        simd(|| {
            g.iter_mut().zip(gamma).for_each(|(g, gamma)| *g *= gamma); // dL/dx̂
            let g_mean = sum_of(g, |v| v) / d as f32;
            let gx_mean = dot(g, xhat) / d as f32;
            for (g, x) in g.iter_mut().zip(xhat) {
                *g = rstd[r] * (*g - g_mean - x * gx_mean);
            }
        })
    });
    (to_device(dx, [rows, d], &device), to_device(dgamma, [d], &device), to_device(dbeta, [d], &device))
}

/// Σ x² in one pass with no buffer (the plain `x.square().sum()` writes
/// the squares out first). Fixed chunks are summed on the cores and their
/// sums added in order, so the result does not depend on the thread count.
pub fn sum_squares<B: HostCopy, const D: usize>(x: Tensor<B, D>) -> Tensor<B, 1> {
    let device = x.device();
    let x = read(x);
    let partial: Vec<f32> = x.par_chunks(MIN_PER_TASK).map(|chunk| simd(|| dot(chunk, chunk))).collect();
    to_device(vec![partial.iter().sum::<f32>()], [1], &device)
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Int, Tensor, TensorData};

    use crate::{Backend, Cpu};

    #[test]
    #[should_panic(expected = "outside the vocabulary")]
    fn cross_entropy_rejects_a_target_outside_the_vocabulary() {
        let device = Default::default();
        let targets = Tensor::<Cpu, 1, Int>::from_data(TensorData::from([3, 10]), &device);
        let logits = Tensor::<Cpu, 2>::random([2, 10], Distribution::Default, &device);
        let _ = Cpu::cross_entropy_rows(logits, targets);
    }
}
