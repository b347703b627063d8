//! A frozen weight matrix in 4 or 8 bits: how QLoRA fits a base model in a
//! quarter or an eighth of its f32 bytes, and the product that reads it.
//!
//! Both formats cut the matrix (row-major) into blocks of [`BLOCK`]
//! consecutive values and keep, per block, its largest magnitude (the
//! *absmax*, an f32) and one small code per value:
//!
//! - **int8**: code = round(127·x/absmax), a signed byte; x ≈ code·absmax/127.
//! - **NF4** (4-bit NormalFloat, Dettmers et al. 2023): x/absmax is rounded
//!   to the nearest of 16 levels ([`NF4`]), two codes per byte. The levels
//!   are not evenly spaced: they are quantiles of a normal distribution,
//!   dense near 0 where most trained weights are and sparse in the tails,
//!   so each of the 16 codes is used about equally often. (The table is
//!   derived from the normal quantiles in the test below.)
//!
//! A block of 64 weights costs 64·4 = 256 bytes in f32; in int8 64 + 4
//! (the scale) = 68; in NF4 32 + 4 = 36, 14% of f32.
//!
//! The product (`quantized_matmul`) dequantizes a few rows of the matrix at
//! a time, multiplies, and lets them go: the f32 copy of the whole matrix
//! never exists. Its backward computes only the input's gradient, the same
//! way, since the weight is frozen.

use burn::tensor::{Tensor, TensorData};

/// Values per block, each block with its own scale (QLoRA's choice: small
/// enough that one outlier spoils only 63 neighbours' precision).
pub const BLOCK: usize = 64;

/// Rows of the matrix dequantized at a time inside the product: an f32
/// piece of 256 rows lives only for its own product, so a large matrix
/// never exists in f32 at all (GPT-2's 3072-row MLP projection is 12
/// pieces); fewer, larger products are faster than many small ones.
const ROWS_PER_PIECE: usize = 256;

/// The 16 NF4 levels, in [-1, 1], in code order.
pub const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_9,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_03,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// How a frozen matrix is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantFormat {
    Nf4,
    Int8,
}

impl std::str::FromStr for QuantFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "nf4" => Ok(Self::Nf4),
            "int8" => Ok(Self::Int8),
            other => Err(format!("unknown format `{other}`: expected nf4 or int8")),
        }
    }
}

impl std::fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Nf4 => "nf4",
            Self::Int8 => "int8",
        })
    }
}

/// A `[rows, cols]` matrix, quantized block by block.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedMatrix {
    pub format: QuantFormat,
    pub rows: usize,
    pub cols: usize,
    /// int8: one signed byte per value; NF4: two codes per byte, the even
    /// value's in the low nibble.
    pub codes: Vec<u8>,
    /// One absmax per block of `BLOCK` values.
    pub scales: Vec<f32>,
}

impl QuantizedMatrix {
    /// Quantizes `values` (row-major `[rows, cols]`).
    pub fn quantize(values: &[f32], rows: usize, cols: usize, format: QuantFormat) -> Self {
        assert_eq!(values.len(), rows * cols, "values for a [{rows}, {cols}] matrix");
        let scales: Vec<f32> = values.chunks(BLOCK).map(|b| b.iter().fold(0.0f32, |m, x| m.max(x.abs()))).collect();
        let scaled = |i: usize| {
            let scale = scales[i / BLOCK];
            if scale > 0.0 { values[i] / scale } else { 0.0 } // in [-1, 1]
        };
        let codes = match format {
            QuantFormat::Int8 => (0..values.len()).map(|i| (scaled(i) * 127.0).round() as i8 as u8).collect(),
            QuantFormat::Nf4 => pack_nibbles(&(0..values.len()).map(|i| nearest_nf4(scaled(i))).collect::<Vec<_>>()),
        };
        Self { format, rows, cols, codes, scales }
    }

    /// Values `start..end` of the row-major matrix, dequantized: code →
    /// level (a table for NF4), times the block's scale.
    fn dequantize_range(&self, start: usize, end: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(end - start);
        let mut i = start;
        while i < end {
            // One block (or the part of it in the range) at a time: one scale.
            let block_end = ((i / BLOCK + 1) * BLOCK).min(end);
            let scale = self.scales[i / BLOCK];
            match self.format {
                QuantFormat::Int8 => {
                    let step = scale / 127.0;
                    out.extend(self.codes[i..block_end].iter().map(|&c| c as i8 as f32 * step));
                }
                QuantFormat::Nf4 => {
                    out.extend((i..block_end).map(|j| NF4[usize::from(nibble(&self.codes, j))] * scale))
                }
            }
            i = block_end;
        }
        out
    }

