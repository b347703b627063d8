//! Model tests: shapes, counts, masking, the two attention paths, the KV cache
//! and the ability to learn. All on the CPU with tiny configs.

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{Int, Tensor, TensorData, Tolerance};
use kernels::{Backend, Cpu, CpuTrain};

use crate::attention::MultiHeadAttention;
use crate::config::{ComputeConfig, GptConfig};
use crate::gpt::Gpt;
use crate::kv_cache::KvCache;
use crate::loss::{cross_entropy, masked_cross_entropy};
use crate::params::{count_params, param_shapes};

fn small_cfg() -> GptConfig {
    GptConfig::tiny(97).with_d_model(32).with_n_heads(4).with_n_layers(2).with_context_length(16).with_dropout(0.0)
}

fn tokens<B: Backend>(ids: &[i64], batch: usize, device: &B::Device) -> Tensor<B, 2, Int> {
    let seq = ids.len() / batch;
    Tensor::from_data(TensorData::new(ids.to_vec(), [batch, seq]), device)
}

#[test]
fn shapes_through_every_layer() {
    let device = Default::default();
    let cfg = small_cfg();
    let model = Gpt::<Cpu>::new(&cfg, &device);
    // 2 sequences of 5 positions, as rows: [2·5, d_model].
    let x: Tensor<Cpu, 2> = Tensor::random([10, 32], burn::tensor::Distribution::Default, &device);
    let block = &model.blocks[0];
    assert_eq!(block.attention.forward(x.clone(), 2, None).dims(), [10, 32]);
    assert_eq!(block.mlp.forward(x.clone()).dims(), [10, 32]);
    assert_eq!(block.forward(x, 2, None).dims(), [10, 32]);
    let ids: Vec<i64> = (0..10).collect();
    assert_eq!(model.forward(tokens(&ids, 2, &device), None).dims(), [10, 97]);
    assert_eq!(model.loss(tokens(&ids, 2, &device), tokens(&ids, 2, &device)).dims(), [1]);
}

#[test]
fn parameter_count_formula_matches_the_real_model() {
    let device = Default::default();
    for cfg in [small_cfg(), small_cfg().with_tie_embeddings(false), small_cfg().with_qkv_bias(false)] {
        let model = Gpt::<CpuTrain>::new(&cfg, &device);
        let counts = count_params(&model);
        assert_eq!(counts.total, cfg.num_params());
        assert_eq!(counts.trainable, counts.total);
        assert_eq!(model.num_params(), cfg.num_params());
    }
    let frozen = Gpt::<CpuTrain>::new(&small_cfg(), &device).no_grad();
    assert_eq!(count_params(&frozen).trainable, 0);
}

#[test]
fn fresh_model_loss_is_near_ln_vocab() {
    let device = Default::default();
    let model = Gpt::<Cpu>::new(&small_cfg(), &device);
    let ids: Vec<i64> = (0..32).map(|i| (i * 7) % 97).collect();
    let next: Vec<i64> = (0..32).map(|i| (i * 11 + 5) % 97).collect();
    let loss: f32 = model.loss(tokens(&ids, 2, &device), tokens(&next, 2, &device)).into_scalar();
    assert!((loss - (97f32).ln()).abs() < 0.3, "loss {loss} vs ln 97 = {}", (97f32).ln());
}

#[test]
fn changing_a_future_token_never_changes_earlier_logits() {
    let device = Default::default();
    for fused in [true, false] {
        let model =
            Gpt::<Cpu>::new(&small_cfg(), &device).with_compute(&ComputeConfig::new().with_fused_attention(fused));
        let a: Vec<i64> = vec![5, 9, 2, 44, 17, 3, 8, 60];
        let mut b = a.clone();
        b[5] = 91; // change position 5 only
        let la = model.forward(tokens(&a, 1, &device), None); // [8, vocab]: one row per position
        let lb = model.forward(tokens(&b, 1, &device), None);
        let early = |l: Tensor<Cpu, 2>| l.narrow(0, 0, 5).into_data();
        early(la.clone()).assert_eq(&early(lb.clone()), true);
        // ...while the changed position itself (and later ones) do change.
        let late = |l: Tensor<Cpu, 2>| l.narrow(0, 5, 3).into_data().to_vec::<f32>().unwrap();
        assert_ne!(late(la), late(lb));
    }
}

