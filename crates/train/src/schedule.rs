//! Learning-rate schedules: how big a step the optimizer takes, over time.
//!
//! Warmup: Adam's moment estimates are poor for the first few hundred steps,
//! and the freshly initialised network is easy to knock into a bad region,
//! so the rate ramps up from ~0. Decay: late in training, smaller steps
//! settle into a minimum instead of bouncing around it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum ScheduleKind {
    /// Linear warmup, then half a cosine wave from `lr` down to `min_lr` (GPT-2, nanoGPT).
    Cosine,
    /// Linear warmup, then a straight line down to `min_lr`.
    Linear,
    /// Linear warmup, then `lr` forever.
    Constant,
    /// MiniMind's `lr·(0.1 + 0.45·(1 + cos(π·step/total)))`: from lr to 0.1·lr, no warmup.
    Minimind,
}

/// A schedule with every number it needs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    /// Peak learning rate.
    pub lr: f64,
    /// Floor reached at the end (cosine and linear).
    pub min_lr: f64,
    pub warmup_steps: usize,
    /// Optimizer steps in the whole run.
    pub total_steps: usize,
}

impl LrSchedule {
    /// The learning rate for optimizer step `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        let Self { kind, lr, min_lr, warmup_steps, total_steps } = *self;
        if kind == ScheduleKind::Minimind {
            let progress = step.min(total_steps) as f64 / total_steps.max(1) as f64;
            return lr * (0.1 + 0.45 * (1.0 + (std::f64::consts::PI * progress).cos()));
        }
        if step < warmup_steps {
            // (step + 1) so the very first step already moves a little.
            return lr * (step + 1) as f64 / warmup_steps as f64;
        }
        // Fraction of the decay phase done, clamped: past the end the rate
        // stays at its floor instead of rising again with the cosine.
        let decay_steps = total_steps.saturating_sub(warmup_steps).max(1);
        let progress = ((step - warmup_steps) as f64 / decay_steps as f64).min(1.0);
        match kind {
            ScheduleKind::Cosine => min_lr + 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()) * (lr - min_lr),
            ScheduleKind::Linear => lr + (min_lr - lr) * progress,
            ScheduleKind::Constant | ScheduleKind::Minimind => lr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: ScheduleKind) -> LrSchedule {
        LrSchedule { kind, lr: 1e-3, min_lr: 1e-4, warmup_steps: 10, total_steps: 110 }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn warmup_rises_linearly_to_the_peak() {
        let s = sched(ScheduleKind::Cosine);
        assert!(close(s.lr_at(0), 1e-4));
        assert!(close(s.lr_at(4), 5e-4));
        assert!(close(s.lr_at(9), 1e-3));
        assert!(close(s.lr_at(10), 1e-3), "decay starts at the peak");
    }

    #[test]
    fn cosine_endpoints_and_midpoint() {
        let s = sched(ScheduleKind::Cosine);
        assert!(close(s.lr_at(60), (1e-3 + 1e-4) / 2.0), "halfway down the cosine is the mean");
        assert!(close(s.lr_at(110), 1e-4));
        let l = sched(ScheduleKind::Linear);
        assert!(close(l.lr_at(60), 5.5e-4));
        assert!(close(l.lr_at(110), 1e-4));
        assert!(close(sched(ScheduleKind::Constant).lr_at(100), 1e-3));
    }

    #[test]
    fn minimind_formula_values() {
        let s = LrSchedule { total_steps: 100, ..sched(ScheduleKind::Minimind) };
        assert!(close(s.lr_at(0), 1e-3)); // 0.1 + 0.45·2 = 1
        assert!(close(s.lr_at(50), 0.55e-3)); // 0.1 + 0.45·1
        assert!(close(s.lr_at(100), 0.1e-3)); // 0.1 + 0.45·0
    }

    #[test]
    fn never_rises_after_the_end() {
        for kind in [ScheduleKind::Cosine, ScheduleKind::Linear, ScheduleKind::Constant, ScheduleKind::Minimind] {
            let s = sched(kind);
            let mut prev = s.lr_at(s.warmup_steps);
            for step in s.warmup_steps + 1..3 * s.total_steps {
                let lr = s.lr_at(step);
                assert!(lr <= prev + 1e-15, "{kind:?} rose at step {step}");
                prev = lr;
            }
        }
    }
}
