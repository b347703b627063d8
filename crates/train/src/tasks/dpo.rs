//! DPO (direct preference optimisation) as a `Task`: the policy learns
//! from pairs of a preferred and a rejected answer, measured against a
//! frozen reference model, through the loss of [`super::dpo_loss`].
//!
//! The reference lives on the inner (non-autodiff) backend: no graph is ever
//! built for it, so it cannot receive gradients, and its log-probabilities
//! reach the loss as plain numbers. They can be computed once up front
//! (`precompute_reference`: half the forward passes per step) or per batch.

use burn::tensor::{Bool, Tensor, TensorData};
use data::Tokenizer;
use data::dpo::{DpoDataset, DpoPair, collate_pairs};
use data::sft::{SftBatch, SftExample};
use kernels::Backend;
use model::Gpt;
use model::gpt::int_tensor;

use crate::task::Task;
use crate::tasks::dpo_loss::{DpoOutput, chosen_nll, dpo_loss, sequence_log_probs};
use crate::tasks::eval::score_replies;

/// Pairs as one padded batch (chosen rows, then rejected rows) with the
/// reference's log-probabilities of each answer.
pub struct DpoBatch {
    pub rows: SftBatch,
    pub ref_chosen: Vec<f32>,
    pub ref_rejected: Vec<f32>,
    /// Tokens in each chosen answer (for RPO's per-token NLL).
    pub chosen_tokens: Vec<f32>,
}

pub struct DpoTask<R: Backend> {
    pub train: DpoDataset,
    pub val: DpoDataset,
    /// The frozen starting model.
    pub reference: Gpt<R>,
    pub device: R::Device,
    pub beta: f64,
    pub label_smoothing: f64,
    /// Weight of the chosen answers' NLL added to the loss (RPO; 0 = plain DPO).
    pub rpo_alpha: f64,
    pub pad_id: u32,
    /// SFT questions scored at evaluations, to see what preference training cost.
    pub questions: Vec<SftExample>,
    pub tokenizer: Tokenizer,
    pub max_answer_tokens: usize,
    /// The reference's log-probabilities of every pair, once
    /// `precompute_reference` has run (None: the reference scores each batch).
    pub reference_scores: Option<ReferenceScores>,
}

/// (chosen, rejected) log-probabilities under the reference, per pair.
pub struct ReferenceScores {
    pub train: Vec<(f32, f32)>,
    pub val: Vec<(f32, f32)>,
}

/// log π(answer | prompt) of each row of a padded batch → `[rows]`.
pub fn answer_log_probs<B: Backend>(model: &Gpt<B>, rows: &SftBatch, device: &B::Device) -> Tensor<B, 1> {
    let [n, t] = [rows.batch_size, rows.seq_len];
    let inputs = int_tensor::<B>(&rows.inputs, n, t, device);
    let targets = int_tensor::<B>(&rows.targets, n, t, device);
    let mask = Tensor::<B, 2>::from_data(TensorData::new(rows.mask.clone(), [n, t]), device);
    sequence_log_probs(model.forward(inputs, None), targets, mask) // logits [n·t, vocab]
}

impl<R: Backend> DpoTask<R> {
    /// Scores every training and held-out pair with the reference once.
    pub fn precompute_reference(&mut self, batch_size: usize) {
        let score = |set: &DpoDataset| {
            let mut cache = Vec::with_capacity(set.pairs.len());
            for chunk in set.pairs.chunks(batch_size) {
                let refs: Vec<&DpoPair> = chunk.iter().collect();
                let (c, r) = self.reference_log_probs(&collate_pairs(&refs, self.pad_id));
                cache.extend(c.into_iter().zip(r));
            }
            cache
        };
        self.reference_scores = Some(ReferenceScores { train: score(&self.train), val: score(&self.val) });
    }

    fn reference_log_probs(&self, rows: &SftBatch) -> (Vec<f32>, Vec<f32>) {
        let lp: Vec<f32> =
            answer_log_probs(&self.reference, rows, &self.device).into_data().convert::<f32>().to_vec().expect("f32");
        let n = lp.len() / 2;
        (lp[..n].to_vec(), lp[n..].to_vec())
    }

