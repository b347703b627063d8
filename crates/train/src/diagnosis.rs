//! Reading a run's learning curves, as one would by eye, in rules with
//! numbers: is the model under-fitting, over-fitting, well fit, or was the
//! training unstable? Each verdict comes with the numbers it was decided
//! from and what to do about it (`notebooks-md/00-concepts.md`, section 10).
//!
//! - **Unstable**: a loss is not a number, or the training loss (averaged
//!   over each logging interval) rose well above its lowest value and did
//!   not come back down. (A validation loss that rises while the training
//!   loss falls is over-fitting, however high it goes.)
//! - **Over-fitting**: the validation loss reached its best before the end
//!   and has risen since, while the training loss kept falling: the model
//!   is learning its training examples, not the task.
//! - **Under-fitting**: the validation loss was still falling clearly over
//!   the last part of the run: there was more to learn. Or the training
//!   loss hardly moved at all: the model cannot learn this data as set up.
//! - **Well fit**: neither; the validation loss has flattened out.

/// Over the last this share of the run, a validation loss still falling by
/// at least `STILL_FALLING` (relative) means the run stopped too early.
const LAST_PART: f64 = 0.25;
const STILL_FALLING: f64 = 0.02;
/// ...and by this many nats: near zero, a relative fall can be noise.
const STILL_FALLING_NATS: f64 = 0.02;
/// A validation loss this much (relative) above its best, at the last two
/// evaluations or more, is a rise and not noise.
const RISEN: f64 = 0.01;
/// An averaged training loss this far above its lowest, at the end, is a
/// training that went wrong.
const UNSTABLE_RISE: f64 = 0.5;
/// A training loss that fell by less than this share of its first value
/// has not learnt anything.
const NOT_LEARNING: f64 = 0.1;

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    UnderFitting,
    OverFitting { best_step: f64 },
    WellFit,
    Unstable,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Diagnosis {
    pub verdict: Verdict,
    /// The numbers the verdict was read from, in words.
    pub evidence: String,
    /// What to change.
    pub advice: &'static str,
}

impl Diagnosis {
    pub fn name(&self) -> &'static str {
        match self.verdict {
            Verdict::UnderFitting => "under-fitting",
            Verdict::OverFitting { .. } => "over-fitting",
            Verdict::WellFit => "well fit",
            Verdict::Unstable => "unstable",
        }
    }
}

