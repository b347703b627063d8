//! Preference pairs for DPO: one prompt, a chosen answer and a rejected one.
//!
//! Line formats:
//! - MiniMind's `{"chosen": [turns...], "rejected": [turns...]}`, where both
//!   conversations share every turn but the last assistant answer;
//! - `{"prompt": "...", "chosen": "...", "rejected": "..."}` with plain strings.

use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::chat::{Message, Role, tokenize_conversation, validate_conversation};
use crate::sft::{SftBatch, SftExample, collate};
use crate::tokenizer::Tokenizer;
use crate::util::without_bom;

#[derive(Debug, Clone, PartialEq)]
pub struct DpoPair {
    pub chosen: SftExample,
    pub rejected: SftExample,
}

#[derive(Debug, Clone)]
pub struct DpoDataset {
    pub pairs: Vec<DpoPair>,
    /// Lines skipped (with `skip_bad_lines`): malformed, or longer than the context.
    pub skipped: usize,
}

/// One line → (chosen, rejected) conversations, or what is wrong with it.
pub fn parse_pair(line: &str) -> std::result::Result<(Vec<Message>, Vec<Message>), String> {
    let value: Value = serde_json::from_str(without_bom(line)).map_err(|e| format!("not valid JSON ({e})"))?;
    let side = |name: &str| -> std::result::Result<Vec<Message>, String> {
        match value.get(name) {
            Some(Value::String(answer)) => {
                let prompt = value
                    .get("prompt")
                    .and_then(Value::as_str)
                    .ok_or(format!("\"{name}\" is a string, so a string \"prompt\" is needed"))?;
                Ok(vec![Message::new(Role::User, prompt), Message::new(Role::Assistant, answer.as_str())])
            }
            Some(turns) => {
                let line = serde_json::json!({ "conversations": turns }).to_string();
                crate::sft::parse_line(&line).map(|(m, _)| m).map_err(|e| format!("\"{name}\": {e}"))
            }
            None => Err(format!("missing \"{name}\"")),
        }
    };
    let (chosen, rejected) = (side("chosen")?, side("rejected")?);
    validate_conversation(&chosen).map_err(|e| format!("\"chosen\": {e}"))?;
    validate_conversation(&rejected).map_err(|e| format!("\"rejected\": {e}"))?;
    if chosen[..chosen.len() - 1] != rejected[..rejected.len() - 1] {
        return Err("\"chosen\" and \"rejected\" must share the same prompt (all turns but the last answer)".into());
    }
    Ok((chosen, rejected))
}

impl DpoDataset {
    /// Reads and tokenizes pairs; a pair longer than `max_seq_len + 1` tokens
    /// is an error (cutting it could remove the very tokens that differ).
    pub fn load(path: &Path, tokenizer: &Tokenizer, max_seq_len: usize, skip_bad_lines: bool) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut data = Self { pairs: Vec::new(), skipped: 0 };
        for (i, line) in BufReader::new(file).lines().enumerate() {
            let line = line.with_context(|| format!("{}:{}: not valid UTF-8", path.display(), i + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            let pair = parse_pair(&line).and_then(|(chosen, rejected)| {
                let encode = |messages: Vec<Message>| {
                    let (ids, supervised) = tokenize_conversation(tokenizer, &messages);
                    (ids.len() <= max_seq_len + 1)
                        .then_some(SftExample { messages, ids, supervised, answer: None })
                        .ok_or(format!("longer than --max-seq-len {max_seq_len} tokens"))
                };
                Ok(DpoPair { chosen: encode(chosen)?, rejected: encode(rejected)? })
            });
            match pair {
                Ok(pair) => data.pairs.push(pair),
                Err(_) if skip_bad_lines => data.skipped += 1,
                Err(msg) => bail!("{}:{}: {msg} (pass --skip-bad-lines to skip such lines)", path.display(), i + 1),
            }
        }
        if data.pairs.is_empty() {
            bail!("{} holds no usable preference pair", path.display());
        }
        Ok(data)
    }
}

/// Chosen answers in rows `0..n`, rejected in rows `n..2n`, padded alike, so
/// one forward pass scores both.
pub fn collate_pairs(pairs: &[&DpoPair], pad_id: u32) -> SftBatch {
    let rows: Vec<&SftExample> = pairs.iter().map(|p| &p.chosen).chain(pairs.iter().map(|p| &p.rejected)).collect();
    collate(&rows, pad_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_formats_and_rejects_bad_pairs() {
        let (c, r) = parse_pair(r#"{"prompt": "2+2?", "chosen": "4.", "rejected": "5."}"#).unwrap();
        assert_eq!(c[0], r[0]);
        assert_eq!((c[1].content.as_str(), r[1].content.as_str()), ("4.", "5."));
        let turns = |q: &str, a: &str| {
            format!(r#"[{{"role": "user", "content": "{q}"}}, {{"role": "assistant", "content": "{a}"}}]"#)
        };
        let line = format!(r#"{{"chosen": {}, "rejected": {}}}"#, turns("2+2?", "4."), turns("2+2?", "5."));
        assert!(parse_pair(&line).is_ok());
        let differ = format!(r#"{{"chosen": {}, "rejected": {}}}"#, turns("2+2?", "4."), turns("3+3?", "5."));
        assert!(parse_pair(&differ).unwrap_err().contains("same prompt"));
        assert!(
            parse_pair(&format!(r#"{{"chosen": {}}}"#, turns("a", "b"))).unwrap_err().contains("missing \"rejected\"")
        );
        let empty = format!(r#"{{"chosen": {}, "rejected": {}}}"#, turns("2+2?", "4."), turns("2+2?", " "));
        assert!(parse_pair(&empty).unwrap_err().contains("empty content"));
    }

    #[test]
    fn too_long_pairs_are_an_error_with_file_and_line() {
        let tok =
            Tokenizer::train(["a quick answer, a long answer".to_string()].into_iter().cycle().take(20), 280).unwrap();
        let path = std::env::temp_dir().join(format!("minigpt-dpo-{}.jsonl", std::process::id()));
        std::fs::write(&path, "{\"prompt\": \"q\", \"chosen\": \"a quick answer\", \"rejected\": \"a long answer, a long answer, a long answer\"}\n").unwrap();
        let err = DpoDataset::load(&path, &tok, 8, false).unwrap_err().to_string();
        assert!(err.contains(":1: longer than --max-seq-len 8"), "{err}");
        assert!(DpoDataset::load(&path, &tok, 8, true).err().unwrap().to_string().contains("no usable"));
        let ok = DpoDataset::load(&path, &tok, 100, false).unwrap();
        let batch = collate_pairs(&[&ok.pairs[0]], 0);
        assert_eq!(batch.batch_size, 2);
        std::fs::remove_file(path).ok();
    }
}
