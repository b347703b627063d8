//! `report.md`: what a run's curves say, written at its end beside the
//! pictures. The diagnosis (`diagnosis.rs`) with the numbers it was read
//! from and its advice, every measured metric from the first evaluation to
//! the last, and which weights `best/` holds.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use data::util::write_atomic;

use crate::diagnosis::{Diagnosis, diagnose};
use crate::metrics::{Event, MetricsLog};

/// Writes `<out>/report.md` for the run logged in `log`; `best` is the
/// (step, validation loss) that `best/` holds. Returns the diagnosis (None:
/// fewer than three evaluations, too few to read a curve from).
pub fn write_report(
    out: &Path,
    title: &str,
    log: &MetricsLog,
    best: Option<(usize, f64)>,
) -> Result<Option<Diagnosis>> {
    let diagnosis = diagnose(&log.curve("train"), &log.curve("val"));
    write_atomic(&out.join("report.md"), report_text(title, log, best, diagnosis.as_ref()).as_bytes())?;
    Ok(diagnosis)
}

fn report_text(title: &str, log: &MetricsLog, best: Option<(usize, f64)>, diagnosis: Option<&Diagnosis>) -> String {
    let mut md = String::new();
    // Writing into a String cannot fail.
    let _ = writeln!(md, "# Run report: {title}\n");
    let _ = writeln!(md, "![learning curves: loss on the left, task metrics on the right](loss.png)\n");
    match diagnosis {
        Some(d) => {
            let _ = writeln!(md, "## Diagnosis: {}\n\n{}.\n\n**What to do:** {}.\n", d.name(), d.evidence, d.advice);
        }
        None => {
            let _ = writeln!(md, "## Diagnosis\n\nToo few evaluations to read the curves: lower `--eval-interval`.\n");
        }
    }
    if let Some((step, loss)) = best {
        let _ = writeln!(md, "`best/` holds the weights of step {step}, the lowest validation loss ({loss:.4}).\n");
    }
    let Some((first, last)) = log.first_and_last("val") else { return md };
    let _ = writeln!(md, "## From the first evaluation to the last\n");
    let _ = writeln!(md, "| | step {} | step {} |", first.step, last.step);
    let _ = writeln!(md, "|---|---|---|");
    let _ = writeln!(md, "| validation loss | {:.4} | {:.4} |", first.loss, last.loss);
    if let Some((a, b)) = log.first_and_last("train") {
        let _ = writeln!(
            md,
            "| training loss (mean of each logging interval) | {:.4} (step {}) | {:.4} (step {}) |",
            a.loss, a.step, b.loss, b.step
        );
    }
    for key in last.extra.keys() {
        let value = |e: &Event| e.extra.get(key).and_then(|v| v.as_f64());
        let show = |v: Option<f64>| match v {
            Some(v) if crate::metrics::is_share(key) => format!("{:.1}%", 100.0 * v),
            Some(v) => format!("{v:.4}"),
            None => "–".into(),
        };
        let _ = writeln!(md, "| {} | {} | {} |", key.replace('_', " "), show(value(first)), show(value(last)));
    }
    let _ = writeln!(
        md,
        "\n{} optimizer steps, {} training tokens, {:.0} s of training ({:.0} tokens/s).",
        last.step, last.tokens, last.elapsed_s, last.tokens_per_s
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(split: &str, step: usize, loss: f64, accuracy: Option<f64>) -> Event {
        let mut extra = serde_json::Map::new();
        if let Some(a) = accuracy {
            extra.insert("answer_accuracy".into(), serde_json::json!(a));
        }
        Event {
            step,
            epoch: 0.0,
            split: split.into(),
            loss,
            lr: 1e-3,
            grad_norm: None,
            tokens: step * 100,
            tokens_per_s: 1000.0,
            elapsed_s: step as f64,
            extra,
        }
    }

    #[test]
    fn the_report_names_the_verdict_the_best_step_and_each_metric() {
        let out = std::env::temp_dir().join(format!("minigpt-report-{}", std::process::id()));
        std::fs::create_dir_all(&out).unwrap();
        let mut log = MetricsLog::open(&out, None).unwrap();
        let train = [6.0, 4.0, 3.0, 2.0, 1.2, 0.7, 0.4, 0.2];
        let val = [(6.2, 0.0), (4.2, 0.2), (3.4, 0.5), (3.6, 0.45), (3.9, 0.4)];
        for (i, &loss) in train.iter().enumerate() {
            log.log(event("train", 10 * (i + 1), loss, None)).unwrap();
        }
        for (i, &(loss, acc)) in val.iter().enumerate() {
            log.log(event("val", 20 * i, loss, Some(acc))).unwrap();
        }
        let d = write_report(&out, "SFT", &log, Some((40, 3.4))).unwrap().unwrap();
        assert_eq!(d.name(), "over-fitting");
        let text = std::fs::read_to_string(out.join("report.md")).unwrap();
        assert!(text.contains("## Diagnosis: over-fitting"), "{text}");
        assert!(text.contains("`best/` holds the weights of step 40"), "{text}");
        assert!(text.contains("| answer accuracy | 0.0% | 40.0% |"), "{text}");
        assert!(text.contains("| validation loss | 6.2000 | 3.9000 |"), "{text}");
        std::fs::remove_dir_all(out).ok();
    }
}
