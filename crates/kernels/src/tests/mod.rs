//! Every fused kernel against its plain formula: the same values, and the
//! same gradients as burn's autodiff derives from the plain formula.
//!
//! The tests are written once, for any backend `A` (an autodiff backend;
//! `Inner<A>` is the same backend without the graph), and
//! [`backend_tests!`] runs them all on each backend that has kernels of its
//! own: ndarray always, flex with the `flex` feature. A GPU implementation
//! joins by adding one line at the bottom.

mod common;
mod products;
mod rows;

/// A `#[test]` per kernel test, for the backend `$backend`, in module `$name`.
macro_rules! backend_tests {
    ($name:ident, $backend:ty) => {
        mod $name {
            use super::{products, rows};
            type A = $backend;

            #[test]
            fn softmax() {
                rows::softmax_matches_the_plain_formula_and_its_gradient::<A>();
            }
            #[test]
            fn gelu() {
                rows::gelu_matches_the_plain_formula_and_its_gradient::<A>();
            }
            #[test]
            fn plain_backward_formulas() {
                rows::plain_backward_formulas_match_autodiff::<A>();
            }
            #[test]
            fn cross_entropy() {
                rows::cross_entropy_matches_log_softmax_and_its_gradient::<A>();
            }
            #[test]
            fn layer_norm() {
                rows::layer_norm_matches_the_plain_formula_and_its_gradients::<A>();
            }
            #[test]
            fn plain_layer_norm_backward() {
                rows::plain_layer_norm_backward_matches_autodiff::<A>();
            }
            #[test]
            fn sum_squares() {
                rows::sum_squares_matches_the_plain_formula::<A>();
            }
            #[test]
            fn adamw() {
                rows::adamw_matches_the_plain_formula::<A>();
            }
            #[test]
            fn attention() {
                products::attention_matches_the_plain_formula_and_finite_differences::<A>();
            }
            #[test]
            fn attention_blocks() {
                products::attention_on_long_sequences_matches_the_plain_formula::<A>();
            }
            #[test]
            fn matmul() {
                products::matmul_matches_burn_and_its_gradients::<A>();
            }
            #[test]
            fn linear() {
                products::linear_matches_burn_and_its_gradients::<A>();
            }
            #[test]
            fn frozen_weights() {
                products::frozen_weights_still_give_the_input_gradient::<A>();
            }
        }
    };
}

backend_tests!(ndarray, crate::CpuTrain);
#[cfg(feature = "flex")]
backend_tests!(flex, burn::backend::Autodiff<burn::backend::Flex>);
