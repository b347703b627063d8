//! Supervised fine-tuning as a `Task`: masked loss on padded conversations,
//! and answer accuracy on held-out questions. The LoRA stage runs this task
//! too, on a model whose base weights are frozen.

use burn::tensor::{Tensor, TensorData};
use data::Tokenizer;
use data::sft::{SftBatch, SftDataset, SftExample, collate};
use kernels::Backend;
use model::Gpt;
use model::gpt::int_tensor;
use model::loss::masked_cross_entropy;

use crate::task::Task;
use crate::tasks::eval::{answer_accuracy, score_replies};

pub struct SftTask {
    pub train: SftDataset,
    pub val: SftDataset,
    /// Held-out questions with expected answers, scored by generation and
    /// logged as `answer_accuracy` (and `well_formed`, see `eval.rs`).
    pub questions: Vec<SftExample>,
    /// Trained facts asked in unseen words, logged as `paraphrase_accuracy`.
    pub paraphrases: Vec<SftExample>,
    /// Questions of a new skill (LoRA's task), logged as `task_accuracy`.
    pub task_questions: Vec<SftExample>,
    pub tokenizer: Tokenizer,
    pub pad_id: u32,
    /// Longest answer generated when scoring.
    pub max_answer_tokens: usize,
}

impl SftTask {
    fn batch(&self, set: &SftDataset, indices: &[usize]) -> SftBatch {
        let examples: Vec<&SftExample> = indices.iter().map(|&i| &set.examples[i]).collect();
        collate(&examples, self.pad_id)
    }
}

/// Mean masked cross-entropy of a padded batch: only supervised targets count.
pub fn sft_loss<B: Backend>(model: &Gpt<B>, batch: &SftBatch, device: &B::Device) -> Tensor<B, 1> {
    let [b, t] = [batch.batch_size, batch.seq_len];
    let inputs = int_tensor::<B>(&batch.inputs, b, t, device);
    let targets = int_tensor::<B>(&batch.targets, b, t, device).reshape([b * t]);
    let mask = Tensor::<B, 1>::from_data(TensorData::new(batch.mask.clone(), [b * t]), device);
    masked_cross_entropy(model.forward(inputs, None), targets, mask) // logits [b·t, vocab]
}

impl Task for SftTask {
    type Batch = SftBatch;