/// Reads `train` (step, loss averaged over a logging interval) and `val`
/// (step, validation loss) curves. None if there is too little to read
/// (fewer than three evaluations).
pub fn diagnose(train: &[(f64, f64)], val: &[(f64, f64)]) -> Option<Diagnosis> {
    if val.len() < 3 || train.is_empty() {
        return None;
    }
    let (first_val, last_val) = (val[0], val[val.len() - 1]);
    let best = val.iter().copied().fold(first_val, |b, p| if p.1 < b.1 { p } else { b });
    let lowest_train = train.iter().copied().fold(train[0], |b, p| if p.1 < b.1 { p } else { b });
    let last_train = train[train.len() - 1];

    let finite = train.iter().chain(val).all(|p| p.1.is_finite());
    if !finite || last_train.1 > lowest_train.1 * (1.0 + UNSTABLE_RISE) {
        let evidence = format!(
            "training loss {:.3} at the end against {:.3} at step {}; validation loss {:.3} → {:.3}",
            last_train.1, lowest_train.1, lowest_train.0, first_val.1, last_val.1
        );
        return Some(Diagnosis {
            verdict: Verdict::Unstable,
            evidence,
            advice: "lower the learning rate (--lr), warm up for longer (--warmup-steps), or clip harder (--clip-norm 0.5)",
        });
    }

    // Over-fitting: the last two evaluations (at least) above the best, the training loss lower than then.
    let risen_since = val.iter().rposition(|p| p.1 <= best.1 * (1.0 + RISEN)).map_or(0, |i| i + 1);
    let train_at_best = train.iter().rev().find(|p| p.0 <= best.0).copied().unwrap_or(train[0]);
    if val.len() - risen_since >= 2 && last_train.1 < train_at_best.1 {
        let evidence = format!(
            "validation loss best {:.3} at step {}, {:.3} at the end ({:+.1}%), while the training loss fell from {:.3} to {:.3}",
            best.1,
            best.0,
            last_val.1,
            100.0 * (last_val.1 / best.1 - 1.0),
            train_at_best.1,
            last_train.1
        );
        return Some(Diagnosis {
            verdict: Verdict::OverFitting { best_step: best.0 },
            evidence,
            advice: "keep the best checkpoint (best/), stop earlier (--epochs, --max-steps), or add data, dropout or weight decay",
        });
    }

    // Under-fitting: nothing learnt...
    let first_train = train[0];
    if last_train.1 > first_train.1 * (1.0 - NOT_LEARNING) {
        let evidence = format!(
            "the training loss hardly moved: {:.3} at step {} → {:.3} at step {}",
            first_train.1, first_train.0, last_train.1, last_train.0
        );
        return Some(Diagnosis {
            verdict: Verdict::UnderFitting,
            evidence,
            advice: "raise the learning rate (--lr) or use a bigger model; check that the data can be learnt",
        });
    }
    // ...or still falling over the last part of the run.
    let span = last_val.0 - first_val.0;
    // The evaluation at the start of that part (at least the one before the last).
    let start =
        val[..val.len() - 1].iter().copied().rfind(|p| p.0 <= last_val.0 - LAST_PART * span).unwrap_or(first_val);
    let fall = (start.1 - last_val.1) / start.1;
    let gap = last_val.1 - last_train.1;
    if fall >= STILL_FALLING && start.1 - last_val.1 >= STILL_FALLING_NATS {
        let evidence = format!(
            "validation loss still falling: {:.3} at step {} → {:.3} at step {} ({:.1}% over the last {:.0}% of the run)",
            start.1,
            start.0,
            last_val.1,
            last_val.0,
            100.0 * fall,
            100.0 * LAST_PART
        );
        return Some(Diagnosis {
            verdict: Verdict::UnderFitting,
            evidence,
            advice: "train longer (--epochs), or use a bigger model or a higher learning rate",
        });
    }
    let evidence = format!(
        "validation loss flat at the end ({:.3} → {:.3} over the last {:.0}% of the run); gap to the training loss {gap:.3}",
        start.1,
        last_val.1,
        100.0 * LAST_PART
    );
    Some(Diagnosis {
        verdict: Verdict::WellFit,
        evidence,
        advice: "nothing to fix; to do better, more data or a bigger model",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(points: &[f64], every: f64) -> Vec<(f64, f64)> {
        points.iter().enumerate().map(|(i, &l)| (i as f64 * every, l)).collect()
    }

    #[test]
    fn each_shape_of_curve_gets_its_verdict() {
        // Both still falling steeply at the end: under-fitting.
        let train = curve(&[8.0, 6.0, 5.0, 4.3, 3.8, 3.4, 3.1, 2.9], 10.0);
        let val = curve(&[8.3, 5.5, 4.2, 3.5, 3.0], 20.0);
        let d = diagnose(&train, &val).unwrap();
        assert_eq!(d.verdict, Verdict::UnderFitting, "{d:?}");
        assert!(d.evidence.contains("3.500 at step 60 → 3.000 at step 80"), "{}", d.evidence);

        // Validation best at step 40, up since, training still falling: over-fitting since 40.
        let train = curve(&[6.0, 4.0, 3.0, 2.0, 1.2, 0.7, 0.4, 0.2], 10.0);
        let val = curve(&[6.2, 4.2, 3.4, 3.6, 3.9], 20.0);
        let d = diagnose(&train, &val).unwrap();
        assert_eq!(d.verdict, Verdict::OverFitting { best_step: 40.0 }, "{d:?}");

        // Flattened out, close together: well fit.
        let train = curve(&[6.0, 4.0, 3.0, 2.6, 2.5, 2.45, 2.44, 2.44], 10.0);
        let val = curve(&[6.2, 3.2, 2.62, 2.60, 2.60], 20.0);
        assert_eq!(diagnose(&train, &val).unwrap().verdict, Verdict::WellFit);

        // A training loss that climbed back up: unstable, and so is a NaN.
        let train = curve(&[6.0, 3.0, 2.5, 4.5, 6.0], 10.0);
        let val = curve(&[6.2, 3.0, 5.5], 20.0);
        assert_eq!(diagnose(&train, &val).unwrap().verdict, Verdict::Unstable);

        // Validation far above where it started, training still falling: over-fitting, not instability.
        let train = curve(&[3.7, 3.0, 2.0, 1.0, 0.5, 0.3], 10.0);
        let val = curve(&[3.7, 3.3, 3.6, 4.5, 5.2], 12.5);
        assert_eq!(diagnose(&train, &val).unwrap().verdict, Verdict::OverFitting { best_step: 12.5 });

        // Three evaluations, the last clearly lower: still falling (the part compared is at least one interval).
        let val = curve(&[3.67, 3.18, 3.01], 5.0);
        assert_eq!(diagnose(&curve(&[3.5, 3.0], 5.0), &val).unwrap().verdict, Verdict::UnderFitting);
        let val = curve(&[6.2, 3.0, f64::NAN], 20.0);
        assert_eq!(diagnose(&curve(&[6.0, 3.0], 10.0), &val).unwrap().verdict, Verdict::Unstable);

        // A training loss that never moved: under-fitting too.
        let flat = curve(&[3.70, 3.69, 3.69, 3.68], 10.0);
        let d = diagnose(&flat, &curve(&[3.71, 3.70, 3.70], 15.0)).unwrap();
        assert_eq!(d.verdict, Verdict::UnderFitting);
        assert!(d.evidence.contains("hardly moved"), "{}", d.evidence);

        // Too few evaluations to read anything.
        assert_eq!(diagnose(&train, &val[..2]), None);
    }

    #[test]
    fn a_small_fall_near_zero_is_not_under_fitting() {
        // 0.037 → 0.035 is 5% but 0.002 nats: flat, as far as learning goes.
        let train = curve(&[3.0, 0.5, 0.1, 0.05, 0.04, 0.035], 10.0);
        let val = curve(&[3.5, 0.3, 0.06, 0.04, 0.037, 0.035], 10.0);
        assert_eq!(diagnose(&train, &val).unwrap().verdict, Verdict::WellFit);
    }

    #[test]
    fn one_noisy_evaluation_is_not_over_fitting() {
        let train = curve(&[6.0, 4.0, 3.0, 2.6, 2.5, 2.45, 2.44, 2.43], 10.0);
        let val = curve(&[6.2, 3.2, 2.61, 2.66, 2.60], 20.0); // up once, back down
        assert_ne!(diagnose(&train, &val).unwrap().verdict, Verdict::OverFitting { best_step: 60.0 });
    }
}
