//! Scoring a model by what it writes, greedily (always the likeliest token,
//! so the numbers are reproducible):
//! - after pretraining, whether it completes a fact ("The mayor of Varnel
//!   is" → the name): what it has stored;
//! - after fine-tuning, whether its reply to a question contains the
//!   expected answer, and whether the reply is well formed (it ends its turn,
//!   in the question's language);
//! - and whether its replies have degenerated into loops (DPO's failure).

use data::Tokenizer;
use data::chat::{Message, prompt_ids};
use data::facts::FactPrompt;
use data::sft::SftExample;
use data::tokenizer::IM_END;
use data::util::SplitMix64;
use kernels::Backend;
use model::{GenerateOptions, Gpt, Sampling, generate};

/// A greedy reply, and whether it ended its turn before `max_tokens`.
pub struct Reply {
    pub text: String,
    pub ended: bool,
}

/// The greedy reply of `model` to a conversation's prompt (all turns but the
/// last assistant one), stopping at `<|im_end|>`.
pub fn reply_to<B: Backend>(model: &Gpt<B>, tokenizer: &Tokenizer, history: &[Message], max_tokens: usize) -> Reply {
    sampled_reply(model, tokenizer, history, max_tokens, None)
}

/// A reply drawn at `temperature` from the model's whole distribution, with
/// its own seeded random stream: what a user sees at that temperature, where
/// greedy decoding shows only the likeliest reply. `(temperature, seed)`;
/// None = greedy.
pub fn sampled_reply<B: Backend>(
    model: &Gpt<B>,
    tokenizer: &Tokenizer,
    history: &[Message],
    max_tokens: usize,
    sampling: Option<(f64, u64)>,
) -> Reply {
    let mut prompt = prompt_ids(tokenizer, history);
    // Keep the end of an over-long prompt: the question is there.
    let room = model.context_length().saturating_sub(max_tokens).max(1);
    if prompt.len() > room {
        prompt.drain(..prompt.len() - room);
    }
    let im_end = tokenizer.token_id(IM_END);
    let mut options = GenerateOptions::greedy(max_tokens, im_end);
    let mut rng = SplitMix64(sampling.map_or(0, |(_, seed)| seed));
    if let Some((temperature, _)) = sampling {
        options.sampling = Sampling { temperature, ..Sampling::greedy() };
    }
    let mut ids = generate(model, &prompt, &options, &mut || rng.next_f64(), &mut |_| true);
    let ended = ids.last().copied() == im_end && im_end.is_some();
    if ended {
        ids.pop();
    }
    Reply { text: tokenizer.decode(&ids), ended }
}

/// The greedy reply's text (see [`reply_to`]).
pub fn reply<B: Backend>(model: &Gpt<B>, tokenizer: &Tokenizer, history: &[Message], max_tokens: usize) -> String {
    reply_to(model, tokenizer, history, max_tokens).text
}

/// What the replies to a set of questions scored, each a share in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplyScores {
    /// The reply contains the expected answer.
    pub accuracy: f64,
    /// The reply ended its turn (`<|im_end|>`) and is in the question's
    /// language: Chinese characters for a Chinese question, none for an English one.
    pub well_formed: f64,
    /// The replies caught in a loop, and their distinct-2 (see [`repetition`]).
    pub looping: f64,
    pub distinct_2: f64,
}

/// Greedy replies to `questions` (the last turn of each is the expected
/// reply, its `answer` the string a right one contains), scored.
pub fn score_replies<B: Backend>(
    model: &Gpt<B>,
    tokenizer: &Tokenizer,
    questions: &[SftExample],
    max_tokens: usize,
) -> ReplyScores {
    let (mut correct, mut well_formed, mut replies) = (0, 0, Vec::new());
    for q in questions {
        let answer = q.answer.as_deref().expect("evaluation questions carry an answer");
        let history = &q.messages[..q.messages.len() - 1];
        let reply = reply_to(model, tokenizer, history, max_tokens);
        correct += usize::from(reply.text.contains(answer));
        let asked = history.last().map_or("", |m| m.content.as_str());
        well_formed += usize::from(reply.ended && is_chinese(asked) == is_chinese(&reply.text));
        replies.push(reply.text);
    }
    let n = questions.len().max(1) as f64;
    let (looping, distinct_2) = repetition(&replies);
    ReplyScores { accuracy: correct as f64 / n, well_formed: well_formed as f64 / n, looping, distinct_2 }
}

