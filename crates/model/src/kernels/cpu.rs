//! The kernels as loops over host memory, for the CPU backends.
//!
//! Each kernel copies its inputs out of the backend into a `Vec<f32>`, works
//! on it in place one row at a time, rows split across cores by rayon, and
//! hands the result back. The two copies are plain memcpys; what they buy is
//! a single pass over each row instead of the dozen separate tensor
//! operations (each reading and writing all of memory) of the plain version.
//! The arithmetic is the formulas of [`super::reference`], written per
//! element.

use burn::tensor::{Int, Tensor, TensorData, TensorPrimitive, backend::Backend};
use rayon::prelude::*;

use super::reference::{GELU_A, GELU_C};

/// Rows (or elements) per rayon task, at least: small tensors stay on one
/// core, where splitting them would cost more than it saves.
const MIN_PER_TASK: usize = 16 * 1024;

pub fn softmax_rows<B: HostCopy>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let ([rows, cols], device) = (x.dims(), x.device());
    let mut y = host(x);
    for_each_row(&mut y, cols, softmax_row);
    to_device(y, [rows, cols], &device)
}

/// One row's softmax, in place (shared with the attention kernel).
pub(super) fn softmax_row(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    row.iter_mut().for_each(|v| *v = exp(*v - max));
    let inv = 1.0 / sum(row);
    row.iter_mut().for_each(|v| *v *= inv);
}

/// One row's softmax backward, in place: `g` holds dL/dy and becomes dL/dx,
/// from the softmax output `y` (shared with the attention kernel).
pub(super) fn softmax_row_backward(g: &mut [f32], y: &[f32]) {
    let dot: f32 = g.iter().zip(y).map(|(g, y)| g * y).sum();
    g.iter_mut().zip(y).for_each(|(g, y)| *g = y * (*g - dot));
}

pub fn softmax_rows_backward<B: HostCopy>(y: Tensor<B, 2>, dy: Tensor<B, 2>) -> Tensor<B, 2> {
    let ([rows, cols], device) = (y.dims(), y.device());
    let y = host(y);
    let mut dx = host(dy); // becomes dx, in place
    let min_rows = (MIN_PER_TASK / cols).max(1);
    dx.par_chunks_mut(cols).zip(y.par_chunks(cols)).with_min_len(min_rows).for_each(|(g, y)| softmax_row_backward(g, y));
    to_device(dx, [rows, cols], &device)
}

/// sigmoid(2u) = ½(1 + tanh u); written with exp, which is cheaper than tanh.
fn gelu_gate(x: f32) -> (f32, f32) {
    let u = GELU_C as f32 * (x + GELU_A as f32 * x * x * x);
    (u, 1.0 / (1.0 + exp(-2.0 * u)))
}

pub fn gelu_tanh<B: HostCopy>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let (dims, device) = (x.dims(), x.device());
    let mut y = host(x);
    y.par_chunks_mut(MIN_PER_TASK).for_each(|chunk| {
        chunk.iter_mut().for_each(|v| *v *= gelu_gate(*v).1); // x · ½(1 + tanh u)
    });
    to_device(y, dims, &device)
}

pub fn gelu_tanh_backward<B: HostCopy>(x: Tensor<B, 2>, dy: Tensor<B, 2>) -> Tensor<B, 2> {
    let (dims, device) = (x.dims(), x.device());
    let x = host(x);
    let mut dx = host(dy); // becomes dx, in place
    dx.par_chunks_mut(MIN_PER_TASK).zip(x.par_chunks(MIN_PER_TASK)).for_each(|(g, x)| {
        for (g, &x) in g.iter_mut().zip(x) {
            let (_, s) = gelu_gate(x);
            let du_dx = GELU_C as f32 * (1.0 + 3.0 * GELU_A as f32 * x * x);
            // tanh u = 2s − 1, so ½(1 − tanh²u) = 2s(1 − s).
            *g *= s + 2.0 * x * s * (1.0 - s) * du_dx;
        }
    });
    to_device(dx, dims, &device)
}

