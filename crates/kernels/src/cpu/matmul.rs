//! Matrix products on host memory, through the `gemm-f32` crate.
//!
//! The operands are [`MatRef`] views (see [`super::view`]), so a transpose
//! or one head's columns cost nothing. The kernel [`matmul`] multiplies two
//! tensors this way, and its backward pass multiplies by the transposes
//! without materialising them.
//! [`linear`] is the same product with a bias added to every row, the
//! whole of a linear layer in one kernel.

use burn::tensor::Tensor;
use rayon::prelude::*;

use super::host::{HostCopy, read, to_device};
use super::simd::{MIN_PER_TASK, simd};
use super::view::MatRef;

/// `out = scale · a · b`, with `out` a `rows × cols` block of `out_data`
/// whose rows are `out_stride` apart (other columns are left alone), on
/// the calling thread: for the small products of a kernel that already
/// runs one task per core (attention). Whole-layer products use `product`.
pub fn matmul_into(out_data: &mut [f32], out_stride: usize, a: MatRef, b: MatRef, scale: f32) {
    let (m, n) = (a.rows, b.cols);
    assert!(m == 0 || n == 0 || (m - 1) * out_stride + n - 1 < out_data.len(), "matmul: output out of bounds");
    // SAFETY: the output block was checked against `out_data` above, which
    // is borrowed mutably, so it overlaps neither input.
    unsafe { gemm_to(out_data.as_mut_ptr(), out_stride, a, b, scale, false, false) }
}

/// `a · b` as a new row-major `[a.rows, b.cols]` buffer, split across
/// threads. The buffer is not zeroed first: the product writes every
/// element without reading any, so zeroing it would be a pass over memory
/// for values overwritten at once.
fn product(a: MatRef, b: MatRef) -> Vec<f32> {
    let len = a.rows * b.cols;
    let mut out = Vec::with_capacity(len);
    // SAFETY: `out` has room for the `a.rows × b.cols` result, rows
    // `b.cols` apart; the product writes all of it (see `gemm_to`), so every
    // element is initialised before `set_len` exposes it.
    unsafe {
        multiply(out.as_mut_ptr(), a, b, false);
        out.set_len(len);
    }
    out
}

/// `out = a · b` (or `out += a · b` with `accumulate`), `out` row-major
/// with rows `b.cols` apart, split across threads: through `gemm`, or the
/// system's OpenBLAS with the `openblas` feature.
///
/// SAFETY: as [`gemm_to`]; with `accumulate`, `out` must be initialised.
unsafe fn multiply(out: *mut f32, a: MatRef, b: MatRef, accumulate: bool) {
    unsafe {
        #[cfg(not(feature = "openblas"))]
        gemm_to(out, b.cols, a, b, 1.0, accumulate, true);
        #[cfg(feature = "openblas")]
        super::openblas::sgemm_to(out, a, b, accumulate);
    }
}

/// `out = scale · a · b` through `gemm-f32`, writing every element of the
/// `a.rows × b.cols` output and reading none (`read_dst = false`: its old
/// contents are never read, not even multiplied by zero); with
/// `accumulate`, `out += scale · a · b` instead.
///
/// `gemm-f32` is the f32 half of the `gemm` crate (the one burn's flex
/// backend multiplies with), called without the crate's front door, which
/// would also compile its complex and f64 kernels into every binary. What
/// the front door adds for a row-major output is one rule, kept here:
/// gemm's kernels prefer a column-major destination, so for rows longer
/// than one element it computes outᵀ = bᵀ·aᵀ instead (the same memory,
/// read with swapped strides, and the same arithmetic as before the move).
///
/// SAFETY: `out` must be valid for writes at `i * out_stride + j` for every
/// row i and column j of the result (and initialised there, with
/// `accumulate`), and overlap neither input.
unsafe fn gemm_to(
    out: *mut f32,
    out_stride: usize,
    a: MatRef,
    b: MatRef,
    scale: f32,
    accumulate: bool,
    threaded: bool,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "matmul: inner dimensions differ");
    if m == 0 || n == 0 {
        return;
    }
    let parallelism = match threaded {
        true => gemm_common::Parallelism::Rayon(rayon::current_num_threads()),
        false => gemm_common::Parallelism::None,
    };
    let beta = if accumulate { 1.0 } else { 0.0 }; // out = beta · out + scale · a·b
    let stride = |s: usize| s as isize;
    let gemm = gemm_f32::gemm::f32::get_gemm_fn();
    // SAFETY: the views' own checks (`MatRef::new`) keep every index the
    // product reads inside its buffer; the caller vouches for `out`.
    // Arguments: sizes, then (pointer, column stride, row stride) of the
    // output, the left and the right operand.
    unsafe {
        if out_stride > 1 {
            // outᵀ [n, m] = bᵀ [n, k] · aᵀ [k, m]
            let (bt, at) = (b.t(), a.t());
            #[rustfmt::skip]
            gemm(n, m, k, out, stride(out_stride), 1, accumulate,
                bt.data.as_ptr(), stride(bt.col_stride), stride(bt.row_stride),
                at.data.as_ptr(), stride(at.col_stride), stride(at.row_stride),
                beta, scale, false, false, false, parallelism);
        } else {
            #[rustfmt::skip]
            gemm(m, n, k, out, 1, stride(out_stride), accumulate,
                a.data.as_ptr(), stride(a.col_stride), stride(a.row_stride),
                b.data.as_ptr(), stride(b.col_stride), stride(b.row_stride),
                beta, scale, false, false, false, parallelism);
        }
    }
}

