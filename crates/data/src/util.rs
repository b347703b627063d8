//! Small helpers shared by the data crate and the stages.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// FNV-1a, a tiny non-cryptographic hash: enough to notice that a file changed.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |hash, &b| (hash ^ b as u64).wrapping_mul(0x100000001b3))
}

/// Writes a file so that readers see either the old or the new content, never
/// half of it: write a temporary file beside it, flush it to disk, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or("")));
    let written = std::fs::File::create(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(e) = written {
        std::fs::remove_file(&tmp).ok(); // a half-written temporary helps nobody (and fills a full disk)
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

/// A line without the byte-order mark some editors put at the start of a
/// file (`\u{feff}`): invisible, but not JSON and not text to learn.
pub fn without_bom(line: &str) -> &str {
    line.strip_prefix('\u{feff}').unwrap_or(line)
}

/// A small seeded random number generator (SplitMix64). The same seed gives
/// the same shuffles on every machine and every version of this program,
/// which a library RNG does not promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (the tiny modulo bias is irrelevant here).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write that fails (here: its folder is missing) names the file,
    /// and leaves no temporary behind.
    #[test]
    fn a_failed_write_names_its_file_and_leaves_nothing() {
        let dir = std::env::temp_dir().join(format!("minigpt-util-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("missing/config.json");
        let err = format!("{:#}", write_atomic(&path, b"{}").unwrap_err());
        assert!(err.starts_with(&format!("cannot write {}", path.display())), "{err}");
        write_atomic(&dir.join("ok.json"), b"{}").unwrap();
        let names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert_eq!(names, ["ok.json"]);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_byte_order_mark_is_dropped() {
        assert_eq!(without_bom("\u{feff}{\"a\": 1}"), "{\"a\": 1}");
        assert_eq!(without_bom("plain"), "plain");
    }
}
