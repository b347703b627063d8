//! `metrics.jsonl`: every training and validation event, one JSON object per
//! line, so any tool (or a notebook) can read a run's history.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Optimizer steps completed.
    pub step: usize,
    /// Fractional epoch: 1.5 = halfway through the second pass.
    pub epoch: f64,
    /// `"train"` or `"val"`.
    pub split: String,
    pub loss: f64,
    pub lr: f64,
    /// Global gradient norm before clipping (training events).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub grad_norm: Option<f64>,
    /// Training tokens processed so far.
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
    /// Stage-specific numbers, e.g. `answer_accuracy`, flattened into the object.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

pub struct MetricsLog {
    path: PathBuf,
    /// None: kept in memory only (the data-parallel workers that do not write).
    file: Option<File>,
    pub events: Vec<Event>,
}

impl MetricsLog {
    /// Opens `<out>/metrics.jsonl`. When resuming from step `keep_until`, the
    /// events after it (written before a crash, and about to be redone) are
    /// dropped; a fresh run starts an empty file.
    pub fn open(out: &Path, keep_until: Option<usize>) -> Result<Self> {
        let path = out.join("metrics.jsonl");
        let mut events = Vec::new();
        if let (Some(step), Ok(file)) = (keep_until, File::open(&path)) {
            for line in BufReader::new(file).lines() {
                if let Ok(event) = serde_json::from_str::<Event>(&line?)
                    && event.step <= step
                {
                    events.push(event);
                }
            }
        }
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        for event in &events {
            writeln!(file, "{}", serde_json::to_string(event)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(Self { path, file: Some(file), events })
    }

    /// A log that writes nothing: the events are only kept here.
    pub fn in_memory() -> Self {
        Self { path: PathBuf::new(), file: None, events: Vec::new() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event (flushed at once: a crash loses nothing logged).
    pub fn log(&mut self, event: Event) -> Result<()> {
        if let Some(file) = &mut self.file {
            let line = serde_json::to_string(&event)?;
            writeln!(file, "{line}")
                .and_then(|_| file.flush())
                .with_context(|| format!("cannot write {}", self.path.display()))?;
        }
        self.events.push(event);
        Ok(())
    }

    /// (step, loss) points of one split, for plotting.
    pub fn curve(&self, split: &str) -> Vec<(f64, f64)> {
        self.events.iter().filter(|e| e.split == split).map(|e| (e.step as f64, e.loss)).collect()
    }

    /// The first and the last event of one split (`"train"` or `"val"`), for
    /// "before → after" summaries; None if the split has no event.
    pub fn first_and_last(&self, split: &str) -> Option<(&Event, &Event)> {
        let mut events = self.events.iter().filter(|e| e.split == split);
        let first = events.next()?;
        Some((first, events.next_back().unwrap_or(first)))
    }

    /// The task metrics measured at evaluations that are shares in [0, 1]
    /// (see [`is_share`]), each as (name, [(step, value)]), in the order they
    /// were first logged: the performance learning curves.
    pub fn share_curves(&self) -> Vec<(String, Vec<(f64, f64)>)> {
        let mut curves: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for event in self.events.iter().filter(|e| e.split == "val") {
            for (key, value) in event.extra.iter().filter(|(k, _)| is_share(k)) {
                let Some(value) = value.as_f64() else { continue };
                let point = (event.step as f64, value);
                match curves.iter_mut().find(|(name, _)| name == key) {
                    Some((_, points)) => points.push(point),
                    None => curves.push((key.clone(), vec![point])),
                }
            }
        }
        curves
    }
}

/// Metric names that are shares of a set in [0, 1] (accuracies, the share of
/// well-formed replies, of looping ones, distinct-2), drawn on one 0–100% axis;
/// margins and rewards are not.
pub fn is_share(name: &str) -> bool {
    name.ends_with("accuracy") || matches!(name, "well_formed" | "looping" | "distinct_2")
}
