//! Getting from a corpus path to a tokenizer and a token file, reusing
//! earlier work: both are cached in a folder (`runs/cache` by default),
//! keyed by the corpus and the vocabulary size.

use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::corpus::Corpus;
use crate::token_file::{TokenFile, cache_path, fingerprint};
use crate::tokenizer::Tokenizer;
use crate::util::fnv1a;

/// BPE training reads at most this much text: merges learned from a few
/// hundred MB barely change with more, while memory and time keep growing.
const TOKENIZER_TRAIN_BYTES: usize = 256 << 20;

/// Loads the tokenizer at `path` if given, else the one cached for this
/// corpus (as it is now: an edited corpus gets a new tokenizer) and
/// vocabulary size, else trains one on the corpus and caches it.
/// Returns the tokenizer and whether it was trained just now.
pub fn load_or_train_tokenizer(
    path: Option<&Path>,
    corpus: &Corpus,
    vocab_size: usize,
    cache_dir: &Path,
) -> Result<(Tokenizer, bool)> {
    if let Some(path) = path {
        return Ok((Tokenizer::load(path).context("--tokenizer")?, false));
    }
    let contents = fnv1a(fingerprint(corpus)?.as_bytes()) as u32;
    let cached = cache_path(cache_dir, corpus).with_extension(format!("{contents:08x}.bpe{vocab_size}.json"));
    if let Ok(tok) = Tokenizer::load(&cached) {
        return Ok((tok, false));
    }
    // Stream the documents into the trainer; the first corpus error stops
    // the stream and is reported after.
    let error = Mutex::new(None);
    let mut budget = TOKENIZER_TRAIN_BYTES;
    let docs = corpus.documents().map_while(|doc| match doc {
        Ok(doc) if budget > 0 => {
            budget = budget.saturating_sub(doc.len());
            Some(doc)
        }
        Ok(_) => None,
        Err(e) => {
            *error.lock().expect("not poisoned") = Some(e);
            None
        }
    });
    let tok = Tokenizer::train(docs, vocab_size)?;
    if let Some(e) = error.into_inner().expect("not poisoned") {
        return Err(e);
    }
    std::fs::create_dir_all(cache_dir).with_context(|| format!("cannot create {}", cache_dir.display()))?;
    tok.save(&cached)?;
    Ok((tok, true))
}

/// The corpus's token file, built on first use (with a progress bar).
pub fn tokenize_corpus(corpus: &Corpus, tokenizer: &Tokenizer, cache_dir: &Path) -> Result<(TokenFile, bool)> {
    let bar = ProgressBar::new(corpus.total_bytes());
    bar.set_style(
        ProgressStyle::with_template("tokenizing {bar:30} {bytes}/{total_bytes} ({bytes_per_sec})")
            .expect("valid template"),
    );
    let result =
        TokenFile::build_or_load(corpus, tokenizer, &cache_path(cache_dir, corpus), |done| bar.set_position(done));
    bar.finish_and_clear();
    result
}
