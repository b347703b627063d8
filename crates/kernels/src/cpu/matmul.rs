//! Matrix products on host memory, through the `gemm-f32` crate.
//!
//! [`MatRef`] is a view of a matrix inside a buffer, described by two
//! strides, so a transpose or one head's columns of a wider matrix cost
//! nothing: no copy is made, the product just walks memory differently.
//! The kernel [`matmul`] multiplies two tensors this way, and its
//! backward pass multiplies by the transposes without materialising them.
//! [`linear`] is the same product with a bias added to every row, the
//! whole of a linear layer in one kernel.

use std::ops::Range;

use burn::tensor::Tensor;
use rayon::prelude::*;

use super::host::{HostCopy, read, to_device};
use super::simd::{MIN_PER_TASK, simd};

/// A read-only matrix inside a buffer: element `(i, j)` is
/// `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// `rows × cols`, rows `row_stride` apart, columns adjacent.
    pub fn new(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        let m = Self { data, rows, cols, row_stride, col_stride: 1 };
        assert!(m.rows == 0 || m.cols == 0 || m.last() < data.len(), "matrix view out of bounds");
        m
    }

    /// The transpose: the same memory, strides swapped.
    pub fn t(self) -> Self {
        Self { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }

    /// The sub-matrix of rows `rows` and columns `cols`: the same memory,
    /// started further in.
    pub fn block(self, rows: Range<usize>, cols: Range<usize>) -> Self {
        assert!(rows.end <= self.rows && cols.end <= self.cols, "block out of the matrix");
        let start = rows.start * self.row_stride + cols.start * self.col_stride;
        let (rows, cols) = (rows.len(), cols.len());
        let data = if rows == 0 || cols == 0 { &self.data[..0] } else { &self.data[start..] };
        Self { data, rows, cols, ..self }
    }

    /// The first `n` rows.
    pub fn top(self, n: usize) -> Self {
        self.block(0..n, 0..self.cols)
    }

    /// The buffer the view reads from.
    pub fn data(&self) -> &'a [f32] {
        self.data
    }

    fn last(&self) -> usize {
        (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
    }
}

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
/// element without reading any, and zeroing it cost 1-2% of a training
/// step (`memset` in `perf`), for values overwritten at once.
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
        openblas::sgemm_to(out, a, b, accumulate);
    }
}

/// With the `openblas` feature, the products of the linear layers and of
/// their backward passes run in the system's OpenBLAS instead. Over the
/// `mini` shapes it took 9-16% less time than `gemm` in isolation, and the
/// mini step 5-12% less (README, Performance), but it is a system library
/// to install, so it is not the default. Attention's small products stay on
/// `gemm`, one per rayon task, where OpenBLAS's own threads would compete.
#[cfg(feature = "openblas")]
mod openblas {
    use super::MatRef;

    #[link(name = "openblas")]
    unsafe extern "C" {
        fn cblas_sgemm(
            layout: i32,
            trans_a: i32,
            trans_b: i32,
            m: i32,
            n: i32,
            k: i32,
            alpha: f32,
            a: *const f32,
            lda: i32,
            b: *const f32,
            ldb: i32,
            beta: f32,
            c: *mut f32,
            ldc: i32,
        );
        fn openblas_set_num_threads(n: i32);
    }
    const ROW_MAJOR: i32 = 101;
    const NO_TRANS: i32 = 111;
    const TRANS: i32 = 112;

    /// A view as CBLAS takes it: a row-major matrix (its rows `ld` apart),
    /// or the transpose of one. CBLAS rejects a leading dimension shorter
    /// than the stored row (a one-row or one-column view can have both
    /// strides 1), so the layout is picked by that too.
    fn layout(x: &MatRef) -> (i32, i32) {
        if x.col_stride == 1 && x.row_stride >= x.cols {
            (NO_TRANS, x.row_stride.max(1) as i32)
        } else if x.row_stride == 1 && x.col_stride >= x.rows {
            (TRANS, x.col_stride.max(1) as i32)
        } else {
            panic!("CBLAS needs a matrix with rows or columns adjacent")
        }
    }

    /// `out = a · b` (`out += a · b` with `accumulate`), row-major, rows
    /// `b.cols` apart. Without `accumulate` every element is written and
    /// none read (beta = 0: BLAS does not read C then).
    ///
    /// SAFETY: as `super::gemm_to`.
    pub unsafe fn sgemm_to(out: *mut f32, a: MatRef, b: MatRef, accumulate: bool) {
        // OpenBLAS keeps its own thread pool: the same size as rayon's
        // (RAYON_NUM_THREADS), so both use the cores the user asked for.
        static THREADS: std::sync::Once = std::sync::Once::new();
        THREADS.call_once(|| unsafe { openblas_set_num_threads(rayon::current_num_threads() as i32) });
        let (m, k, n) = (a.rows, a.cols, b.cols);
        assert_eq!(b.rows, k, "matmul: inner dimensions differ");
        if m == 0 || n == 0 {
            return;
        }
        let ((trans_a, lda), (trans_b, ldb)) = (layout(&a), layout(&b));
        let (m, n, k) = (m as i32, n as i32, k as i32);
        // SAFETY: the views' checks keep CBLAS's reads inside their buffers
        // (`MatRef::new`); the caller vouches for `out`.
        unsafe {
            let beta = if accumulate { 1.0 } else { 0.0 };
            cblas_sgemm(
                ROW_MAJOR,
                trans_a,
                trans_b,
                m,
                n,
                k,
                1.0,
                a.data.as_ptr(),
                lda,
                b.data.as_ptr(),
                ldb,
                beta,
                out,
                n,
            );
        }
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
/// node in the graph, whose backward is a sum burn runs on one core: the
/// two together were 3.5% of the tiny model's step, measured with `perf`).
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