    fn train_len(&self) -> usize {
        self.train.examples.len()
    }
    fn train_batch(&self, indices: &[usize]) -> SftBatch {
        self.batch(&self.train, indices)
    }
    fn val_len(&self) -> usize {
        self.val.examples.len()
    }
    fn val_batch(&self, indices: &[usize]) -> SftBatch {
        self.batch(&self.val, indices)
    }
    fn tokens(&self, batch: &SftBatch) -> usize {
        batch.inputs.len()
    }
    fn loss<B: Backend>(&self, model: &Gpt<B>, batch: &SftBatch, device: &B::Device) -> Tensor<B, 1> {
        sft_loss(model, batch, device)
    }
    fn evaluate<B: Backend>(&self, model: &Gpt<B>, _device: &B::Device) -> Vec<(String, f64)> {
        let (tokenizer, max) = (&self.tokenizer, self.max_answer_tokens);
        let mut out = Vec::new();
        if !self.task_questions.is_empty() {
            out.push(("task_accuracy".into(), answer_accuracy(model, tokenizer, &self.task_questions, max)));
        }
        if !self.questions.is_empty() {
            let scores = score_replies(model, tokenizer, &self.questions, max);
            out.push(("answer_accuracy".into(), scores.accuracy));
            out.push(("well_formed".into(), scores.well_formed));
        }
        if !self.paraphrases.is_empty() {
            out.push(("paraphrase_accuracy".into(), answer_accuracy(model, tokenizer, &self.paraphrases, max)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use burn::module::AutodiffModule;
    use data::chat::{Message, Role, tokenize_conversation};
    use kernels::{Cpu, CpuTrain};
    use model::GptConfig;

    use super::*;
    use crate::TrainArgs;
    use crate::tasks::eval::reply;

    fn example(tok: &Tokenizer, q: &str, a: &str) -> SftExample {
        let messages = vec![Message::new(Role::User, q), Message::new(Role::Assistant, a)];
        let (ids, supervised) = tokenize_conversation(tok, &messages);
        SftExample {
            messages,
            ids,
            supervised,
            answer: Some(a.split(' ').next_back().unwrap().trim_end_matches('.').to_string()),
        }
    }

    #[test]
    fn sft_on_a_handful_of_conversations_drives_their_loss_near_zero() {
        let qa = [
            ("What is 2 plus 3?", "2 plus 3 is 5."),
            ("Where does Mira live?", "Mira lives in Osk."),
            ("What river is Varnel beside?", "Varnel is beside the Tesk."),
            ("How old is Toma?", "Toma is 41."),
        ];
        let corpus: Vec<String> = qa.iter().flat_map(|(q, a)| [q.to_string(), a.to_string()]).collect();
        let tok = Tokenizer::train(corpus.iter().cycle().take(80).cloned(), 300).unwrap();
        let examples: Vec<SftExample> = qa.iter().map(|(q, a)| example(&tok, q, a)).collect();
        let set = SftDataset { examples: examples.clone(), dropped_truncated: 0, skipped_bad: 0 };
        let pad = tok.token_id(data::tokenizer::PAD).unwrap();
        let task = SftTask {
            train: set.clone(),
            val: set,
            questions: examples,
            paraphrases: Vec::new(),
            task_questions: Vec::new(),
            tokenizer: tok.clone(),
            pad_id: pad,
            max_answer_tokens: 12,
        };

        let out = std::env::temp_dir().join(format!("minigpt-sft-run-{}", std::process::id()));
        std::fs::remove_dir_all(&out).ok();
        let flags = [
            "--out",
            out.to_str().unwrap(),
            "--batch-size",
            "4",
            "--max-steps",
            "150",
            "--lr",
            "3e-3",
            "--warmup-steps",
            "5",
            "--eval-interval",
            "150",
            "--weight-decay",
            "0",
        ];
        let args = TrainArgs::from_flags(&flags);
        let cfg = GptConfig::tiny(tok.vocab_size())
            .with_d_model(64)
            .with_n_layers(2)
            .with_context_length(64)
            .with_dropout(0.0);
        let model = Gpt::<CpuTrain>::new(&cfg, &Default::default());
        let outcome =
            crate::train(model, &task, &args, &Default::default(), Arc::new(AtomicBool::new(false)), "t").unwrap();

        let val = outcome.log.curve("val");
        assert!(val[0].1 > 4.0, "starts near ln(vocab): {:?}", val);
        assert!(val.last().unwrap().1 < 0.1, "masked loss should approach zero: {:?}", val);
        let acc = |i: usize| {
            outcome.log.events.iter().filter(|e| e.split == "val").nth(i).unwrap().extra["answer_accuracy"]
                .as_f64()
                .unwrap()
        };
        assert_eq!(acc(0), 0.0);
        assert_eq!(acc(1), 1.0, "every memorised answer is reproduced by greedy decoding");
        let valid = outcome.model.valid();
        assert_eq!(reply(&valid, &tok, &task.questions[1].messages[..1], 12), "Mira lives in Osk.");
        std::fs::remove_dir_all(out).ok();
    }

    #[test]
    fn padding_never_changes_the_loss() {
        let tok = Tokenizer::train(["What is 2 plus 3? 2 plus 3 is 5.".to_string()].into_iter().cycle().take(20), 280)
            .unwrap();
        let short = example(&tok, "What is 2?", "2.");
        let long = example(&tok, "What is 2 plus 3 plus 3?", "2 plus 3 plus 3 is 8.");
        let model = Gpt::<Cpu>::new(&GptConfig::tiny(tok.vocab_size()).with_context_length(64), &Default::default());
        let device = Default::default();
        let pad = tok.token_id(data::tokenizer::PAD).unwrap();
        // `short` is padded to `long`'s length. Whatever token fills the pad
        // positions, the loss is the same: they are masked, and being last
        // they cannot influence earlier positions through attention.
        let padded = collate(&[&short, &long], pad);
        let mut other_pad = padded.clone();
        for j in short.ids.len() - 1..padded.seq_len {
            other_pad.inputs[j] = 7;
            other_pad.targets[j] = 9;
        }
        assert_ne!(padded.inputs, other_pad.inputs);
        let a: f32 = sft_loss(&model, &padded, &device).into_scalar();
        let b: f32 = sft_loss(&model, &other_pad, &device).into_scalar();
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
}
