//! With the `openblas` feature, the products of the linear layers and of
//! their backward passes run in the system's OpenBLAS instead. It is faster
//! than `gemm` on the `mini` shapes (README, Performance), but it is a
//! system library to install, so it is not the default. Attention's small products stay on
//! `gemm`, one per rayon task, where OpenBLAS's own threads would compete.

use super::view::MatRef;

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
/// # Safety
/// `out` must be valid for writes at `i * b.cols + j` for every row i and
/// column j of the result (and initialised there, with `accumulate`), and
/// overlap neither input.
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
