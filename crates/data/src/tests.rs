//! Token cache, split and window tests.

use std::path::PathBuf;
use std::sync::Arc;

use crate::*;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("minigpt-data-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn docs() -> Vec<String> {
    (0..40).map(|i| format!("Town {i} lies by the river. {i} plus 1 is {}.", i + 1)).collect()
}

/// A corpus file of `docs()` in a fresh folder, and a tokenizer trained on it.
fn corpus_fixture(name: &str) -> (PathBuf, Corpus, Tokenizer) {
    let dir = temp_dir(name);
    let corpus_path = dir.join("corpus.txt");
    std::fs::write(&corpus_path, docs().join("\n\n")).unwrap();
    let corpus = Corpus::open(&corpus_path).unwrap();
    (dir, corpus, Tokenizer::train(docs().into_iter(), 300).unwrap())
}

#[test]
fn split_sizes() {
    assert_eq!(train_val_split(1000, 0.1), (0..900, 900..1000));
    assert_eq!(train_val_split(1001, 0.1), (0..901, 901..1001));
    assert_eq!(train_val_split(50, 0.0), (0..50, 50..50));
}

#[test]
fn window_counts() {
    // 10 tokens, length 4, stride 4: inputs start at 0 and 4 (window at 8 would need token 12).
    assert_eq!(num_windows(10, 4, 4), 2);
    assert_eq!(num_windows(9, 4, 4), 2); // 0..4 → targets 1..5; 4..8 → targets 5..9
    assert_eq!(num_windows(8, 4, 4), 1);
    assert_eq!(num_windows(10, 4, 1), 6); // starts 0..=5
    assert_eq!(num_windows(10, 4, 2), 3); // starts 0, 2, 4
    assert_eq!(num_windows(4, 4, 1), 0); // too short for a single target
    assert_eq!(num_windows(5, 4, 1), 1);
}

#[test]
fn token_cache_round_trips_and_is_rebuilt_when_the_tokenizer_changes() {
    let (dir, corpus, tok) = corpus_fixture("cache");
    let cache = token_file::cache_path(&dir.join("cache"), &corpus);

    let (file, reused) = TokenFile::build_or_load(&corpus, &tok, &cache, |_| {}).unwrap();
    assert!(!reused);
    assert_eq!(file.meta.num_documents, 40);
    assert_eq!(file.meta.bytes_per_token, 2);
    // The file holds each document's ids followed by <|endoftext|>.
    let mut expected = Vec::new();
    for d in docs() {
        expected.extend(tok.encode(&d));
        expected.push(tok.eot_id);
    }
    let mut stored = Vec::new();
    file.extend_into(0, file.len(), &mut stored);
    assert_eq!(stored, expected);

    let (_, reused) = TokenFile::build_or_load(&corpus, &tok, &cache, |_| {}).unwrap();
    assert!(reused, "same corpus and tokenizer: reuse");
    let other_tok = Tokenizer::train(docs().into_iter(), 280).unwrap();
    let (rebuilt, reused) = TokenFile::build_or_load(&corpus, &other_tok, &cache, |_| {}).unwrap();
    assert!(!reused, "a different tokenizer must not reuse the ids");
    assert_ne!(rebuilt.len(), expected.len());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn windows_shift_targets_by_one_and_batches_are_row_major() {
    let (dir, corpus, tok) = corpus_fixture("windows");
    let (file, _) = TokenFile::build_or_load(&corpus, &tok, &dir.join("c"), |_| {}).unwrap();
    let n = file.len();
    let file = Arc::new(file);
    let (train, val) = train_val_split(n, 0.1);
    let ds = WindowDataset::new(file.clone(), train.clone(), 8, 3);
    assert_eq!(ds.len(), num_windows(train.len(), 8, 3));
    let val_ds = WindowDataset::new(file.clone(), val.clone(), 8, 8);
    assert_eq!(val_ds.len(), num_windows(val.len(), 8, 8));

    let batch = ds.batch(&[0, 2]);
    assert_eq!((batch.batch_size, batch.seq_len, batch.inputs.len()), (2, 8, 16));
    let all: Vec<u32> = (0..n).map(|i| file.get(i)).collect();
    assert_eq!(batch.inputs[..8], all[0..8]);
    assert_eq!(batch.targets[..8], all[1..9]);
    assert_eq!(batch.inputs[8..], all[6..14]); // window 2 starts at 2·stride
    // The last training window's target ends inside the training range.
    let last = ds.batch(&[ds.len() - 1]);
    let last_start = (ds.len() - 1) * 3;
    assert!(last_start + 8 < train.end);
    assert_eq!(last.targets, all[last_start + 1..last_start + 9]);

    let sub = ds.clone().subset(5, 1);
    assert_eq!(sub.len(), 5);
    assert_eq!(ds.clone().subset(5, 1).batch(&[0, 1, 2, 3, 4]), sub.batch(&[0, 1, 2, 3, 4]));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn the_cached_tokenizer_is_reused_until_the_corpus_changes() {
    let (dir, _, _) = corpus_fixture("tokcache");
    let corpus_path = dir.join("corpus.txt");
    let cache = dir.join("cache");
    let load =
        || crate::prepare::load_or_train_tokenizer(None, &Corpus::open(&corpus_path).unwrap(), 300, &cache).unwrap().1;
    assert!(load(), "first use trains");
    assert!(!load(), "second use loads the cached one");
    // An edited corpus (here: one more document, so its size changes) must
    // not be tokenized with the tokenizer learned from the old text.
    let mut text = std::fs::read_to_string(&corpus_path).unwrap();
    text.push_str("\n\nA new document about rivers and mountains.");
    std::fs::write(&corpus_path, text).unwrap();
    assert!(load(), "a changed corpus trains a new tokenizer");
}
