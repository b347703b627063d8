//! Against the reference implementation: the fixtures in `fixtures/` were
//! written by `transformers` and tiktoken (`scripts/make_hf_fixture.py`):
//! two small random GPT-2s, their logits on fixed ids and their greedy
//! continuations, and the reference tokenizers' ids.

use std::path::{Path, PathBuf};

use data::Tokenizer;
use kernels::Cpu;
use model::gpt::int_tensor;
use model::{GenerateOptions, Gpt, Sampling, generate};
use serde_json::Value;

use crate::export::{ExportOptions, export_hf};
use crate::import::{HfModel, ImportOptions, import_hf, read_hf_dir};
use crate::{safetensors_file, weights};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap()).unwrap()
}

fn ids(value: &Value) -> Vec<u32> {
    value.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("minigpt-convert-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    dir
}

/// Import options for a fixture model; the untied one has no tokenizer files of its own.
fn options(model: &str, out: &Path) -> ImportOptions {
    ImportOptions {
        hf_dir: fixtures().join(model),
        out: out.to_path_buf(),
        tokenizer: Some(fixtures().join("tiny-gpt2")),
        keep_vocabulary: false,
        overwrite: false,
    }
}

/// Our logits on the fixture's ids `[batch, seq]` equal `transformers'`
/// within 1e-4 (on the original vocabulary's columns), and greedy decoding
/// continues the first sequence with the same tokens.
fn check_against_reference(model: &Gpt<Cpu>, reference: &Value) {
    let rows: Vec<Vec<u32>> = reference["ids"].as_array().unwrap().iter().map(ids).collect();
    let (batch, seq) = (rows.len(), rows[0].len());
    let logits = model.forward(int_tensor(&rows.concat(), batch, seq, &Default::default()), None); // [b·t, vocab]
    let [_, vocab] = logits.dims();
    let ours: Vec<f32> = logits.into_data().to_vec().unwrap();
    let theirs = reference["logits"].as_array().unwrap();
    let mut worst = 0.0f32;
    for (b, sequence) in theirs.iter().enumerate() {
        for (t, row) in sequence.as_array().unwrap().iter().enumerate() {
            for (j, want) in row.as_array().unwrap().iter().enumerate() {
                let got = ours[(b * seq + t) * vocab + j];
                worst = worst.max((got - want.as_f64().unwrap() as f32).abs());
            }
        }
    }
    assert!(worst < 1e-4, "logits differ from transformers' by up to {worst}");
    let options = GenerateOptions {
        max_new_tokens: reference["greedy"].as_array().unwrap().len(),
        sampling: Sampling::greedy(),
        stop_token: None,
        use_cache: true,
    };
    let greedy = generate(model, &rows[0], &options, &mut || 0.5, &mut |_| true);
    assert_eq!(greedy, ids(&reference["greedy"]), "greedy continuation");
}

#[test]
fn imported_models_give_transformers_logits_and_greedy_tokens() {
    let reference = reference();
    for (name, key) in [("tiny-gpt2", "tied"), ("tiny-gpt2-untied", "untied")] {
        let HfModel { config, model, added_tokens, .. } =
            read_hf_dir::<Cpu>(&options(name, &scratch(name)), &Default::default())
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(config.tie_embeddings, key == "tied");
        // The chat and padding tokens were added after the 305 of the file.
        let added: Vec<u32> = added_tokens.iter().map(|(_, id)| *id).collect();
        assert_eq!((added, config.vocab_size), (vec![305, 306, 307], 308));
        check_against_reference(&model, &reference[key]);
    }
}

#[test]
fn the_files_transformers_saves_and_openais_layout_import_the_same() {
    // OpenAI's upload names tensors without `transformer.` and carries each
    // layer's mask buffers: rewrite the fixture that way.
    let mut tensors = safetensors_file::read(&fixtures().join("tiny-gpt2/model.safetensors")).unwrap();
    tensors.insert("h.0.attn.bias".into(), (vec![1, 1, 32, 32], vec![1.0; 32 * 32]));
    tensors.insert("h.1.attn.masked_bias".into(), (vec![1], vec![-1e4]));
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, (s, v))| (n.clone(), s.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<_> = bytes
        .iter()
        .map(|(n, s, b)| {
            (n.as_str(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
        })
        .collect();
    let dir = scratch("openai-layout");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixtures().join("tiny-gpt2/config.json"), dir.join("config.json")).unwrap();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let options = ImportOptions { hf_dir: dir.clone(), ..options("tiny-gpt2", &scratch("unused")) };
    let model = read_hf_dir::<Cpu>(&options, &Default::default()).unwrap().model;
    check_against_reference(&model, &reference()["tied"]);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn tokenizers_from_gpt2s_files_give_the_reference_ids() {
    let reference = reference();
    let text = reference["text"].as_str().unwrap().strip_suffix(data::tokenizer::EOT).unwrap();
    let check = |tokenizer: &Tokenizer, key: &str| {
        let mut ours = tokenizer.encode(text);
        ours.push(tokenizer.eot_id);
        assert_eq!(ours, ids(&reference[key]), "{key}");
        assert_eq!(tokenizer.decode(&ours[..ours.len() - 1]), text, "{key}: decoding gives the text back");
    };
    check(&Tokenizer::load(&fixtures().join("tiny-gpt2")).unwrap(), "small_tokenizer_ids");
    // GPT-2's own files are OpenAI's, not committed: scripts/fetch-gpt2-tokenizer.sh
    // puts them in runs/gpt2-tokenizer (CI does, and requires this check).
    let gpt2 = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../runs/gpt2-tokenizer");
    if !gpt2.join("encoder.json").exists() {
        assert!(
            std::env::var_os("MINIGPT_REQUIRE_GPT2_TOKENIZER").is_none(),
            "{} is missing: run scripts/fetch-gpt2-tokenizer.sh",
            gpt2.display()
        );
        eprintln!("GPT-2's tokenizer files are not fetched: checked the small tokenizer only");
        return;
    }
    let tokenizer = Tokenizer::load(&gpt2).unwrap();
    assert_eq!((tokenizer.vocab_size(), tokenizer.eot_id), (50257, 50256));
    check(&tokenizer, "gpt2_tokenizer_ids");
    // With GPT-2's tokenizer, the gpt2-124m preset is GPT-2 small, to the parameter.
    let config = model::GptConfig::preset("gpt2-124m", Some(tokenizer.vocab_size())).unwrap();
    assert_eq!(config.num_params(), 124_439_808);
}

#[test]
fn export_then_import_is_the_identity_and_fine_tuning_accepts_the_import() {
    let root = scratch("round-trip");
    let (run, hf) = (root.join("run"), root.join("hf"));
    import_hf(&options("tiny-gpt2", &run)).unwrap();
    // A fine-tuning stage takes the import as --init: chat tokens, shape, weights.
    let device = Default::default();
    let (tokenizer, config, model) = train::run::load_init::<Cpu>(&run, &["import"], None, &device).unwrap();
    assert!(tokenizer.token_id(data::tokenizer::IM_END).is_some());

    let export = |out: &Path, overwrite| {
        export_hf(&ExportOptions { run: run.clone(), adapter: None, out: out.to_path_buf(), overwrite })
    };
    export(&hf, false).unwrap();
    let back = ImportOptions {
        hf_dir: hf.clone(),
        out: root.join("again"),
        tokenizer: None,
        keep_vocabulary: true,
        overwrite: false,
    };
    let HfModel { config: config_back, model: model_back, tokenizer: tokenizer_back, added_tokens } =
        read_hf_dir::<Cpu>(&back, &device).unwrap();
    assert!(added_tokens.is_empty());
    assert_eq!(config_back.shape_difference(&config), None);
    let (before, after) = (weights::export(&model), weights::export(&model_back));
    assert!(before.keys().eq(after.keys()), "the same tensors");
    for (name, tensor) in &before {
        assert!(after[name] == *tensor, "{name} changed in the round trip"); // bit for bit
    }
    assert_eq!(tokenizer_back.to_json(), tokenizer.to_json());

    // An export is replaced only when asked, and only if it is one.
    assert!(export(&hf, false).unwrap_err().to_string().contains("pass --overwrite"));
    export(&hf, true).unwrap();
    std::fs::write(hf.join("notes.txt"), "mine").unwrap();
    assert!(export(&hf, true).unwrap_err().to_string().contains("notes.txt was not written by an export"));
    std::fs::remove_dir_all(root).ok();
}

/// Bad input: one line naming the tensor or field, what was expected and
/// what was found, and the file; `--out` untouched.
#[test]
fn bad_input_is_named_and_nothing_is_written() {
    let root = scratch("bad");
    let broken = root.join("hf");
    std::fs::create_dir_all(&broken).unwrap();
    let good = safetensors_file::read(&fixtures().join("tiny-gpt2/model.safetensors")).unwrap();
    let config = std::fs::read_to_string(fixtures().join("tiny-gpt2/config.json")).unwrap();
    let out = root.join("run");
    let attempt = |edit: &dyn Fn(&mut weights::HostTensors), config: &str| {
        let mut tensors = good.clone();
        edit(&mut tensors);
        safetensors_file::write(&broken.join("model.safetensors"), &tensors).unwrap();
        std::fs::write(broken.join("config.json"), config).unwrap();
        let options = ImportOptions { hf_dir: broken.clone(), ..options("tiny-gpt2", &out) };
        let error = format!("{:#}", import_hf(&options).err().expect("refused"));
        assert!(!out.exists() && !root.join("run.partial").exists(), "nothing written for: {error}");
        error
    };
    let file = broken.join("model.safetensors").display().to_string();
    let missing = attempt(&|t| drop(t.remove("h.1.mlp.c_fc.bias")), &config);
    assert_eq!(missing, format!("{file}: tensor h.1.mlp.c_fc.bias [128] is missing"));
    let reshaped = attempt(&|t| t.get_mut("wpe.weight").unwrap().0 = vec![64, 16], &config);
    assert_eq!(reshaped, format!("{file}: tensor wpe.weight is [64, 16], expected [32, 32] (from config.json)"));
    let extra = attempt(&|t| drop(t.insert("h.0.crossattention.q_attn.weight".into(), (vec![1], vec![0.0]))), &config);
    assert_eq!(extra, format!("{file}: tensor h.0.crossattention.q_attn.weight is not part of a GPT-2 of this config"));
    let llama = attempt(&|_| {}, &config.replace("\"gpt2\"", "\"llama\""));
    assert!(llama.contains("config.json: model_type is \"llama\", expected \"gpt2\""), "{llama}");
    std::fs::remove_dir_all(root).ok();
}
