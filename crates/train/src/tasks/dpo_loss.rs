//! The DPO loss: learning from pairs of a preferred and a rejected answer.
//!
//! The "implicit reward" of an answer y is how much more likely the policy
//! makes it than the frozen reference model does, scaled by β:
//! `r(y) = β · (log π(y) - log π_ref(y))`. DPO raises r(chosen) - r(rejected)
//! through `-log σ(r(chosen) - r(rejected))`. Measuring against the reference
//! (not raw likelihoods) keeps the policy from drifting far from the model it
//! started as: β sets how hard that leash pulls. The task that feeds it is
//! [`super::dpo`].

use burn::tensor::activation::log_sigmoid;
use burn::tensor::{Int, Tensor};
use kernels::Backend;
use model::loss::token_nll;

/// Sum of the log-probabilities of the masked target tokens, per row:
/// logits `[rows·seq, vocab]` (as the model returns them), targets
/// `[rows, seq]`, mask `[rows, seq]` → `[rows]`. With the SFT mask this is
/// log π(answer | prompt).
pub fn sequence_log_probs<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 2, Int>,
    mask: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let [rows, seq] = targets.dims();
    // log softmax(z)[y] = −(cross-entropy of y): the fused kernel, one row per position.
    let nll = token_nll(logits, targets.reshape([rows * seq])); // [rows·seq]
    (nll.neg().reshape([rows, seq]) * mask).sum_dim(1).reshape([rows])
}

/// The loss and the numbers worth watching, per batch.
pub struct DpoOutput<B: Backend> {
    /// Mean loss `[1]`.
    pub loss: Tensor<B, 1>,
    /// β·(log π - log π_ref) of each chosen answer `[pairs]`.
    pub chosen_rewards: Tensor<B, 1>,
    /// The same for each rejected answer `[pairs]`.
    pub rejected_rewards: Tensor<B, 1>,
}

/// Sigmoid DPO loss. All inputs `[pairs]`: log-probabilities of the chosen
/// and rejected answers under the policy and the reference.
/// `label_smoothing` ε assumes each label is wrong with probability ε
/// (conservative DPO): the loss becomes `-(1-ε)·log σ(z) - ε·log σ(-z)`.
pub fn dpo_loss<B: Backend>(
    policy_chosen: Tensor<B, 1>,
    policy_rejected: Tensor<B, 1>,
    ref_chosen: Tensor<B, 1>,
    ref_rejected: Tensor<B, 1>,
    beta: f64,
    label_smoothing: f64,
) -> DpoOutput<B> {
    let chosen_rewards = (policy_chosen - ref_chosen) * beta;
    let rejected_rewards = (policy_rejected - ref_rejected) * beta;
    let margin = chosen_rewards.clone() - rejected_rewards.clone(); // z
    let loss =
        log_sigmoid(margin.clone()).neg() * (1.0 - label_smoothing) - log_sigmoid(margin.neg()) * label_smoothing;
    DpoOutput {
        loss: loss.mean(),
        chosen_rewards: chosen_rewards.detach(),
        rejected_rewards: rejected_rewards.detach(),
    }
}

