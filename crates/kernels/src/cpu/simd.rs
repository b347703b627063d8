//! What makes the CPU loops fast. Two details, both about SIMD (one
//! instruction on 8 floats at once):
//! - [`simd`] compiles a loop for AVX2 when the CPU has it. Rust builds for
//!   the oldest x86-64 by default, whose vectors hold 4 floats; the
//!   instruction set is picked at run time, so the binary still runs
//!   everywhere.
//! - Sums, maxima and dot products run in eight lanes ([`sum_of`], [`max`],
//!   [`dot`]). A plain `.sum()` is one long chain of additions, which the
//!   compiler may not reorder (float addition is not associative), so it
//!   cannot use SIMD at all.
//!
//! And [`exp`], written so that it vectorises.

use rayon::prelude::*;

/// Rows (or elements) per rayon task, at least: small tensors stay on one
/// core, where splitting them would cost more than it saves.
pub const MIN_PER_TASK: usize = 16 * 1024;

/// Runs `f` compiled for the widest SIMD instructions this CPU has (AVX2 on
/// most x86-64 processors since 2013), chosen at run time by the `pulp`
/// crate. It works when `f` is inlined into the specialised copy, so the
/// helpers `f` calls are `#[inline(always)]`. Called once per row or chunk,
/// inside the rayon task: a task's body is a separate function, which
/// would otherwise be compiled for the baseline.
#[inline(always)]
pub fn simd<R>(f: impl FnOnce() -> R) -> R {
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
pub fn sum_of(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
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
/// lanes, the compiler leaves the loop scalar, several times slower.
#[inline(always)]
pub fn sum_exp(values: &[f32], shift: f32) -> f32 {
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
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
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
pub fn max(values: &[f32]) -> f32 {
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
pub fn for_each_row(data: &mut [f32], cols: usize, f: impl Fn(&mut [f32]) + Sync + Send) {
    let min_rows = (MIN_PER_TASK / cols).max(1);
    data.par_chunks_mut(cols).with_min_len(min_rows).for_each(|row| simd(|| f(row)));
}

#[cfg(test)]
mod tests {
    #[test]
    fn fast_exp_matches_std_exp() {
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0; // -87 ..= 88
            let (ours, std) = (super::exp(x) as f64, (x as f64).exp());
            worst = worst.max(((ours - std) / std).abs());
        }
        assert!(worst < 1e-7, "worst relative error {worst:e}");
        assert_eq!(super::exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(super::exp(-100.0), 0.0);
        assert_eq!(super::exp(0.0), 1.0);
    }
}
