//! Fact completions: `{"prompt": "The mayor of Varnel is", "answer": "Mira"}`
//! per line. A pretrained model that stored the fact continues the prompt
//! with the answer; `facts_eval.jsonl` asks this of the held-out towns and
//! people, whose facts only the pretraining text holds.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::util::without_bom;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FactPrompt {
    /// The statement up to the fact, e.g. "The mayor of Varnel is".
    pub prompt: String,
    /// What must follow, e.g. "Mira".
    pub answer: String,
}

/// Reads a JSONL file of fact completions, naming the line of any error.
pub fn load_facts(path: &Path) -> Result<Vec<FactPrompt>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut facts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = if i == 0 { without_bom(line) } else { line };
        if line.trim().is_empty() {
            continue;
        }
        let fact: FactPrompt = serde_json::from_str(line).with_context(|| {
            format!("{}:{}: expected {{\"prompt\": \"...\", \"answer\": \"...\"}}", path.display(), i + 1)
        })?;
        if fact.prompt.trim().is_empty() || fact.answer.trim().is_empty() {
            bail!("{}:{}: the prompt and the answer must not be empty", path.display(), i + 1);
        }
        facts.push(fact);
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_completions_and_names_a_bad_line() {
        let path = std::env::temp_dir().join(format!("minigpt-facts-{}.jsonl", std::process::id()));
        std::fs::write(&path, "{\"prompt\": \"The mayor of Varnel is\", \"answer\": \"Mira\"}\n\n{\"prompt\": 3}\n")
            .unwrap();
        let err = format!("{:#}", load_facts(&path).unwrap_err());
        assert!(err.contains(":3: expected"), "{err}");
        std::fs::write(&path, "{\"prompt\": \"瓦奈尔的镇长是\", \"answer\": \"米拉\"}\n").unwrap();
        assert_eq!(load_facts(&path).unwrap()[0].answer, "米拉");
        std::fs::remove_file(path).ok();
    }
}