/// `a [m, k] · b [k, n]` → `[m, n]`, split across threads. With
/// `b_transposed`, `b` holds bᵀ, `[n, k]`, as stored (the tied output head
/// multiplies by the embedding table `[vocab, d_model]` this way).
pub fn matmul<B: HostCopy>(a: Tensor<B, 2>, b: Tensor<B, 2>, b_transposed: bool) -> Tensor<B, 2> {
    let ([m, k], b_dims, device) = (a.dims(), b.dims(), a.device());
    let (a, b) = (read(a), read(b));
    let b = view_b(&b, b_dims, b_transposed);
    assert_eq!(b.rows, k, "matmul: [{m}, {k}] · [{}, {}]", b.rows, b.cols);
    let out = product(MatRef::new(&a, m, k, k), b);
    to_device(out, [m, b.cols], &device)
}

/// `(da, db)` of `a · b`: da = dy · bᵀ `[m, k]`, db = aᵀ · dy `[k, n]`
/// (with `b_transposed`: dbᵀ = dyᵀ · a `[n, k]`, the layout `b` came in).
pub fn matmul_backward<B: HostCopy>(
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    dy: Tensor<B, 2>,
    b_transposed: bool,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let ([m, k], b_dims, [_, n], device) = (a.dims(), b.dims(), dy.dims(), a.device());
    let (a, b, dy) = (read(a), read(b), read(dy));
    let (a, b, dy) = (MatRef::new(&a, m, k, k), view_b(&b, b_dims, b_transposed), MatRef::new(&dy, m, n, n));
    let da = product(dy, b.t()); // [m, n] · [n, k]
    let db = match b_transposed {
        false => product(a.t(), dy), // [k, m] · [m, n]
        true => product(dy.t(), a),  // [n, m] · [m, k]
    };
    (to_device(da, [m, k], &device), to_device(db, b_dims, &device))
}

/// `x [m, k] · w [k, n] + bias [n]` → `[m, n]`, the bias added to every
/// row: a linear layer. The output starts as `m` copies of the bias and the
/// product is added onto it, so the bias costs one write, where a separate
/// `+ bias` reads the product back and writes it again (and is one more
/// node in the graph, whose backward is a sum burn runs on one core).
pub fn linear<B: HostCopy>(x: Tensor<B, 2>, w: Tensor<B, 2>, bias: Tensor<B, 1>) -> Tensor<B, 2> {
    let ([m, k], [k_w, n], device) = (x.dims(), w.dims(), x.device());
    assert!(k == k_w && bias.dims() == [n], "linear: [{m}, {k}] · [{k_w}, {n}] + {:?}", bias.dims());
    let (x, w, bias) = (read(x), read(w), read(bias));
    let mut out = Vec::with_capacity(m * n);
    out.spare_capacity_mut().par_chunks_mut(n.max(1)).with_min_len((MIN_PER_TASK / n.max(1)).max(1)).for_each(|row| {
        row.iter_mut().zip(bias.iter()).for_each(|(o, &b)| {
            o.write(b);
        })
    });
    // SAFETY: the loop above wrote all `m × n` elements; the product then
    // adds onto them, rows `n` apart, as `multiply` requires.
    unsafe {
        out.set_len(m * n);
        multiply(out.as_mut_ptr(), MatRef::new(&x, m, k, k), MatRef::new(&w, k, n, n), true);
    }
    to_device(out, [m, n], &device)
}

/// `(dx, dw, dbias)` of `x · w + bias`: the two products of
/// [`matmul_backward`], and dbias = Σ over rows of dy.
pub fn linear_backward<B: HostCopy>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
    dy: Tensor<B, 2>,
) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 1>) {
    let ([_, n], device) = (dy.dims(), dy.device());
    let dbias = column_sums(&read(dy.clone()), n); // a view: cloning a tensor copies no data
    let (dx, dw) = matmul_backward(x, w, dy, false);
    (dx, dw, to_device(dbias, [n], &device))
}

/// The sum of each column of `values` (rows of `cols` values). Each task
/// sums one band of columns down all the rows, so the order of the
/// additions, and the result to the last bit, does not depend on how many
/// threads there are.
fn column_sums(values: &[f32], cols: usize) -> Vec<f32> {
    const BAND: usize = 64;
    let mut sums = vec![0.0f32; cols];
    sums.par_chunks_mut(BAND).enumerate().for_each(|(band, sums)| {
        let start = band * BAND;
        simd(|| {
            for row in values.chunks_exact(cols) {
                sums.iter_mut().zip(&row[start..]).for_each(|(s, v)| *s += v);
            }
        })
    });
    sums
}

/// The `[k, n]` view of `b`, whose buffer holds `dims` (bᵀ when `transposed`).
fn view_b(b: &[f32], dims: [usize; 2], transposed: bool) -> MatRef<'_> {
    let view = MatRef::new(b, dims[0], dims[1], dims[1]);
    if transposed { view.t() } else { view }
}
