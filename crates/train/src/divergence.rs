//! Telling a diverging run from a noisy one.
//!
//! A training loss jumps from batch to batch (one batch is easy, the next
//! hard), so one high value says little. A run has diverged when the loss
//! *stays* up: the loss smoothed over the last ten or so steps (an
//! exponential moving average) climbs to several times its lowest value.
//! A validation loss is averaged over many batches already, so it is
//! compared as it is, against the best one. A loss that is not a number
//! (NaN, infinity) is divergence at once.
//!
//! The trainer asks before it saves, so a diverged model never replaces the
//! last good checkpoint (see `trainer.rs`).

use serde::{Deserialize, Serialize};

/// How much of the smoothed loss each new step replaces: 0.1, about the
/// last ten steps.
const NEW_WEIGHT: f64 = 0.1;

/// A rise smaller than this (in nats) is never divergence, whatever the
/// ratio: a loss near zero may double without anything being wrong.
const MIN_RISE: f64 = 1.0;

/// What the watch remembers of the run so far; saved with each checkpoint
/// so that a resumed run judges exactly as the uninterrupted one would.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LossWatch {
    /// The training loss smoothed over recent steps.
    pub smoothed: Option<f64>,
    /// The lowest smoothed training loss so far, and its step.
    pub lowest: Option<(f64, usize)>,
    /// The best validation loss so far, and its step.
    pub best_val: Option<(f64, usize)>,
}

impl LossWatch {
    /// Records the training loss of `step`; an error says how the run diverged.
    /// `factor` 0 leaves only the not-a-number check.
    pub fn train_step(&mut self, step: usize, loss: f64, factor: f64) -> Result<(), String> {
        if !loss.is_finite() {
            return Err(format!("the training loss became {loss} at step {step}"));
        }
        let smoothed = match self.smoothed {
            Some(s) => s + NEW_WEIGHT * (loss - s),
            None => loss,
        };
        self.smoothed = Some(smoothed);
        let lowest = match self.lowest {
            Some(low) if low.0 <= smoothed => low,
            _ => (smoothed, step),
        };
        self.lowest = Some(lowest);
        match too_high(smoothed, lowest.0, factor) {
            true => Err(format!(
                "the training loss, smoothed over recent steps, rose to {smoothed:.4} at step {step}, more than {factor}× its lowest ({:.4} at step {})",
                lowest.0, lowest.1
            )),
            false => Ok(()),
        }
    }

    /// Records the validation loss measured after `step`.
    pub fn validation(&mut self, step: usize, loss: f64, factor: f64) -> Result<(), String> {
        if !loss.is_finite() {
            return Err(format!("the validation loss became {loss} at step {step}"));
        }
        let best = match self.best_val {
            Some(best) if best.0 <= loss => best,
            _ => (loss, step),
        };
        self.best_val = Some(best);
        match too_high(loss, best.0, factor) {
            true => Err(format!(
                "the validation loss rose to {loss:.4} at step {step}, more than {factor}× the best ({:.4} at step {})",
                best.0, best.1
            )),
            false => Ok(()),
        }
    }
}

fn too_high(loss: f64, reference: f64, factor: f64) -> bool {
    factor > 0.0 && loss > factor * reference && loss - reference > MIN_RISE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(losses: &[f64], factor: f64) -> Result<(), String> {
        let mut watch = LossWatch::default();
        losses.iter().enumerate().try_for_each(|(i, &l)| watch.train_step(i + 1, l, factor))
    }

    #[test]
    fn noise_is_not_divergence_but_a_sustained_rise_is() {
        // A noisy but healthy run, batch losses between 1.7 and 4.4 (as SFT's are).
        let noisy: Vec<f64> = (0..200).map(|i| 4.0 - (i as f64 / 100.0) + if i % 7 == 0 { 2.0 } else { 0.0 }).collect();
        assert!(run(&noisy, 4.0).is_ok());
        // One spike alone is smoothed away...
        let mut spike = vec![3.0; 50];
        spike[30] = 40.0;
        assert!(run(&spike, 4.0).is_ok());
        // ...a loss that stays up is not, and the message gives the numbers.
        let mut rising = vec![3.0; 30];
        rising.extend((0..30).map(|i| 3.0 * 1.5f64.powi(i)));
        let err = run(&rising, 4.0).unwrap_err();
        assert!(err.contains("more than 4× its lowest (3.0000 at step 1)"), "{err}");
        // The factor 0 turns the relative check off; NaN stops the run always.
        assert!(run(&rising[..45], 0.0).is_ok());
        assert!(run(&[3.0, f64::NAN], 0.0).unwrap_err().contains("became NaN at step 2"));
        assert!(run(&[3.0, f64::INFINITY], 4.0).unwrap_err().contains("became inf"));
    }

    #[test]
    fn a_loss_near_zero_may_wobble() {
        // Memorising a batch: 0.01 and 0.08 are 8× apart, but only 0.07 nats.
        let wobble: Vec<f64> = (0..100).map(|i| if i % 2 == 0 { 0.01 } else { 0.08 }).collect();
        assert!(run(&wobble, 4.0).is_ok());
    }

    #[test]
    fn validation_is_compared_with_the_best() {
        let mut watch = LossWatch::default();
        for (step, loss) in [(0, 8.34), (25, 5.5), (50, 4.1), (75, 4.3)] {
            watch.validation(step, loss, 4.0).unwrap();
        }
        assert_eq!(watch.best_val, Some((4.1, 50)));
        let err = watch.validation(100, 13572.0, 4.0).unwrap_err();
        assert!(err.contains("rose to 13572.0000 at step 100, more than 4× the best (4.1000 at step 50)"), "{err}");
    }
}