    fn batch(&self, set: &DpoDataset, indices: &[usize], cache: Option<&Vec<(f32, f32)>>) -> DpoBatch {
        let pairs: Vec<&DpoPair> = indices.iter().map(|&i| &set.pairs[i]).collect();
        let rows = collate_pairs(&pairs, self.pad_id);
        let (ref_chosen, ref_rejected) = match cache {
            Some(cache) => indices.iter().map(|&i| cache[i]).unzip(),
            None => self.reference_log_probs(&rows),
        };
        let chosen_tokens = rows.mask.chunks(rows.seq_len).take(indices.len()).map(|row| row.iter().sum()).collect();
        DpoBatch { rows, ref_chosen, ref_rejected, chosen_tokens }
    }

    /// Policy log-probs and the DPO output for a batch.
    fn forward<B: Backend>(&self, model: &Gpt<B>, batch: &DpoBatch, device: &B::Device) -> DpoOutput<B> {
        let n = batch.ref_chosen.len();
        let policy = answer_log_probs(model, &batch.rows, device); // [2n]: chosen rows, then rejected
        let host = |v: &Vec<f32>| Tensor::<B, 1>::from_data(TensorData::new(v.clone(), [n]), device);
        let policy_chosen = policy.clone().narrow(0, 0, n);
        let mut out = dpo_loss(
            policy_chosen.clone(),
            policy.narrow(0, n, n),
            host(&batch.ref_chosen),
            host(&batch.ref_rejected),
            self.beta,
            self.label_smoothing,
        );
        if self.rpo_alpha > 0.0 {
            out.loss = out.loss + chosen_nll(policy_chosen, host(&batch.chosen_tokens), self.rpo_alpha);
        }
        out
    }
}

/// Mean reward accuracy (chosen reward > rejected reward) and margin, `[1]` each.
fn reward_stats<B: Backend>(chosen: Tensor<B, 1>, rejected: Tensor<B, 1>) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let wins: Tensor<B, 1, Bool> = chosen.clone().greater(rejected.clone());
    (wins.float().mean(), (chosen - rejected).mean())
}

impl<R: Backend> Task for DpoTask<R> {
    type Batch = DpoBatch;