#[test]
fn fused_and_plain_attention_agree() {
    let device = Default::default();
    let attn = MultiHeadAttention::<Cpu>::new(&small_cfg(), &device);
    let (batch, seq, heads) = (2, 7, 4);
    let rand = || Tensor::<Cpu, 2>::random([batch * seq, 32], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let (q, k, v) = (rand(), rand(), rand()); // [batch·seq, d_model]
    let plain = attn.plain_attention(q.clone(), k.clone(), v.clone(), batch, None);
    let fused = kernels::causal_attention(q, k, v, batch, heads);
    plain.into_data().assert_approx_eq::<f32>(&fused.into_data(), Tolerance::absolute(1e-5));
    // And whole models computing either way give the same logits.
    let fused_model = Gpt::<Cpu>::new(&small_cfg(), &device);
    let plain_model = fused_model.clone().with_compute(&ComputeConfig::new().with_fused_attention(false));
    let ids: Vec<i64> = (0..16).map(|i| (i * 13) % 97).collect();
    let a = fused_model.forward(tokens(&ids, 2, &device), None).into_data();
    let b = plain_model.forward(tokens(&ids, 2, &device), None).into_data();
    a.assert_approx_eq::<f32>(&b, Tolerance::absolute(1e-4));
}

#[test]
fn kv_cache_gives_the_same_logits_as_the_full_forward() {
    let device = Default::default();
    for fused in [true, false] {
        let compute = ComputeConfig::new().with_fused_attention(fused);
        let model = Gpt::<Cpu>::new(&small_cfg(), &device).with_compute(&compute);
        let ids: Vec<i64> = vec![4, 8, 15, 16, 23, 42, 7, 1, 2];
        let full = model.forward(tokens(&ids, 1, &device), None); // [9, vocab]
        // A 4-token prompt, then one token at a time.
        let mut cache = KvCache::new(model.n_layers());
        let mut pieces = vec![model.forward(tokens(&ids[..4], 1, &device), Some(&mut cache))];
        for &id in &ids[4..] {
            pieces.push(model.forward(tokens(&[id], 1, &device), Some(&mut cache)));
        }
        assert_eq!(cache.len(), ids.len());
        let cached = Tensor::cat(pieces, 0); // rows: position after position
        full.into_data().assert_approx_eq::<f32>(&cached.into_data(), Tolerance::absolute(1e-4));
    }
}

#[test]
fn masked_cross_entropy_matches_a_hand_computation() {
    let device = Default::default();
    // Two positions over a 3-token vocabulary.
    let logits = Tensor::<Cpu, 2>::from_data([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], &device);
    let targets = Tensor::<Cpu, 1, Int>::from_data([2, 0], &device);
    let lse = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln();
    let nll0 = lse - 3.0;
    let nll1 = 3f32.ln();
    let all: f32 = cross_entropy(logits.clone(), targets.clone()).into_scalar();
    assert!((all - (nll0 + nll1) / 2.0).abs() < 1e-5);
    let mask = Tensor::<Cpu, 1>::from_data([1.0, 0.0], &device);
    let masked: f32 = masked_cross_entropy(logits, targets.clone(), mask.clone()).into_scalar();
    assert!((masked - nll0).abs() < 1e-5);
    // The masked position's logits do not matter at all.
    let wild = Tensor::<Cpu, 2>::from_data([[1.0, 2.0, 3.0], [900.0, -50.0, 7.0]], &device);
    let again: f32 = masked_cross_entropy(wild, targets, mask).into_scalar();
    assert!((again - nll0).abs() < 1e-5);
}

#[test]
fn tiny_model_overfits_one_batch() {
    let device = Default::default();
    <CpuTrain as burn::tensor::backend::Backend>::seed(&device, 0);
    let cfg = GptConfig::tiny(64).with_context_length(32).with_dropout(0.0);
    let mut model = Gpt::<CpuTrain>::new(&cfg, &device);
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let ids: Vec<i64> = (0..4 * 33).map(|i| (i * i * 31 + 7) % 64).collect(); // arbitrary, non-repeating text
    let (inputs, targets): (Vec<i64>, Vec<i64>) =
        ids.chunks(33).flat_map(|w| w[..32].iter().copied().zip(w[1..].iter().copied())).unzip();
    let inputs = tokens::<CpuTrain>(&inputs, 4, &device);
    let targets = tokens::<CpuTrain>(&targets, 4, &device);
    let mut first = None;
    let mut last = f32::MAX;
    for step in 0..300 {
        let loss = model.loss(inputs.clone(), targets.clone());
        last = loss.clone().into_scalar();
        first.get_or_insert(last);
        if last < 0.5 {
            eprintln!("reached {last:.3} at step {step}");
            break;
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(3e-3, model, grads);
    }
    assert!(first.unwrap() > 3.5, "should start near ln 64 = 4.16");
    assert!(last < 0.5, "loss only fell to {last}");
}

#[test]
fn parameter_paths_and_shapes_name_every_tensor() {
    let model = Gpt::<Cpu>::new(&small_cfg(), &Default::default());
    let shapes = param_shapes(&model);
    assert_eq!(shapes.iter().map(|(_, d)| d.iter().product::<usize>()).sum::<usize>(), small_cfg().num_params());
    let find = |path: &str| shapes.iter().find(|(p, _)| p == path).map(|(_, d)| d.clone());
    assert_eq!(find("token_emb.weight"), Some(vec![97, 32]));
    assert_eq!(find("blocks.1.mlp.fc.base.weight"), Some(vec![32, 128]));
    assert_eq!(find("blocks.0.attention.query.base.bias"), Some(vec![32]));
}
