//! Counting parameters: how big is the model, and how much of it trains?

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use kernels::Backend;

/// Total and trainable (gradient-receiving) parameter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamCounts {
    pub total: usize,
    pub trainable: usize,
}

impl std::fmt::Display for ParamCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = 100.0 * self.trainable as f64 / self.total.max(1) as f64;
        let (total, trainable) = (human(self.total), human(self.trainable));
        write!(f, "{total} parameters ({}), {trainable} trainable ({pct:.2}%)", grouped(self.total))
    }
}

/// Counts the parameters of any module. "Trainable" is only meaningful on an
/// autodiff backend: elsewhere no tensor tracks gradients, so it reads 0.
pub fn count_params<B: Backend, M: Module<B>>(module: &M) -> ParamCounts {
    struct Counter(ParamCounts);
    impl<B: Backend> ModuleVisitor<B> for Counter {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let n = param.val().shape().num_elements();
            self.0.total += n;
            if param.val().is_require_grad() {
                self.0.trainable += n;
            }
        }
    }
    let mut counter = Counter(ParamCounts { total: 0, trainable: 0 });
    module.visit(&mut counter);
    counter.0
}

/// 124439808 → "124.4M".
pub fn human(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.1}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// 124439808 → "124,439,808": the exact count, readable.
pub fn grouped(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Every parameter's path and shape, in visiting order: `("blocks.0.mlp.fc.base.weight", [128, 512])`.
/// What a checkpoint must match to load into a model.
pub fn param_shapes<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, Vec<usize>)> {
    #[derive(Default)]
    struct Shapes {
        path: Vec<String>,
        found: Vec<(String, Vec<usize>)>,
    }
    impl<B: Backend> ModuleVisitor<B> for Shapes {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.found.push((self.path.join("."), param.val().dims().to_vec()));
        }
    }
    let mut shapes = Shapes::default();
    module.visit(&mut shapes);
    shapes.found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_both_rounded_and_exact() {
        assert_eq!(
            [grouped(0), grouped(999), grouped(1000), grouped(124_439_808)],
            ["0", "999", "1,000", "124,439,808"]
        );
        let counts = ParamCounts { total: 124_439_808, trainable: 16_384 };
        assert_eq!(counts.to_string(), "124.4M parameters (124,439,808), 16.4K trainable (0.01%)");
    }
}
