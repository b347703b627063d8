//! What the kernel tests share: random inputs, a value-and-gradient
//! helper, and the comparison every test ends with.

use burn::tensor::{Distribution, Tensor, Tolerance};

pub use crate::AutodiffBackend;

/// The backend without the graph, where values and gradients are compared.
pub type Inner<A> = <A as burn::tensor::backend::AutodiffBackend>::InnerBackend;

pub fn random<A: AutodiffBackend>(rows: usize, cols: usize, scale: f64) -> Tensor<A, 2> {
    Tensor::random([rows, cols], Distribution::Normal(0.0, scale), &Default::default())
}

/// `f(x)` and d/dx of Σ f(x)⊙w, for a fixed random weighting `w` (so every
/// output element's gradient matters, not only their sum).
pub fn value_and_grad<A: AutodiffBackend>(
    f: impl Fn(Tensor<A, 2>) -> Tensor<A, 2>,
    x: &Tensor<A, 2>,
    w: &Tensor<A, 2>,
) -> (Tensor<Inner<A>, 2>, Tensor<Inner<A>, 2>) {
    let x = x.clone().detach().require_grad();
    let y = f(x.clone());
    let grads = (y.clone() * w.clone()).sum().backward();
    (y.inner(), x.grad(&grads).expect("x requires a gradient"))
}

pub fn assert_close<B: burn::tensor::backend::Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>, what: &str) {
    let tol = Tolerance::absolute(2e-5).set_relative(1e-4);
    a.into_data().assert_approx_eq::<f32>(&b.into_data(), tol);
    eprintln!("{what}: equal");
}

/// The fused node and the plain formula differentiated by burn.
pub fn check_against_reference<A: AutodiffBackend>(
    fused: impl Fn(Tensor<A, 2>) -> Tensor<A, 2>,
    plain: impl Fn(Tensor<A, 2>) -> Tensor<A, 2>,
    x: Tensor<A, 2>,
    what: &str,
) {
    let [rows, cols] = x.dims();
    let w = random(rows, cols, 1.0);
    let (y_fused, dx_fused) = value_and_grad(fused, &x, &w);
    let (y_plain, dx_plain) = value_and_grad(plain, &x, &w);
    assert_close(y_fused, y_plain, &format!("{what} value"));
    assert_close(dx_fused, dx_plain, &format!("{what} gradient"));
}
