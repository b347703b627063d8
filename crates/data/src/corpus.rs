//! Reading a pretraining corpus, one document at a time.
//!
//! Accepted: a `.txt` file (documents separated by a blank line), a `.jsonl`
//! file with a `"text"` field per line (MiniMind's pretraining format), or a
//! folder holding any number of both. Documents are streamed, never all held
//! in memory, so the corpus can be far larger than RAM.

use std::fs::File;
use std::io::{BufRead, BufReader, Lines};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::util::without_bom;

/// The files of a corpus, in a fixed (sorted) order.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub files: Vec<PathBuf>,
    /// Skip (and count) JSONL lines that do not parse instead of stopping.
    pub skip_bad_lines: bool,
}

impl Corpus {
    /// A file, or a folder searched recursively for `.txt` and `.jsonl`.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            bail!("corpus {} does not exist", path.display());
        }
        let mut files = Vec::new();
        if path.is_dir() {
            collect_files(path, &mut files)?;
            if files.is_empty() {
                bail!("corpus folder {} holds no .txt or .jsonl file", path.display());
            }
        } else {
            files.push(path.to_path_buf());
        }
        files.sort();
        for file in &files {
            if std::fs::metadata(file)?.len() == 0 {
                bail!("corpus file {} is empty", file.display());
            }
        }
        Ok(Self { files, skip_bad_lines: false })
    }

    /// Iterates over every document of every file.
    pub fn documents(&self) -> Documents {
        Documents { corpus: self.clone(), file_idx: 0, current: None, skipped: 0 }
    }

    /// Total bytes on disk (for progress bars).
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum()
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read folder {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("txt" | "jsonl")) {
            out.push(path);
        }
    }
    Ok(())
}

/// The file currently being read.
struct OpenFile {
    path: PathBuf,
    lines: Lines<BufReader<File>>,
    line_no: usize,
    jsonl: bool,
}

/// Streaming iterator of documents; yields an error (with file and line) for
/// a bad JSONL line unless `skip_bad_lines` is set.
pub struct Documents {
    corpus: Corpus,
    file_idx: usize,
    current: Option<OpenFile>,
    /// Bad lines skipped so far (with `skip_bad_lines`).
    pub skipped: usize,
}

impl Documents {
    fn open_next(&mut self) -> Result<bool> {
        let Some(path) = self.corpus.files.get(self.file_idx).cloned() else { return Ok(false) };
        self.file_idx += 1;
        let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let jsonl = path.extension().is_some_and(|e| e == "jsonl");
        self.current = Some(OpenFile { path, lines: BufReader::new(file).lines(), line_no: 0, jsonl });
        Ok(true)
    }

    fn next_document(&mut self) -> Result<Option<String>> {
        loop {
            if self.current.is_none() && !self.open_next()? {
                return Ok(None);
            }
            let file = self.current.as_mut().expect("opened above");
            let doc = if file.jsonl {
                next_jsonl(file, self.corpus.skip_bad_lines, &mut self.skipped)?
            } else {
                next_paragraph(file)?
            };
            match doc {
                Some(doc) => return Ok(Some(doc)),
                None => self.current = None, // this file is done
            }
        }
    }
}

impl Iterator for Documents {
    type Item = Result<String>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_document().transpose()
    }
}

/// The next blank-line-separated paragraph of a text file.
fn next_paragraph(file: &mut OpenFile) -> Result<Option<String>> {
    let mut doc = String::new();
    for line in file.lines.by_ref() {
        file.line_no += 1;
        let line = line.with_context(|| format!("{}:{}: not valid UTF-8", file.path.display(), file.line_no))?;
        let line = if file.line_no == 1 { without_bom(&line) } else { &line };
        if line.trim().is_empty() {
            if !doc.is_empty() {
                return Ok(Some(doc));
            }
            continue;
        }
        if !doc.is_empty() {
            doc.push('\n');
        }
        doc.push_str(line);
    }
    Ok((!doc.is_empty()).then_some(doc))
}

/// The `text` of the next JSONL line.
fn next_jsonl(file: &mut OpenFile, skip_bad: bool, skipped: &mut usize) -> Result<Option<String>> {
    for line in file.lines.by_ref() {
        file.line_no += 1;
        let where_ = || format!("{}:{}", file.path.display(), file.line_no);
        let line = line.with_context(|| format!("{}: not valid UTF-8", where_()))?;
        if line.trim().is_empty() {
            continue;
        }
        let text = match serde_json::from_str::<serde_json::Value>(without_bom(&line)) {
            Ok(value) => match value.get("text").and_then(|t| t.as_str()) {
                Some(text) => Ok(text.to_string()),
                None => Err(format!("{}: expected an object with a string field \"text\"", where_())),
            },
            Err(e) => Err(format!("{}: not valid JSON ({e})", where_())),
        };
        match text {
            Ok(text) if !text.is_empty() => return Ok(Some(text)),
            Ok(_) => continue, // an empty document teaches nothing
            Err(msg) if skip_bad => {
                *skipped += 1;
                let _ = msg;
            }
            Err(msg) => bail!("{msg} (pass --skip-bad-lines to skip such lines)"),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("minigpt-corpus-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn reads_paragraphs_jsonl_and_folders() {
        let dir = temp_dir("ok");
        std::fs::write(dir.join("a.txt"), "first doc\nsecond line\n\n\nsecond doc\n").unwrap();
        std::fs::write(dir.join("b.jsonl"), "{\"text\": \"third\"}\n\n{\"text\": \"第四\", \"id\": 4}\n").unwrap();
        std::fs::write(dir.join("ignored.md"), "not part of the corpus").unwrap();
        let docs: Vec<String> = Corpus::open(&dir).unwrap().documents().map(Result::unwrap).collect();
        assert_eq!(docs, ["first doc\nsecond line", "second doc", "third", "第四"]);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn bad_input_names_file_and_line() {
        let dir = temp_dir("bad");
        assert!(Corpus::open(&dir.join("nope.txt")).unwrap_err().to_string().contains("does not exist"));
        assert!(Corpus::open(&dir).unwrap_err().to_string().contains("no .txt or .jsonl"));
        std::fs::write(dir.join("empty.txt"), "").unwrap();
        assert!(Corpus::open(&dir.join("empty.txt")).unwrap_err().to_string().contains("is empty"));

        let bad = dir.join("bad.jsonl");
        std::fs::write(&bad, "{\"text\": \"ok\"}\nnot json\n{\"title\": \"no text\"}\n{\"text\": \"also ok\"}\n")
            .unwrap();
        let mut corpus = Corpus::open(&bad).unwrap();
        let err = corpus.documents().collect::<Result<Vec<_>>>().unwrap_err().to_string();
        assert!(err.contains("bad.jsonl:2: not valid JSON"), "{err}");
        corpus.skip_bad_lines = true;
        let mut docs = corpus.documents();
        let texts: Vec<String> = docs.by_ref().map(Result::unwrap).collect();
        assert_eq!(texts, ["ok", "also ok"]);
        assert_eq!(docs.skipped, 2);
        std::fs::write(&bad, "{\"title\": \"no text\"}\n").unwrap();
        let err = Corpus::open(&bad).unwrap().documents().next().unwrap().unwrap_err().to_string();
        assert!(err.contains("bad.jsonl:1: expected an object with a string field \"text\""), "{err}");
        std::fs::remove_dir_all(dir).ok();
    }
}