    fn train_len(&self) -> usize {
        self.train.pairs.len()
    }
    fn train_batch(&self, indices: &[usize]) -> DpoBatch {
        self.batch(&self.train, indices, self.reference_scores.as_ref().map(|s| &s.train))
    }
    fn val_len(&self) -> usize {
        self.val.pairs.len()
    }
    fn val_batch(&self, indices: &[usize]) -> DpoBatch {
        self.batch(&self.val, indices, self.reference_scores.as_ref().map(|s| &s.val))
    }
    fn tokens(&self, batch: &DpoBatch) -> usize {
        batch.rows.inputs.len()
    }
    fn loss<B: Backend>(&self, model: &Gpt<B>, batch: &DpoBatch, device: &B::Device) -> Tensor<B, 1> {
        self.forward(model, batch, device).loss
    }
    fn loss_and_metrics<B: Backend>(
        &self,
        model: &Gpt<B>,
        batch: &DpoBatch,
        device: &B::Device,
    ) -> (Tensor<B, 1>, Vec<(&'static str, Tensor<B, 1>)>) {
        let out = self.forward(model, batch, device);
        let (accuracy, margin) = reward_stats(out.chosen_rewards.clone(), out.rejected_rewards.clone());
        let metrics = vec![
            ("reward_accuracy", accuracy),
            ("reward_margin", margin),
            ("chosen_reward", out.chosen_rewards.mean()),
            ("rejected_reward", out.rejected_rewards.mean()),
        ];
        (out.loss, metrics)
    }
    /// Reward accuracy and margins on all held-out pairs, and SFT answer accuracy.
    fn evaluate<B: Backend>(&self, model: &Gpt<B>, device: &B::Device) -> Vec<(String, f64)> {
        let (mut chosen, mut rejected) = (Vec::new(), Vec::new());
        for start in (0..self.val.pairs.len()).step_by(16) {
            let indices: Vec<usize> = (start..(start + 16).min(self.val.pairs.len())).collect();
            let out = self.forward(model, &self.val_batch(&indices), device);
            chosen.extend(out.chosen_rewards.into_data().convert::<f32>().to_vec::<f32>().expect("f32"));
            rejected.extend(out.rejected_rewards.into_data().convert::<f32>().to_vec::<f32>().expect("f32"));
        }
        let n = chosen.len().max(1) as f64;
        let wins = chosen.iter().zip(&rejected).filter(|(c, r)| c > r).count() as f64;
        let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let mut out = vec![
            ("reward_accuracy".to_string(), wins / n),
            ("reward_margin".to_string(), mean(&chosen) - mean(&rejected)),
            ("chosen_reward".to_string(), mean(&chosen)),
            ("rejected_reward".to_string(), mean(&rejected)),
        ];
        if !self.questions.is_empty() {
            // The held-out questions' replies, also read for degeneration.
            let scores = score_replies(model, &self.tokenizer, &self.questions, self.max_answer_tokens);
            out.push(("answer_accuracy".to_string(), scores.accuracy));
            out.push(("well_formed".to_string(), scores.well_formed));
            out.push(("looping".to_string(), scores.looping));
            out.push(("distinct_2".to_string(), scores.distinct_2));
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

    fn pair(tok: &Tokenizer, q: &str, good: &str, bad: &str) -> DpoPair {
        let side = |a: &str| {
            let messages = vec![Message::new(Role::User, q), Message::new(Role::Assistant, a)];
            let (ids, supervised) = tokenize_conversation(tok, &messages);
            SftExample { messages, ids, supervised, answer: None }
        };
        DpoPair { chosen: side(good), rejected: side(bad) }
    }

    #[test]
    fn a_few_pairs_reach_full_reward_accuracy_and_the_reference_never_changes() {
        let texts = [
            ("What is 2 plus 3?", "5.", "6."),
            ("Where is Osk?", "In the north.", "In the south south."),
            ("Who is Mira?", "A baker.", "a baker"),
        ];
        let docs: Vec<String> =
            texts.iter().flat_map(|(q, a, b)| [q.to_string(), a.to_string(), b.to_string()]).collect();
        let tok = Tokenizer::train(docs.iter().cycle().take(60).cloned(), 300).unwrap();
        let pairs: Vec<DpoPair> = texts.iter().map(|(q, a, b)| pair(&tok, q, a, b)).collect();
        // The masks cover the answers only, never the shared prompt.
        let rows = collate_pairs(&[&pairs[0]], 0);
        let answer: Vec<u32> = rows.targets.iter().zip(&rows.mask).filter(|p| *p.1 > 0.0).map(|p| *p.0).collect();
        assert_eq!(tok.decode(&answer), "5.<|im_end|>6.<|im_end|>");

        let cfg = GptConfig::tiny(tok.vocab_size())
            .with_d_model(32)
            .with_n_layers(2)
            .with_context_length(32)
            .with_dropout(0.0);
        let device = Default::default();
        let policy = Gpt::<CpuTrain>::new(&cfg, &device);
        let reference: Gpt<Cpu> = policy.valid(); // a frozen copy of the start
        let ref_before = reference.token_emb.weight.val().into_data();
        let set = DpoDataset { pairs, skipped: 0 };
        let pad = tok.token_id(data::tokenizer::PAD).unwrap();
        let mut task = DpoTask {
            train: set.clone(),
            val: set,
            reference,
            device,
            beta: 0.5,
            label_smoothing: 0.0,
            rpo_alpha: 0.0,
            pad_id: pad,
            questions: Vec::new(),
            tokenizer: tok,
            max_answer_tokens: 32,
            reference_scores: None,
        };
        task.precompute_reference(2);

        let out = std::env::temp_dir().join(format!("minigpt-dpo-run-{}", std::process::id()));
        std::fs::remove_dir_all(&out).ok();
        let flags = [
            "--out",
            out.to_str().unwrap(),
            "--batch-size",
            "3",
            "--max-steps",
            "30",
            "--lr",
            "2e-3",
            "--eval-interval",
            "30",
            "--log-interval",
            "5",
        ];
        let args = TrainArgs::from_flags(&flags);
        let outcome = crate::train(policy, &task, &args, &device, Arc::new(AtomicBool::new(false)), "t").unwrap();

        let vals: Vec<_> = outcome.log.events.iter().filter(|e| e.split == "val").collect();
        let first_loss = vals[0].loss;
        assert!(
            (first_loss - std::f64::consts::LN_2).abs() < 1e-4,
            "policy = reference at step 0: loss ln 2, got {first_loss}"
        );
        assert_eq!(vals.last().unwrap().extra["reward_accuracy"].as_f64(), Some(1.0));
        assert!(vals.last().unwrap().extra["reward_margin"].as_f64().unwrap() > 0.0);
        assert!(outcome.log.events.iter().any(|e| e.split == "train" && e.extra.contains_key("reward_accuracy")));
        task.reference.token_emb.weight.val().into_data().assert_eq(&ref_before, true);
        std::fs::remove_dir_all(out).ok();
    }
}
