//! Scoring a chat model by what it answers: the greedy reply to a
//! question, and the share of held-out questions whose reply contains the
//! expected answer. SFT, LoRA and DPO all report it.

use data::Tokenizer;
use data::chat::{Message, prompt_ids};
use data::sft::SftExample;
use data::tokenizer::IM_END;
use kernels::Backend;
use model::{GenerateOptions, Gpt, generate};

/// The greedy reply of `model` to a conversation's prompt (all turns but the
/// last assistant one), stopping at `<|im_end|>`.
pub fn reply<B: Backend>(model: &Gpt<B>, tokenizer: &Tokenizer, history: &[Message], max_tokens: usize) -> String {
    let mut prompt = prompt_ids(tokenizer, history);
    // Keep the end of an over-long prompt: the question is there.
    let room = model.context_length().saturating_sub(max_tokens).max(1);
    if prompt.len() > room {
        prompt.drain(..prompt.len() - room);
    }
    let im_end = tokenizer.token_id(IM_END);
    let mut ids = generate(model, &prompt, &GenerateOptions::greedy(max_tokens, im_end), &mut || 0.0, &mut |_| true);
    if ids.last().copied() == im_end {
        ids.pop();
    }
    tokenizer.decode(&ids)
}

/// Share of questions whose greedy reply contains the expected answer.
pub fn answer_accuracy<B: Backend>(
    model: &Gpt<B>,
    tokenizer: &Tokenizer,
    questions: &[SftExample],
    max_tokens: usize,
) -> f64 {
    let correct = questions
        .iter()
        .filter(|q| {
            let answer = q.answer.as_deref().expect("evaluation questions carry an answer");
            let history = &q.messages[..q.messages.len() - 1];
            reply(model, tokenizer, history, max_tokens).contains(answer)
        })
        .count();
    correct as f64 / questions.len().max(1) as f64
}
