//! Turning next-token scores into text, one token at a time.
//!
//! `sample_next` is a pure function from logits to a token id, so each
//! sampling rule can be tested by hand; `generate` runs the model with the
//! KV cache and calls it once per new token.

use burn::module::Module;
use kernels::Backend;

use crate::gpt::{Gpt, int_tensor};
use crate::kv_cache::KvCache;

/// How to pick the next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Divides the logits before softmax. 1 = the model's own distribution;
    /// < 1 sharpens it (more predictable), > 1 flattens it (more surprising);
    /// 0 means greedy: always the single most likely token.
    pub temperature: f64,
    /// Keep only the k most likely tokens (None = all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probabilities sum to
    /// at least p (nucleus sampling; None = all).
    pub top_p: Option<f64>,
    /// > 1 discourages tokens already in the text (1 = off).
    pub repetition_penalty: f64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { temperature: 0.8, top_k: Some(50), top_p: None, repetition_penalty: 1.0 }
    }
}

impl Sampling {
    pub fn greedy() -> Self {
        Self { temperature: 0.0, top_k: None, top_p: None, repetition_penalty: 1.0 }
    }
}

/// The probabilities `sample_next` draws from, as (token, probability)
/// sorted most likely first; only tokens that survive top-k/top-p appear.
pub fn candidate_probs(logits: &[f32], history: &[u32], cfg: &Sampling) -> Vec<(u32, f64)> {
    let mut scores: Vec<f64> = logits.iter().map(|&l| l as f64).collect();
    if cfg.repetition_penalty != 1.0 {
        // CTRL's rule: a seen token's logit moves toward "less likely"
        // whatever its sign; once per distinct token, however often seen.
        let seen: std::collections::BTreeSet<u32> = history.iter().copied().collect();
        for &t in &seen {
            let s = &mut scores[t as usize];
            *s = if *s > 0.0 { *s / cfg.repetition_penalty } else { *s * cfg.repetition_penalty };
        }
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // Most likely first; ties go to the lower id so results are reproducible.
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    if cfg.temperature <= 0.0 {
        return vec![(order[0] as u32, 1.0)];
    }
    if let Some(k) = cfg.top_k {
        order.truncate(k.max(1));
    }
    // Softmax of logits / T over the remaining tokens (max subtracted for stability).
    let max = scores[order[0]];
    let weights: Vec<f64> = order.iter().map(|&i| ((scores[i] - max) / cfg.temperature).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut probs: Vec<(u32, f64)> = order.iter().zip(weights).map(|(&i, w)| (i as u32, w / total)).collect();
    if let Some(p) = cfg.top_p {
        let mut cumulative = 0.0;
        let keep = probs
            .iter()
            .position(|&(_, q)| {
                cumulative += q;
                cumulative >= p
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        let total: f64 = probs.iter().map(|p| p.1).sum();
        probs.iter_mut().for_each(|p| p.1 /= total);
    }
    probs
}

/// Picks the next token. `uniform` is a random number in [0, 1): the caller
/// owns the random generator, so a seed reproduces a whole generation.
pub fn sample_next(logits: &[f32], history: &[u32], cfg: &Sampling, uniform: f64) -> u32 {
    let probs = candidate_probs(logits, history, cfg);
    // Inverse CDF: walk the cumulative probabilities until they pass `uniform`.
    let mut cumulative = 0.0;
    for &(token, p) in &probs {
        cumulative += p;
        if uniform < cumulative {
            return token;
        }
    }
    probs.last().expect("at least one candidate").0
}

/// What to generate: how many tokens, how to pick each, when to stop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerateOptions {
    /// Most new tokens to produce.
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Stop after producing this token (e.g. `<|im_end|>` for a chat reply).
    pub stop_token: Option<u32>,
    /// Feed each step only the newest token, reading the rest from the KV
    /// cache (see `kv_cache.rs`). Off re-runs the whole text every step: the
    /// baseline the cache is measured against.
    pub use_cache: bool,
}

impl GenerateOptions {
    /// Greedy decoding with the KV cache, as evaluation uses it.
    pub fn greedy(max_new_tokens: usize, stop_token: Option<u32>) -> Self {
        Self { max_new_tokens, sampling: Sampling::greedy(), stop_token, use_cache: true }
    }
}

/// Generates tokens after `prompt` as `options` say, calling `on_token`
/// with each one as soon as it exists (return false to stop) and returning
/// them all. `rng` yields uniform numbers in [0, 1): the caller owns the
/// random generator, so a seed reproduces a whole conversation.
pub fn generate<B: Backend>(
    model: &Gpt<B>,
    prompt: &[u32],
    options: &GenerateOptions,
    rng: &mut dyn FnMut() -> f64,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Vec<u32> {
    assert!(!prompt.is_empty(), "generation needs at least one prompt token");
    let device = model.devices()[0].clone();
    let ctx = model.context_length();
    let mut tokens = prompt.to_vec();
    let mut cache = KvCache::new(model.n_layers());
    // What the model still has to read: the prompt first, then each new token.
    let mut pending: Vec<u32> = tokens[tokens.len().saturating_sub(ctx)..].to_vec();
    let mut generated = Vec::new();
    for _ in 0..options.max_new_tokens {
        let logits = if options.use_cache {
            if cache.len() + pending.len() > ctx {
                // The cache is full: the learned position table has only `ctx`
                // rows. Start over from the last half-context of text: one
                // full forward now, then cheap steps again.
                cache = KvCache::new(model.n_layers());
                pending = tokens[tokens.len() - (ctx / 2).max(1)..].to_vec();
            }
            model.forward(int_tensor(&pending, 1, pending.len(), &device), Some(&mut cache))
        } else {
            let window = &tokens[tokens.len().saturating_sub(ctx)..];
            model.forward(int_tensor(window, 1, window.len(), &device), None)
        }; // [positions, vocab]: one sequence, so one row per position
        let [rows, vocab] = logits.dims();
        let last = logits.narrow(0, rows - 1, 1).reshape([vocab]); // the newest position's scores
        let last: Vec<f32> = last.into_data().convert::<f32>().to_vec().expect("f32 logits");
        let next = sample_next(&last, &tokens, &options.sampling, rng());
        tokens.push(next);
        generated.push(next);
        pending = vec![next];
        if Some(next) == options.stop_token || !on_token(next) {
            break;
        }
    }
    generated
}

#[cfg(test)]
mod tests {
    use super::*;

    // The worked example of the notebook: three tokens at 0.6 / 0.2 / 0.2.
    fn logits() -> Vec<f32> {
        [0.6f32, 0.2, 0.2].iter().map(|p| p.ln()).collect()
    }

    fn sampling(temperature: f64) -> Sampling {
        Sampling { temperature, top_k: None, top_p: None, repetition_penalty: 1.0 }
    }

    #[test]
    fn temperature_one_keeps_the_distribution_and_others_reshape_it() {
        let p = candidate_probs(&logits(), &[], &sampling(1.0));
        assert!((p[0].1 - 0.6).abs() < 1e-6 && (p[1].1 - 0.2).abs() < 1e-6);
        // T = 0.5 squares the probabilities before renormalising: .36/.44.
        let p = candidate_probs(&logits(), &[], &sampling(0.5));
        assert!((p[0].1 - 0.36 / 0.44).abs() < 1e-6);
        // T = 2 takes square roots: flatter.
        let p = candidate_probs(&logits(), &[], &sampling(2.0));
        let s = 0.6f64.sqrt() + 2.0 * 0.2f64.sqrt();
        assert!((p[0].1 - 0.6f64.sqrt() / s).abs() < 1e-6);
    }

    #[test]
    fn greedy_is_argmax_and_low_temperature_tends_to_it() {
        let logits = vec![0.1f32, 2.0, -1.0, 1.9];
        for u in [0.0, 0.5, 0.999] {
            assert_eq!(sample_next(&logits, &[], &Sampling::greedy(), u), 1);
            assert_eq!(sample_next(&logits, &[], &sampling(1e-3), u), 1);
        }
    }

    #[test]
    fn top_k_never_picks_outside_the_k_best() {
        let logits: Vec<f32> = (0..20).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut best: Vec<usize> = (0..20).collect();
        best.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let cfg = Sampling { top_k: Some(3), ..sampling(5.0) }; // very flat: would pick anything
        for i in 0..1000 {
            let t = sample_next(&logits, &[], &cfg, i as f64 / 1000.0) as usize;
            assert!(best[..3].contains(&t));
        }
    }

    #[test]
    fn top_p_never_picks_outside_the_nucleus() {
        // 0.6 / 0.2 / 0.2 with p = 0.7: the nucleus is the first two tokens.
        let cfg = Sampling { top_p: Some(0.7), ..sampling(1.0) };
        let probs = candidate_probs(&logits(), &[], &cfg);
        assert_eq!(probs.len(), 2);
        assert!((probs[0].1 - 0.75).abs() < 1e-6);
        for i in 0..1000 {
            assert_ne!(sample_next(&logits(), &[], &cfg, i as f64 / 1000.0), 2);
        }
    }

    #[test]
    fn repetition_penalty_lowers_seen_tokens() {
        let cfg = Sampling { repetition_penalty: 2.0, ..Sampling::greedy() };
        assert_eq!(sample_next(&[1.0, 0.9, -3.0], &[], &cfg, 0.0), 0);
        assert_eq!(sample_next(&[1.0, 0.9, -3.0], &[0], &cfg, 0.0), 1);
        // Applied once per distinct token: seen three times, still 1.0 / 2.
        let probs = candidate_probs(&[1.0, 0.5, -3.0], &[0, 0, 0], &Sampling { temperature: 1.0, ..cfg });
        assert!((probs[0].1 - probs[1].1).abs() < 1e-6, "{probs:?}");
    }

    #[test]
    fn same_seed_same_text_and_cache_matches_no_cache() {
        use crate::config::GptConfig;
        use kernels::Cpu;
        let device = Default::default();
        let model =
            Gpt::<Cpu>::new(&GptConfig::tiny(50).with_n_layers(2).with_context_length(16).with_dropout(0.0), &device);
        let run = |seed: u64, cfg: Sampling, cache: bool| {
            let mut state = seed;
            let mut rng = move || {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 11) as f64 / (1u64 << 53) as f64
            };
            // 30 new tokens overflow the 16-token context: exercises the cache restart.
            let options = GenerateOptions { max_new_tokens: 30, sampling: cfg, stop_token: None, use_cache: cache };
            generate(&model, &[1, 2, 3], &options, &mut rng, &mut |_| true)
        };
        let cfg = Sampling { temperature: 1.0, top_k: None, top_p: None, repetition_penalty: 1.0 };
        assert_eq!(run(7, cfg, true), run(7, cfg, true));
        assert_ne!(run(7, cfg, true), run(8, cfg, true));
        // Greedy is deterministic whatever the seed. Cached and uncached
        // agree while the whole text fits in the context.
        let greedy = Sampling::greedy();
        assert_eq!(run(1, greedy, true), run(2, greedy, true));
        let short = |cache: bool| {
            let mut rng = || 0.5;
            let options = GenerateOptions { use_cache: cache, ..GenerateOptions::greedy(12, None) };
            generate(&model, &[1, 2, 3], &options, &mut rng, &mut |_| true)
        };
        assert_eq!(short(true), short(false));
        let stop = short(true)[4];
        let mut rng = || 0.5;
        let stopped = generate(&model, &[1, 2, 3], &GenerateOptions::greedy(12, Some(stop)), &mut rng, &mut |_| true);
        assert_eq!(stopped.last(), Some(&stop));
        assert!(stopped.len() <= 5);
    }
}
