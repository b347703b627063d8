//! The kernels as loops over host memory, for the CPU backends.
//!
//! Each kernel reads its inputs straight from the backend's buffers (see
//! [`super::host`]), makes one pass over each row, rows split across cores
//! by rayon, and hands the result back: one pass per row instead of the
//! dozen separate tensor operations (each reading and writing all of
//! memory) of the plain version. The arithmetic is the formulas of
//! [`super::reference`], written per element.
//!
//! Two details make the loops fast, and both are about SIMD (one
//! instruction on 8 floats at once):
//! - [`simd`] compiles a loop for AVX2 when the CPU has it. Rust builds for
//!   the oldest x86-64 by default, whose vectors hold 4 floats; the
//!   instruction set is picked at run time, so the binary still runs
//!   everywhere.
//! - Sums, maxima and dot products run in eight lanes ([`sum_of`], [`max`],
//!   [`dot`]). A plain `.sum()` is one long chain of additions, which the
//!   compiler may not reorder (float addition is not associative), so it
//!   cannot use SIMD at all.

use burn::tensor::{Int, Tensor};
use rayon::prelude::*;

use super::host::{HostCopy, host_ids, read, take, to_device};
use super::reference::{GELU_A, GELU_C};

/// Rows (or elements) per rayon task, at least: small tensors stay on one
/// core, where splitting them would cost more than it saves.
pub(super) const MIN_PER_TASK: usize = 16 * 1024;

pub fn softmax_rows<B: HostCopy>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let ([rows, cols], device) = (x.dims(), x.device());
    let mut y = take(x); // becomes y, in place
    for_each_row(&mut y, cols, softmax_row);
    to_device(y, [rows, cols], &device)
}

/// One row's softmax, in place (shared with the attention kernel).
#[inline(always)]
pub(super) fn softmax_row(row: &mut [f32]) {
    let max = max(row);
    row.iter_mut().for_each(|v| *v = exp(*v - max));
    let inv = 1.0 / sum_of(row, |v| v);
    row.iter_mut().for_each(|v| *v *= inv);
}

/// One row's softmax backward, in place: `g` holds dL/dy and becomes dL/dx,
/// from the softmax output `y` (shared with the attention kernel).
#[inline(always)]
pub(super) fn softmax_row_backward(g: &mut [f32], y: &[f32]) {
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

pub fn cross_entropy_rows<B: HostCopy>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let ([rows, vocab], device) = (logits.dims(), logits.device());
    let z = read(logits);
    let targets = host_ids(targets, vocab);
    let min_rows = (MIN_PER_TASK / vocab).max(1);
    let (nll, lse): (Vec<f32>, Vec<f32>) = z
        .par_chunks(vocab)
        .zip(targets.par_iter())
        .with_min_len(min_rows)
        .map(|(row, &t)| {
            simd(#[inline(always)] || {
                let max = max(row);
                let lse = max + sum_exp(row, max).ln();
                (lse - row[t], lse)
            })
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

/// Runs `f` compiled for the widest SIMD instructions this CPU has (AVX2 on
/// most x86-64 processors since 2013), chosen at run time by the `pulp`
/// crate. It works when `f` is inlined into the specialised copy, so the
/// helpers `f` calls are `#[inline(always)]`. Called once per row or chunk,
/// inside the rayon task: a task's body is a separate function, which
/// would otherwise be compiled for the baseline.
#[inline(always)]
pub(super) fn simd<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
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
    let rounded = xc * LOG2_E + ROUND; // holds n in its low mantissa bits
    let n = rounded - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_2e-4;
    let p = p * r + 1.398_2e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_65;
    let p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // 2^n: the exponent field holds n + 127. Near 1.5·2^23 one unit of the
    // mantissa is 1.0, so n is the difference of the two bit patterns (no
    // float-to-int conversion, which Rust makes saturate, at a cost).
    let n_int = rounded.to_bits().wrapping_sub(ROUND.to_bits());
    let two_n = f32::from_bits(n_int.wrapping_add(127) << 23);
    if x < -87.0 { 0.0 } else { er * two_n }
}

/// Σ f(v) over `values`, in eight running sums (which the compiler keeps in
/// one SIMD register) rather than one long chain. For a cheap `f` (see
/// [`sum_exp`] for why).
#[inline(always)]
pub(super) fn sum_of(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = values.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Σ exp(v − shift) over `values`. The exponentials go through a small
/// buffer and are summed from there: folded straight into [`sum_of`]'s
/// lanes, the compiler leaves the loop scalar (measured 5× slower).
#[inline(always)]
pub(super) fn sum_exp(values: &[f32], shift: f32) -> f32 {
    let mut buf = [0.0f32; 64];
    let mut total = 0.0;
    for chunk in values.chunks(buf.len()) {
        let buf = &mut buf[..chunk.len()];
        buf.iter_mut().zip(chunk).for_each(|(e, &v)| *e = exp(v - shift));
        total += sum_of(buf, |e| e);
    }
    total
}

/// Σ a ⊙ b, in eight lanes like [`sum_of`].
#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut lanes = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8.remainder().iter().zip(b8.remainder()).map(|(a, b)| a * b).sum();
    for (a, b) in a8.zip(b8) {
        for ((lane, a), b) in lanes.iter_mut().zip(a).zip(b) {
            *lane += a * b;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The largest of `values` (−∞ for none), in eight lanes like [`sum_of`].
#[inline(always)]
pub(super) fn max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            // Not `f32::max`: its NaN rule costs extra instructions per lane.
            *lane = if v > *lane { v } else { *lane };
        }
    }
    lanes.iter().fold(tail, |m, &v| m.max(v))
}

/// Runs `f` on each row of `data` (rows of `cols` values), several rows per task.
fn for_each_row(data: &mut [f32], cols: usize, f: impl Fn(&mut [f32]) + Sync + Send) {
    let min_rows = (MIN_PER_TASK / cols).max(1);
    data.par_chunks_mut(cols).with_min_len(min_rows).for_each(|row| simd(|| f(row)));
}
