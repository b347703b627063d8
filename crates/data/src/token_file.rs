//! The tokenized corpus on disk: one flat array of token ids, memory-mapped.
//!
//! Tokenizing is done once. Ids are written as little-endian u16 when the
//! vocabulary fits in 65 536 entries (half the bytes of u32), else u32, into
//! `<name>.bin`, beside a small `<name>.json` saying how to read it and what it
//! was made from. Reading is a memory map: the OS pages in only the parts
//! the loader touches, so a corpus far larger than RAM trains fine.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use memmap2::Mmap;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::corpus::Corpus;
use crate::tokenizer::Tokenizer;
use crate::util::{fnv1a, write_atomic};

/// Documents tokenized per parallel chunk: bounds memory whatever the corpus size.
const DOCS_PER_CHUNK: usize = 2048;

/// The metadata stored beside the ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenFileMeta {
    /// Bytes per id: 2 (u16) or 4 (u32).
    pub bytes_per_token: usize,
    pub num_tokens: usize,
    pub num_documents: usize,
    /// Hash of the tokenizer.json that produced the ids.
    pub tokenizer_hash: u64,
    /// Paths, sizes and modification times of the corpus files.
    pub corpus_fingerprint: String,
}

/// A read-only, memory-mapped token array.
pub struct TokenFile {
    mmap: Mmap,
    pub meta: TokenFileMeta,
}

impl TokenFile {
    /// Loads `<cache>.bin` if it was made from this corpus and tokenizer;
    /// otherwise tokenizes the corpus (in parallel, streaming) and writes it.
    /// `on_progress(bytes_read)` lets the caller draw a progress bar.
    pub fn build_or_load(
        corpus: &Corpus,
        tokenizer: &Tokenizer,
        cache: &Path,
        mut on_progress: impl FnMut(u64),
    ) -> Result<(Self, bool)> {
        let (bin, json) = (cache.with_extension("bin"), cache.with_extension("json"));
        // The tokenizer and how text goes through it: since special-token
        // strings in documents are read as text, caches made before are rebuilt.
        let expected_hash = fnv1a(format!("specials-as-text\n{}", tokenizer.to_json()).as_bytes());
        let fingerprint = fingerprint(corpus)?;
        if let Ok(text) = std::fs::read_to_string(&json)
            && let Ok(meta) = serde_json::from_str::<TokenFileMeta>(&text)
        {
            // A cache from another tokenizer or another corpus would feed
            // the model ids that mean something else: rebuild instead.
            if meta.tokenizer_hash == expected_hash && meta.corpus_fingerprint == fingerprint {
                return Ok((Self::open(&bin, meta)?, true));
            }
        }
        let bytes_per_token = if tokenizer.vocab_size() <= 1 << 16 { 2 } else { 4 };
        if let Some(dir) = bin.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let tmp = bin.with_extension("bin.tmp");
        let mut out = BufWriter::new(File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?);
        let (mut num_tokens, mut num_documents, mut bytes_read) = (0usize, 0usize, 0u64);
        let mut docs = corpus.documents();
        loop {
            let chunk: Vec<String> = docs.by_ref().take(DOCS_PER_CHUNK).collect::<Result<_>>()?;
            if chunk.is_empty() {
                break;
            }
            // Encode the chunk on all cores; order is kept by `collect`.
            let encoded: Vec<Vec<u32>> = chunk.par_iter().map(|doc| tokenizer.encode(doc)).collect();
            for (doc, ids) in chunk.iter().zip(&encoded) {
                bytes_read += doc.len() as u64 + 1;
                // Every document ends with <|endoftext|>, so the model learns
                // where texts stop and generation knows when to end.
                for &id in ids.iter().chain(std::iter::once(&tokenizer.eot_id)) {
                    let written = match bytes_per_token {
                        2 => out.write_all(&(id as u16).to_le_bytes()),
                        _ => out.write_all(&id.to_le_bytes()),
                    };
                    written.with_context(|| format!("cannot write {}", tmp.display()))?;
                }
                num_tokens += ids.len() + 1;
            }
            num_documents += chunk.len();
            on_progress(bytes_read);
        }
        out.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|file| file.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        if num_tokens == 0 {
            bail!("the corpus contains no text");
        }
        std::fs::rename(&tmp, &bin).with_context(|| format!("cannot move {} to {}", tmp.display(), bin.display()))?;
        let meta = TokenFileMeta {
            bytes_per_token,
            num_tokens,
            num_documents,
            tokenizer_hash: expected_hash,
            corpus_fingerprint: fingerprint,
        };
        // The metadata goes last: a crash before this line leaves no valid
        // metadata, so the next run rebuilds instead of trusting a torn file.
        write_atomic(&json, serde_json::to_string_pretty(&meta)?.as_bytes())?;
        Ok((Self::open(&bin, meta)?, false))
    }

    fn open(bin: &Path, meta: TokenFileMeta) -> Result<Self> {
        let file = File::open(bin).with_context(|| format!("cannot open {}", bin.display()))?;
        // SAFETY: the file is only read, and this program never writes it
        // while mapped. (Another process truncating it would be undefined.)
        let mmap = unsafe { Mmap::map(&file)? };
        if mmap.len() != meta.num_tokens * meta.bytes_per_token {
            bail!(
                "{} has {} bytes, its metadata says {} tokens: delete it to rebuild",
                bin.display(),
                mmap.len(),
                meta.num_tokens
            );
        }
        Ok(Self { mmap, meta })
    }

    pub fn len(&self) -> usize {
        self.meta.num_tokens
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id at position `i`.
    pub fn get(&self, i: usize) -> u32 {
        let b = &self.mmap;
        match self.meta.bytes_per_token {
            2 => u16::from_le_bytes([b[2 * i], b[2 * i + 1]]) as u32,
            _ => u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]),
        }
    }

    /// Appends ids `start..start + len` to `out`.
    pub fn extend_into(&self, start: usize, len: usize, out: &mut Vec<u32>) {
        out.extend((start..start + len).map(|i| self.get(i)));
    }
}

/// Where a corpus's token cache lives inside `cache_dir`: named after the
/// corpus so different corpora never share one.
pub fn cache_path(cache_dir: &Path, corpus: &Corpus) -> PathBuf {
    let names: Vec<String> = corpus.files.iter().map(|f| f.display().to_string()).collect();
    let stem = corpus.files[0].file_stem().and_then(|s| s.to_str()).unwrap_or("corpus");
    cache_dir.join(format!("{stem}-{:08x}", fnv1a(names.join("\n").as_bytes()) as u32))
}

/// What identifies the corpus's contents cheaply: each file's path, size and
/// modification time.
pub(crate) fn fingerprint(corpus: &Corpus) -> Result<String> {
    let mut parts = Vec::new();
    for f in &corpus.files {
        let meta = std::fs::metadata(f).with_context(|| format!("cannot read {}", f.display()))?;
        let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        parts.push(format!("{}:{}:{}", f.display(), meta.len(), mtime.map_or(0, |d| d.as_nanos())));
    }
    Ok(parts.join("|"))
}