    /// The whole matrix in f32 (for merging, and for tests).
    pub fn dequantize(&self) -> Vec<f32> {
        self.dequantize_range(0, self.rows * self.cols)
    }

    /// Rows `start..end` as a tensor `[end - start, cols]` on `device`.
    fn rows_tensor<B: burn::tensor::backend::Backend>(
        &self,
        start: usize,
        end: usize,
        device: &B::Device,
    ) -> Tensor<B, 2> {
        let values = self.dequantize_range(start * self.cols, end * self.cols);
        Tensor::from_data(TensorData::new(values, [end - start, self.cols]), device)
    }

    /// Bytes it takes: codes and scales.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 4 * self.scales.len()
    }

    /// The code of value `i` (the NF4 level index, or the int8 byte).
    pub fn code(&self, i: usize) -> u8 {
        match self.format {
            QuantFormat::Int8 => self.codes[i],
            QuantFormat::Nf4 => nibble(&self.codes, i),
        }
    }
}

/// The index of the NF4 level nearest to `x` (in [-1, 1]).
fn nearest_nf4(x: f32) -> u8 {
    let mut best = 0;
    for (i, level) in NF4.iter().enumerate() {
        if (x - level).abs() < (x - NF4[best]).abs() {
            best = i;
        }
    }
    best as u8
}

/// 4-bit codes, two per byte: code 2i in the low nibble of byte i, code 2i+1 in its high nibble.
pub fn pack_nibbles(codes: &[u8]) -> Vec<u8> {
    codes.chunks(2).map(|pair| (pair[0] & 0x0f) | (pair.get(1).copied().unwrap_or(0) << 4)).collect()
}

fn nibble(packed: &[u8], i: usize) -> u8 {
    (packed[i / 2] >> (4 * (i % 2))) & 0x0f
}

/// `x [m, rows] · deq(w) [rows, cols]` → `[m, cols]`, `ROWS_PER_PIECE` rows
/// of the weight at a time: the reference product, which every backend runs.
pub fn dequantized_product<B: burn::tensor::backend::Backend>(x: Tensor<B, 2>, w: &QuantizedMatrix) -> Tensor<B, 2> {
    let [m, k] = x.dims();
    assert_eq!(k, w.rows, "quantized_matmul: x has {k} columns, the weight {} rows", w.rows);
    let device = x.device();
    let mut y = Tensor::<B, 2>::zeros([m, w.cols], &device).cast(x.dtype());
    for start in (0..w.rows).step_by(ROWS_PER_PIECE) {
        let end = (start + ROWS_PER_PIECE).min(w.rows);
        let piece = w.rows_tensor::<B>(start, end, &device).cast(x.dtype()); // [end - start, cols]
        y = y + x.clone().slice([0..m, start..end]).matmul(piece); // [m, end - start]·[end - start, cols]
    }
    y
}

