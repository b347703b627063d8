//! Supervised fine-tuning data: conversations → ids, loss masks, padded batches.
//!
//! Two line formats are read:
//! - MiniMind's `{"conversations": [{"role": "user", "content": "..."}, ...]}`
//! - Alpaca's `{"instruction": "...", "input": "...", "output": "..."}`
//!
//! An optional `"answer"` field (evaluation sets) holds the short string a
//! correct reply must contain.

use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::chat::{Message, Role, tokenize_conversation, validate_conversation};
use crate::tokenizer::{PAD, Tokenizer};
use crate::util::without_bom;

#[derive(Debug, Clone, PartialEq)]
pub struct SftExample {
    pub messages: Vec<Message>,
    /// Ids of the rendered conversation, at most max_seq_len + 1 long.
    pub ids: Vec<u32>,
    /// Per id: is the model trained to produce it?
    pub supervised: Vec<bool>,
    /// Expected short answer (evaluation sets only).
    pub answer: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SftDataset {
    pub examples: Vec<SftExample>,
    /// Conversations dropped because truncation left no supervised token.
    pub dropped_truncated: usize,
    /// Bad lines skipped (with `skip_bad_lines`).
    pub skipped_bad: usize,
}

/// One line → messages and optional answer, or a message saying what is wrong.
pub fn parse_line(line: &str) -> std::result::Result<(Vec<Message>, Option<String>), String> {
    let value: Value = serde_json::from_str(without_bom(line)).map_err(|e| format!("not valid JSON ({e})"))?;
    let answer = match value.get("answer") {
        None | Some(Value::Null) => None,
        Some(Value::String(answer)) if !answer.trim().is_empty() => Some(answer.clone()),
        Some(other) => return Err(format!("\"answer\" must be a non-empty string, got {other}")),
    };
    let messages = if let Some(turns) = value.get("conversations") {
        let turns = turns.as_array().ok_or("\"conversations\" must be an array")?;
        turns.iter().enumerate().map(|(i, t)| parse_turn(i, t)).collect::<std::result::Result<Vec<_>, _>>()?
    } else if let (Some(instruction), Some(output)) =
        (value.get("instruction").and_then(Value::as_str), value.get("output").and_then(Value::as_str))
    {
        // Alpaca: the optional input (context) follows the instruction.
        let input = value.get("input").and_then(Value::as_str).unwrap_or("");
        let user = if input.is_empty() { instruction.to_string() } else { format!("{instruction}\n\n{input}") };
        vec![Message::new(Role::User, user), Message::new(Role::Assistant, output)]
    } else {
        return Err("expected {\"conversations\": [...]} or {\"instruction\", \"input\", \"output\"}".into());
    };
    validate_conversation(&messages)?;
    Ok((messages, answer))
}

fn parse_turn(i: usize, turn: &Value) -> std::result::Result<Message, String> {
    let role = turn.get("role").and_then(Value::as_str).ok_or(format!("turn {} has no \"role\"", i + 1))?;
    let role = match role {
        "system" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        other => return Err(format!("turn {} has unknown role `{other}` (expected system, user or assistant)", i + 1)),
    };
    let content =
        turn.get("content").and_then(Value::as_str).ok_or(format!("turn {} has no string \"content\"", i + 1))?;
    Ok(Message::new(role, content))
}

impl SftDataset {
    /// Reads and tokenizes a JSONL file. Conversations longer than
    /// `max_seq_len + 1` tokens are cut at the end; if that leaves nothing to
    /// learn, the conversation is dropped (and counted).
    pub fn load(path: &Path, tokenizer: &Tokenizer, max_seq_len: usize, skip_bad_lines: bool) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut data = Self { examples: Vec::new(), dropped_truncated: 0, skipped_bad: 0 };
        for (i, line) in BufReader::new(file).lines().enumerate() {
            let line = line.with_context(|| format!("{}:{}: not valid UTF-8", path.display(), i + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            let (messages, answer) = match parse_line(&line) {
                Ok(parsed) => parsed,
                Err(_) if skip_bad_lines => {
                    data.skipped_bad += 1;
                    continue;
                }
                Err(msg) => bail!("{}:{}: {msg} (pass --skip-bad-lines to skip such lines)", path.display(), i + 1),
            };
            let (mut ids, mut supervised) = tokenize_conversation(tokenizer, &messages);
            ids.truncate(max_seq_len + 1);
            supervised.truncate(max_seq_len + 1);
            // Position 0 is never a target, so it does not count.
            if !supervised[1..].iter().any(|&s| s) {
                data.dropped_truncated += 1;
                continue;
            }
            data.examples.push(SftExample { messages, ids, supervised, answer });
        }
        if data.examples.is_empty() {
            bail!("{} holds no usable conversation", path.display());
        }
        Ok(data)
    }
}

/// A padded batch: row-major `[batch, seq]`, `seq` = the longest example's
/// length - 1 (not the maximum length: short batches stay cheap).
#[derive(Debug, Clone, PartialEq)]
pub struct SftBatch {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    /// 1.0 where the target is supervised, 0.0 for prompt and padding.
    pub mask: Vec<f32>,
    pub batch_size: usize,
    pub seq_len: usize,
}

/// Pads examples to the batch's longest with the pad id; padding is never supervised.
pub fn collate(examples: &[&SftExample], pad_id: u32) -> SftBatch {
    let seq_len = examples.iter().map(|e| e.ids.len() - 1).max().unwrap_or(0);
    let mut batch =
        SftBatch { inputs: Vec::new(), targets: Vec::new(), mask: Vec::new(), batch_size: examples.len(), seq_len };
    for e in examples {
        let n = e.ids.len() - 1;
        batch.inputs.extend(&e.ids[..n]);
        batch.targets.extend(&e.ids[1..]);
        // The mask sits on the *target*: learn to predict token t+1 when it is the assistant's.
        batch.mask.extend(e.supervised[1..].iter().map(|&s| if s { 1.0 } else { 0.0 }));
        let pad = seq_len - n;
        batch.inputs.extend(std::iter::repeat_n(pad_id, pad));
        batch.targets.extend(std::iter::repeat_n(pad_id, pad));
        batch.mask.extend(std::iter::repeat_n(0.0, pad));
    }
    batch
}

/// The pad id of a chat tokenizer.
pub fn pad_id(tokenizer: &Tokenizer) -> u32 {
    tokenizer.token_id(PAD).expect("checked by chat::check_chat_tokens")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        let docs = ["What is 7 plus 5? 7 plus 5 is 12.", "Be brief. Hello there."];
        Tokenizer::train(docs.iter().cycle().take(40).map(|s| s.to_string()), 300).unwrap()
    }

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("minigpt-sft-{name}-{}.jsonl", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn reads_both_formats_and_names_bad_lines() {
        let (m, a) =
            parse_line(r#"{"instruction": "Add.", "input": "7 and 5", "output": "12", "answer": "12"}"#).unwrap();
        assert_eq!(m, vec![Message::new(Role::User, "Add.\n\n7 and 5"), Message::new(Role::Assistant, "12")]);
        assert_eq!(a.as_deref(), Some("12"));
        let err = parse_line(r#"{"conversations": [{"role": "bot", "content": "hi"}]}"#).unwrap_err();
        assert!(err.contains("unknown role `bot`"), "{err}");
        let err = parse_line(r#"{"conversations": [{"role": "user", "content": "hi"}]}"#).unwrap_err();
        assert!(err.contains("no assistant turn"), "{err}");
        assert!(parse_line("{oops").unwrap_err().contains("not valid JSON"));

        let tok = tokenizer();
        let good = r#"{"conversations": [{"role": "user", "content": "What is 7 plus 5?"}, {"role": "assistant", "content": "7 plus 5 is 12."}]}"#;
        let path = write("bad", &format!("{good}\n\n{{\"conversations\": 3}}\n{good}\n"));
        let err = SftDataset::load(&path, &tok, 64, false).unwrap_err().to_string();
        assert!(
            err.ends_with(&format!(
                "{}:3: \"conversations\" must be an array (pass --skip-bad-lines to skip such lines)",
                path.display()
            )),
            "{err}"
        );
        let data = SftDataset::load(&path, &tok, 64, true).unwrap();
        assert_eq!((data.examples.len(), data.skipped_bad), (2, 1));
        std::fs::remove_file(path).ok();
    }

    /// A byte-order mark before the first line is not an error; an
    /// `"answer"` that is not a string is one, not a question scored as wrong.
    #[test]
    fn a_bom_is_ignored_and_an_answer_must_be_a_string() {
        let tok = tokenizer();
        let turns = r#""conversations": [{"role": "user", "content": "What is 7 plus 5?"}, {"role": "assistant", "content": "12."}]"#;
        let path = write("bom", &format!("\u{feff}{{{turns}, \"answer\": \"12\"}}\n"));
        let data = SftDataset::load(&path, &tok, 64, false).unwrap();
        assert_eq!(data.examples[0].answer.as_deref(), Some("12"));
        std::fs::write(&path, format!("{{{turns}, \"answer\": 12}}\n")).unwrap();
        let err = SftDataset::load(&path, &tok, 64, false).unwrap_err().to_string();
        assert!(err.contains(":1: \"answer\" must be a non-empty string, got 12"), "{err}");
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn truncation_drops_examples_left_without_an_answer() {
        let tok = tokenizer();
        let line = r#"{"conversations": [{"role": "system", "content": "Be brief. Be brief. Be brief. Be brief."}, {"role": "user", "content": "What is 7 plus 5?"}, {"role": "assistant", "content": "12"}]}"#;
        let path = write("trunc", line);
        let full = SftDataset::load(&path, &tok, 512, false).unwrap();
        let n = full.examples[0].ids.len();
        // Cut just after the first answer token: still one supervised target.
        let first_answer = full.examples[0].supervised.iter().position(|&s| s).unwrap();
        let kept = SftDataset::load(&path, &tok, first_answer, false).unwrap();
        assert_eq!(kept.examples[0].ids.len(), first_answer + 1);
        assert!(first_answer < n - 1);
        // Cut before it: nothing left to learn, so the file has no usable line.
        let err = SftDataset::load(&path, &tok, first_answer - 1, false).unwrap_err().to_string();
        assert!(err.contains("no usable conversation"), "{err}");
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn collate_pads_to_the_longest_and_masks_padding() {
        let long = SftExample {
            messages: vec![],
            ids: vec![1, 2, 3, 4, 5],
            supervised: vec![false, false, true, true, false],
            answer: None,
        };
        let short =
            SftExample { messages: vec![], ids: vec![6, 7, 8], supervised: vec![false, true, true], answer: None };
        let b = collate(&[&long, &short], 0);
        assert_eq!((b.batch_size, b.seq_len), (2, 4));
        assert_eq!(b.inputs, [1, 2, 3, 4, 6, 7, 0, 0]);
        assert_eq!(b.targets, [2, 3, 4, 5, 7, 8, 0, 0]);
        assert_eq!(b.mask, [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
    }
}
