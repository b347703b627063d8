//! [`MatRef`]: a matrix inside a buffer, described by two strides, so a
//! transpose or one head's columns of a wider matrix cost nothing: no copy
//! is made, a product just walks memory differently.

use std::ops::Range;

/// A read-only matrix inside a buffer: element `(i, j)` is
/// `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub(super) data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub(super) row_stride: usize,
    pub(super) col_stride: usize,
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