/// `dy [m, cols] · deq(w)ᵀ [cols, rows]` → `[m, rows]`: the input's
/// gradient of [`dequantized_product`], piece by piece too.
pub fn dequantized_product_t<B: burn::tensor::backend::Backend>(dy: Tensor<B, 2>, w: &QuantizedMatrix) -> Tensor<B, 2> {
    let device = dy.device();
    let pieces = (0..w.rows)
        .step_by(ROWS_PER_PIECE)
        .map(|start| {
            let end = (start + ROWS_PER_PIECE).min(w.rows);
            let piece = w.rows_tensor::<B>(start, end, &device).cast(dy.dtype()); // [end - start, cols]
            dy.clone().matmul(piece.transpose()) // [m, cols]·[cols, end - start]
        })
        .collect();
    Tensor::cat(pieces, 1) // [m, rows]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(n: usize) -> Vec<f32> {
        // A deterministic spread with an outlier per block, as trained weights have.
        (0..n).map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * if i % 64 == 5 { 8.0 } else { 1.0 }).collect()
    }

    #[test]
    fn nf4_levels_are_normal_quantiles() {
        // Φ⁻¹ by bisection on Φ(x) = (1 + erf(x/√2))/2, erf by Abramowitz & Stegun 7.1.26.
        let erf = |x: f64| {
            let t = 1.0 / (1.0 + 0.3275911 * x.abs());
            let poly =
                t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
            (1.0 - poly * (-x * x).exp()).copysign(x)
        };
        let quantile = |p: f64| {
            let (mut lo, mut hi) = (-10.0, 10.0);
            for _ in 0..100 {
                let mid = 0.5 * (lo + hi);
                if 0.5 * (1.0 + erf(mid / 2f64.sqrt())) < p { lo = mid } else { hi = mid }
            }
            lo
        };
        // QLoRA: 8 positive levels from quantiles between 0.5 and δ, 7
        // negative ones likewise, and an exact 0; δ keeps the ends finite.
        let delta = 0.9677083;
        let mut levels: Vec<f64> = (0..8).map(|i| quantile(delta - (delta - 0.5) * i as f64 / 8.0)).collect();
        levels.extend((0..7).map(|i| -quantile(delta - (delta - 0.5) * i as f64 / 7.0)));
        levels.push(0.0);
        levels.sort_by(f64::total_cmp);
        let max = levels.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        for (derived, table) in levels.iter().zip(NF4) {
            assert!((derived / max - table as f64).abs() < 1e-5, "{} vs {table}", derived / max);
        }
    }

    #[test]
    fn round_trips_stay_within_what_each_format_promises() {
        let values = weights(64 * 10 + 17); // a last, partial block
        for format in [QuantFormat::Int8, QuantFormat::Nf4] {
            let q = QuantizedMatrix::quantize(&values, 1, values.len(), format);
            let back = q.dequantize();
            for (i, (x, y)) in values.iter().zip(&back).enumerate() {
                let scale = q.scales[i / BLOCK];
                // int8: half a step of absmax/127; NF4: half the widest gap between levels.
                let bound = match format {
                    QuantFormat::Int8 => scale / 127.0 / 2.0,
                    QuantFormat::Nf4 => scale * NF4.windows(2).map(|w| w[1] - w[0]).fold(0.0, f32::max) / 2.0,
                };
                assert!((x - y).abs() <= bound * 1.0001, "{format} value {i}: {x} → {y} (bound {bound})");
            }
            // Each block's largest value comes back exactly (it is ±1 times its scale).
            assert!(values.chunks(BLOCK).zip(back.chunks(BLOCK)).all(|(a, b)| {
                let i = a.iter().enumerate().max_by(|p, q| p.1.abs().total_cmp(&q.1.abs())).unwrap().0;
                (a[i] - b[i]).abs() <= a[i].abs() * 1e-6
            }));
            // Quantizing what came back gives the same codes: packing loses nothing.
            let again = QuantizedMatrix::quantize(&back, 1, back.len(), format);
            assert!((0..values.len()).all(|i| again.code(i) == q.code(i)), "{format}");
        }
        let nf4 = QuantizedMatrix::quantize(&values, 1, values.len(), QuantFormat::Nf4);
        assert_eq!(nf4.bytes(), values.len().div_ceil(2) + 4 * values.len().div_ceil(BLOCK));
        assert!((nf4.bytes() as f64) < 0.15 * (4 * values.len()) as f64, "NF4 is under 15% of f32");
    }

    /// The product and the input's gradient equal those with the whole
    /// dequantized matrix (a shape that is not a multiple of the pieces).
    #[test]
    fn the_quantized_product_and_its_input_gradient_equal_the_dequantized_weights() {
        use std::sync::Arc;

        use burn::tensor::{Distribution, Tolerance};
        type B = crate::CpuTrain;
        let device = Default::default();
        let (m, k, n) = (5, 600, 70); // 600 rows: two whole pieces and a partial one
        for format in [QuantFormat::Int8, QuantFormat::Nf4] {
            let q = Arc::new(QuantizedMatrix::quantize(&weights(k * n), k, n, format));
            let w = Tensor::<B, 2>::from_data(TensorData::new(q.dequantize(), [k, n]), &device);
            let x = Tensor::<B, 2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
            let probe = Tensor::<B, 2>::random([m, n], Distribution::Normal(0.0, 1.0), &device);
            let run = |product: &dyn Fn(Tensor<B, 2>) -> Tensor<B, 2>| {
                let x = x.clone().require_grad();
                let y = product(x.clone());
                let grads = (y.clone() * probe.clone()).sum().backward();
                (y.inner().into_data(), x.grad(&grads).unwrap().into_data())
            };
            let (y, dx) = run(&|x| crate::quantized_matmul(x, &q));
            let (y_ref, dx_ref) = run(&|x| x.matmul(w.clone()));
            let tol = Tolerance::absolute(1e-4).set_relative(1e-4);
            y.assert_approx_eq::<f32>(&y_ref, tol);
            dx.assert_approx_eq::<f32>(&dx_ref, tol);
        }
    }

    #[test]
    fn nibbles_pack_exactly() {
        let codes: Vec<u8> = (0..33).map(|i| (i * 5 % 16) as u8).collect(); // every code, an odd count
        let packed = pack_nibbles(&codes);
        assert_eq!(packed.len(), 17);
        assert_eq!((0..codes.len()).map(|i| nibble(&packed, i)).collect::<Vec<_>>(), codes);
    }
}