/// Share of questions whose greedy reply contains the expected answer.
pub fn answer_accuracy<B: Backend>(
    model: &Gpt<B>,
    tokenizer: &Tokenizer,
    questions: &[SftExample],
    max_tokens: usize,
) -> f64 {
    score_replies(model, tokenizer, questions, max_tokens).accuracy
}

fn is_chinese(text: &str) -> bool {
    text.chars().any(is_han)
}

/// A CJK unified ideograph: a Chinese character.
fn is_han(c: char) -> bool {
    ('\u{4e00}'..='\u{9fff}').contains(&c)
}

/// Share of fact prompts whose greedy continuation, up to its first
/// sentence end, contains the answer: what pretraining stored.
pub fn fact_accuracy<B: Backend>(model: &Gpt<B>, tokenizer: &Tokenizer, facts: &[FactPrompt]) -> f64 {
    let correct = facts
        .iter()
        .filter(|fact| {
            let prompt = tokenizer.encode(&fact.prompt);
            let options = GenerateOptions::greedy(8, Some(tokenizer.eot_id)); // longer than any answer
            let ids = generate(model, &prompt, &options, &mut || 0.0, &mut |_| true);
            let text = tokenizer.decode(&ids);
            let sentence = text.split(['.', '。']).next().unwrap_or("");
            sentence.contains(&fact.answer)
        })
        .count();
    correct as f64 / facts.len().max(1) as f64
}

/// How repetitive a set of replies is: the share caught in a loop (the
/// same two words three times in a row, as in "plus plus plus" or "the
/// town the town the town"), and distinct-2, the share of all word pairs
/// that are different from each other (1 = no pair repeats).
pub fn repetition(replies: &[String]) -> (f64, f64) {
    let (mut looping, mut pairs, mut distinct) = (0, 0, std::collections::HashSet::new());
    for reply in replies {
        let words = units(reply);
        let bigrams: Vec<(&str, &str)> = words.windows(2).map(|w| (w[0], w[1])).collect();
        pairs += bigrams.len();
        distinct.extend(bigrams.iter().copied());
        looping += usize::from(has_loop(&words));
    }
    (looping as f64 / replies.len().max(1) as f64, distinct.len() as f64 / pairs.max(1) as f64)
}

/// Words, and each Chinese character as a word of its own.
fn units(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for word in text.split_whitespace() {
        let mut start = 0;
        for (i, c) in word.char_indices() {
            if is_han(c) {
                if start < i {
                    out.push(&word[start..i]);
                }
                out.push(&word[i..i + c.len_utf8()]);
                start = i + c.len_utf8();
            }
        }
        if start < word.len() {
            out.push(&word[start..]);
        }
    }
    out
}

/// A word, or a pair of words, said three times in a row.
fn has_loop(words: &[&str]) -> bool {
    let repeated = |n: usize| words.windows(3 * n).any(|w| w[..n] == w[n..2 * n] && w[n..2 * n] == w[2 * n..]);
    repeated(1) || repeated(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_and_distinct_pairs_are_counted() {
        let fine = "The age of Mira is 49.".to_string();
        let stuck = "The plus plus plus plus 0 is 8.".to_string();
        let pairs = "the town the town the town".to_string();
        assert_eq!(repetition(std::slice::from_ref(&fine)), (0.0, 1.0));
        let (looping, distinct) = repetition(&[fine.clone(), stuck.clone(), pairs]);
        assert!((looping - 2.0 / 3.0).abs() < 1e-12, "{looping}");
        assert!(distinct < 0.8, "{distinct}");
        // Chinese characters count as words: 加加加 is a loop.
        assert_eq!(repetition(&["三加加加四等于七。".to_string()]).0, 1.0);
        assert_eq!(repetition(&["三加四等于七。".to_string()]).0, 0.0);
    }
}
