//! Dynamic loss scaling, for training with fp16 products.
//!
//! fp16 has 5 exponent bits: its smallest positive value is 2⁻²⁴ ≈ 6·10⁻⁸,
//! and many gradients of a network's activations are smaller than that.
//! Rounded to fp16 they become zero and those weights stop learning. The
//! cure: multiply the loss by a large scale S before the backward pass, so
//! every gradient is S times larger while it travels through the fp16
//! products; divide the f32 weight gradients by S before they are used
//! (clipping and the optimizer see the true gradient). The scale must not
//! be too large either, or a gradient exceeds fp16's largest value (65504)
//! and becomes inf. "Dynamic": start high (2¹⁶), and
//! - when any gradient is inf or NaN, skip the step (the weights and the
//!   optimizer's moments stay as they were) and halve S;
//! - after `growth_interval` steps in a row without overflow, double S.
//!
//! So S settles just below the overflow point, as high as it can safely
//! be. bf16 has f32's exponent range and needs none of this (`--dtype
//! bf16` runs unscaled). The trainer calls [`LossScale::scale`] before
//! backward and [`LossScale::after_backward`] once the gradients are
//! unscaled and their norm is known.

use serde::{Deserialize, Serialize};

/// The scaler's state; saved in the checkpoint so that a resumed run goes on
/// with the scale it had reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    /// S: the loss is multiplied by this before the backward pass.
    pub scale: f64,
    /// Steps in a row without an overflow, since the scale last changed.
    pub good_steps: usize,
    /// Steps skipped for an overflow, over the whole run.
    pub skipped: usize,
}

/// What to do with this step's gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Finite: clip and step.
    Step,
    /// inf or NaN somewhere: no update, the scale was halved.
    Skip,
}

impl LossScale {
    pub fn new(initial: f64) -> Self {
        Self { scale: initial, good_steps: 0, skipped: 0 }
    }

    /// Records whether this step's (unscaled) gradients were all finite and
    /// updates the scale: halved on an overflow, doubled after
    /// `growth_interval` good steps in a row.
    pub fn after_backward(&mut self, finite: bool, growth_interval: usize) -> Verdict {
        if !finite {
            self.scale /= 2.0;
            self.good_steps = 0;
            self.skipped += 1;
            return Verdict::Skip;
        }
        self.good_steps += 1;
        if self.good_steps >= growth_interval {
            self.scale *= 2.0;
            self.good_steps = 0;
        }
        Verdict::Step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overflow_skips_the_step_and_halves_the_scale() {
        let mut s = LossScale::new(65536.0);
        assert_eq!(s.after_backward(true, 3), Verdict::Step);
        assert_eq!(s.after_backward(false, 3), Verdict::Skip);
        assert_eq!((s.scale, s.good_steps, s.skipped), (32768.0, 0, 1));
        assert_eq!(s.after_backward(false, 3), Verdict::Skip);
        assert_eq!((s.scale, s.skipped), (16384.0, 2));
    }

    #[test]
    fn the_scale_doubles_after_growth_interval_good_steps_in_a_row() {
        let mut s = LossScale::new(1024.0);
        s.after_backward(true, 3);
        s.after_backward(true, 3);
        assert_eq!(s.scale, 1024.0, "two good steps of three");
        s.after_backward(true, 3);
        assert_eq!((s.scale, s.good_steps), (2048.0, 0));
        // An overflow restarts the count.
        s.after_backward(true, 3);
        s.after_backward(false, 3);
        s.after_backward(true, 3);
        s.after_backward(true, 3);
        assert_eq!(s.scale, 1024.0, "halved, and not yet grown again");
        s.after_backward(true, 3);
        assert_eq!(s.scale, 2048.0);
    }
}