/// RPO's extra term (Pang et al. 2024): α times the chosen answers' mean
/// negative log-likelihood per token. DPO alone only asks that the chosen
/// answer gain on the rejected one, which it can satisfy by making both less
/// likely (a model that says neither: degenerate text). This term also asks
/// that the chosen answer stay likely, as SFT did. `policy_chosen`: log
/// π(chosen) per pair `[pairs]`; `chosen_tokens`: its answer's length in
/// tokens `[pairs]` → `[1]`.
pub fn chosen_nll<B: Backend>(policy_chosen: Tensor<B, 1>, chosen_tokens: Tensor<B, 1>, alpha: f64) -> Tensor<B, 1> {
    (policy_chosen.neg() / chosen_tokens).mean() * alpha
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Int, Tensor};
    use kernels::{Backend, Cpu, CpuTrain};

    use super::*;

    fn t<B: Backend>(v: &[f32]) -> Tensor<B, 1> {
        Tensor::from_floats(v, &Default::default())
    }

    #[test]
    fn loss_is_ln2_when_policy_equals_reference() {
        let lp = t::<Cpu>(&[-3.0, -10.0, -0.5]);
        let lr = t::<Cpu>(&[-7.0, -2.0, -9.0]);
        let out = dpo_loss(lp.clone(), lr.clone(), lp, lr, 0.1, 0.0);
        let loss: f32 = out.loss.into_scalar();
        assert!((loss - std::f32::consts::LN_2).abs() < 1e-6, "{loss}");
    }

    #[test]
    fn rewards_accuracy_and_loss_match_a_hand_computation() {
        // Pair 1: chosen gained 2 nats over the reference, rejected lost 1.
        // Pair 2: chosen lost 1, rejected gained 1 (the policy prefers the wrong one).
        let out = dpo_loss(t::<Cpu>(&[-8.0, -6.0]), t(&[-11.0, -4.0]), t(&[-10.0, -5.0]), t(&[-10.0, -5.0]), 0.5, 0.0);
        let c = out.chosen_rewards.into_data().to_vec::<f32>().unwrap();
        let r = out.rejected_rewards.into_data().to_vec::<f32>().unwrap();
        assert_eq!(c, [1.0, -0.5]);
        assert_eq!(r, [-0.5, 0.5]);
        // Margins 1.5 and -1.0; loss = mean of softplus(-z) = ln(1 + e^{-z}).
        let expected = ((1.0f32 + (-1.5f32).exp()).ln() + (1.0f32 + 1.0f32.exp()).ln()) / 2.0;
        let loss: f32 = out.loss.into_scalar();
        assert!((loss - expected).abs() < 1e-6);
        let accuracy = c.iter().zip(&r).filter(|(c, r)| c > r).count() as f32 / 2.0;
        assert_eq!(accuracy, 0.5);
        // Label smoothing 0.5 makes the two directions cost the same: loss = mean(-log σ(z)/2 - log σ(-z)/2).
        let smoothed: f32 =
            dpo_loss(t::<Cpu>(&[-8.0]), t(&[-11.0]), t(&[-10.0]), t(&[-10.0]), 0.5, 0.5).loss.into_scalar();
        let z = 1.5f32;
        let want = 0.5 * (1.0 + (-z).exp()).ln() + 0.5 * (1.0 + z.exp()).ln();
        assert!((smoothed - want).abs() < 1e-5);
    }

    #[test]
    fn gradient_raises_chosen_and_lowers_rejected() {
        let pc = t::<CpuTrain>(&[-5.0]).require_grad();
        let pr = t::<CpuTrain>(&[-5.0]).require_grad();
        let out = dpo_loss(pc.clone(), pr.clone(), t(&[-5.0]), t(&[-5.0]), 0.1, 0.0);
        let grads = out.loss.backward();
        let gc: f32 = pc.grad(&grads).unwrap().into_scalar();
        let gr: f32 = pr.grad(&grads).unwrap().into_scalar();
        // Gradient descent moves against the gradient: chosen up, rejected down.
        assert!(gc < 0.0 && gr > 0.0, "{gc} {gr}");
        assert!((gc + 0.05).abs() < 1e-6, "β·σ(-0)·(-1) = -0.05");
    }

    #[test]
    fn the_rpo_term_is_the_per_token_nll_of_the_chosen_answers() {
        // Answers of 2 and 4 tokens with log-probs -3 and -2: per token 1.5 and 0.5, mean 1.0.
        let term: f32 = chosen_nll(t::<Cpu>(&[-3.0, -2.0]), t(&[2.0, 4.0]), 0.5).into_scalar();
        assert!((term - 0.5).abs() < 1e-6, "{term}");
        // Its gradient raises the chosen answer's likelihood.
        let pc = t::<CpuTrain>(&[-3.0]).require_grad();
        let grads = chosen_nll(pc.clone(), t(&[2.0]), 1.0).backward();
        let g: f32 = pc.grad(&grads).unwrap().into_scalar();
        assert!((g + 0.5).abs() < 1e-6, "d/dlogp of -logp/2 is -1/2, got {g}");
    }

    #[test]
    fn sequence_log_probs_sum_only_masked_tokens() {
        let device = Default::default();
        // One row, two positions, vocabulary 2, uniform logits: each token has log-prob ln ½.
        let logits = Tensor::<Cpu, 2>::zeros([2, 2], &device); // [rows·seq, vocab]
        let targets = Tensor::<Cpu, 2, Int>::from_data([[0, 1]], &device);
        let both: f32 =
            sequence_log_probs(logits.clone(), targets.clone(), Tensor::from_data([[1.0, 1.0]], &device)).into_scalar();
        let one: f32 = sequence_log_probs(logits, targets, Tensor::from_data([[0.0, 1.0]], &device)).into_scalar();
        assert!((both - 2.0 * 0.5f32.ln()).abs() < 1e-6 && (one - 0.5f32.ln()).abs() < 1e-6);
    }
}