pub fn cross_entropy_rows<B: HostCopy>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let ([rows, vocab], device) = (logits.dims(), logits.device());
    let mut z = host(logits); // a copy: used as scratch below
    let targets = host_ids(targets, vocab);
    let min_rows = (MIN_PER_TASK / vocab).max(1);
    let (nll, lse): (Vec<f32>, Vec<f32>) = z
        .par_chunks_mut(vocab)
        .zip(targets.par_iter())
        .with_min_len(min_rows)
        .map(|(row, &t)| {
            let (max, target_logit) = (row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)), row[t]);
            row.iter_mut().for_each(|v| *v = exp(*v - max));
            let lse = max + sum(row).ln();
            (lse - target_logit, lse)
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
    let mut dz = host(logits); // becomes dz, in place
    let targets = host_ids(targets, vocab);
    let (lse, dnll) = (host(logsumexp), host(dnll));
    let min_rows = (MIN_PER_TASK / vocab).max(1);
    dz.par_chunks_mut(vocab).enumerate().with_min_len(min_rows).for_each(|(r, row)| {
        let (lse, g) = (lse[r], dnll[r]);
        row.iter_mut().for_each(|v| *v = exp(*v - lse) * g); // softmax · dnll
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
    let mut y = host(x); // becomes y, in place
    let (gamma, beta) = (host(gamma), host(beta));
    let min_rows = (MIN_PER_TASK / d).max(1);
    let (mean, rstd): (Vec<f32>, Vec<f32>) = y
        .par_chunks_mut(d)
        .with_min_len(min_rows)
        .map(|row| {
            let mean = sum(row) / d as f32;
            row.iter_mut().for_each(|v| *v -= mean);
            let var = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let rstd = 1.0 / (var + eps as f32).sqrt();
            for ((v, g), b) in row.iter_mut().zip(&gamma).zip(&beta) {
                *v = *v * rstd * g + b;
            }
            (mean, rstd)
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
    let mut xhat = host(x); // becomes x̂, in place
    let (gamma, mean, rstd) = (host(gamma), host(mean), host(rstd));
    let mut dx = host(dy); // holds dy, becomes dx, in place
    let min_rows = (MIN_PER_TASK / d).max(1);
    xhat.par_chunks_mut(d).enumerate().with_min_len(min_rows).for_each(|(r, row)| {
        row.iter_mut().for_each(|v| *v = (*v - mean[r]) * rstd[r]);
    });
    // dγ and dβ sum over rows: a small [rows, d] sweep, kept serial (and
    // before dy is overwritten).
    let (mut dgamma, mut dbeta) = (vec![0.0f32; d], vec![0.0f32; d]);
    for (dy, xhat) in dx.chunks(d).zip(xhat.chunks(d)) {
        for j in 0..d {
            dgamma[j] += dy[j] * xhat[j];
            dbeta[j] += dy[j];
        }
    }
    dx.par_chunks_mut(d).zip(xhat.par_chunks(d)).enumerate().with_min_len(min_rows).for_each(|(r, (g, xhat))| {
        g.iter_mut().zip(&gamma).for_each(|(g, gamma)| *g *= gamma); // dL/dx̂
        let g_mean = sum(g) / d as f32;
        let gx_mean = g.iter().zip(xhat).map(|(g, x)| g * x).sum::<f32>() / d as f32;
        for (g, x) in g.iter_mut().zip(xhat) {
            *g = rstd[r] * (*g - g_mean - x * gx_mean);
        }
    });
    (to_device(dx, [rows, d], &device), to_device(dgamma, [d], &device), to_device(dbeta, [d], &device))
}

/// e^x in straight-line arithmetic, so the compiler can run it on several
/// lanes at once (libm's `expf` is a call per element, and was a tenth of
/// the CPU training step). Within 1e-7 relative of the exact value (tested);
/// exactly 0 below e^-87, which the causal mask's -inf relies on.
///
/// e^x = 2^n · e^r with n = round(x / ln 2) and |r| ≤ ln2 / 2; e^r is a
/// degree-6 polynomial (the Taylor series with its last terms tuned), and
/// 2^n is written straight into the float's exponent bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so n · LN2_HI is exact in f32.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding then subtracting 1.5·2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.0, 88.0);
    let n = (xc * LOG2_E + ROUND) - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_2e-4;
    let p = p * r + 1.398_2e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_65;
    let p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.0 { 0.0 } else { er * two_n }
}

/// Σ values, in eight running sums (which the compiler keeps in one SIMD
/// register) rather than one long chain.
pub(super) fn sum(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = values.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Runs `f` on each row of `data` (rows of `cols` values), several rows per task.
fn for_each_row(data: &mut [f32], cols: usize, f: impl Fn(&mut [f32]) + Sync + Send) {
    let min_rows = (MIN_PER_TASK / cols).max(1);
    data.par_chunks_mut(cols).with_min_len(min_rows).for_each(f);
}

/// A CPU backend's tensor values, copied out as one row-major `Vec`.
pub trait HostCopy: Backend {
    fn to_host<const D: usize>(x: Tensor<Self, D>) -> Vec<f32> {
        x.into_data().into_vec::<f32>().expect("the CPU kernels run on f32 tensors")
    }
}

#[cfg(feature = "flex")]
impl HostCopy for burn::backend::Flex {}

impl HostCopy for burn::backend::NdArray<f32> {
    // burn-ndarray's `into_data` hands over the buffer when the tensor is
    // not shared, but copies element by element through a slow n-dimensional
    // iterator when it is (and autodiff keeps most tensors shared). Reading
    // the contiguous slice is one memcpy.
    fn to_host<const D: usize>(x: Tensor<Self, D>) -> Vec<f32> {
        let TensorPrimitive::Float(burn_ndarray::NdArrayTensor::F32(storage)) = x.into_primitive() else {
            panic!("the CPU kernels run on f32 tensors");
        };
        let view = storage.view();
        match view.as_slice() {
            Some(slice) => slice.to_vec(),
            None => view.iter().copied().collect(), // strided: logical order
        }
    }
}

pub(super) fn host<B: HostCopy, const D: usize>(x: Tensor<B, D>) -> Vec<f32> {
    B::to_host(x)
}

/// Target ids as indices, checked against the vocabulary.
fn host_ids<B: Backend>(targets: Tensor<B, 1, Int>, vocab: usize) -> Vec<usize> {
    let data = targets.into_data();
    data.iter::<i64>()
        .map(|t| match usize::try_from(t) {
            Ok(t) if t < vocab => t,
            _ => panic!("cross-entropy target {t} is outside the vocabulary 0..{vocab}"),
        })
        .collect()
}

pub(super) fn to_device<B: Backend, const D: usize>(values: Vec<f32>, shape: [usize; D], device: &B::Device) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}
