//! Byte-level BPE, trained with Hugging Face's `tokenizers`.
//!
//! "Byte-level" means text is first seen as UTF-8 bytes, so every possible
//! string is encodable (no unknown token): a Chinese character is three bytes
//! until training merges them. BPE then repeatedly merges the most frequent
//! adjacent pair into a new token until the vocabulary is full.
//! The saved `tokenizer.json` is the standard format, so GPT-2's or MiniMind's
//! own `tokenizer.json` loads here too, and so do GPT-2's original two files
//! (`Tokenizer::load`).
//!
//! One departure from GPT-2: every Chinese character is a piece of its own
//! before BPE runs, so merges stay inside a character (its three UTF-8 bytes
//! become one token) and never span several. GPT-2's rule treats a run of
//! Chinese characters like one English word, and on a small, repetitive
//! corpus BPE then merges whole sentences: trained on the shipped corpus it
//! made "米塔斯最喜欢的颜色是灰色" (a person's name and favourite colour)
//! one token, a fact the model could only recall whole, never about
//! someone else or in another sentence. Large real corpora merge Chinese
//! into words instead; this corpus is neither large nor real.

use std::path::Path;

use anyhow::{Context, Result, bail};
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, TokenizerBuilder};

/// Marks the end of a document; generation stops when the model emits it.
pub const EOT: &str = "<|endoftext|>";
/// Chat template markers (used from fine-tuning on).
pub const IM_START: &str = "<|im_start|>";
pub const IM_END: &str = "<|im_end|>";
/// Fills batches of unequal-length examples; never trained on.
pub const PAD: &str = "<|pad|>";
pub const SPECIAL_TOKENS: [&str; 4] = [EOT, IM_START, IM_END, PAD];

/// A loaded tokenizer and the ids of the special tokens this project uses.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The same tokenizer set to read special-token strings as plain text:
    /// what [`Tokenizer::encode`] uses, so that a `<|im_end|>` typed inside a
    /// message stays characters. Only the chat template inserts special
    /// tokens, by id.
    as_text: tokenizers::Tokenizer,
    /// Id of `<|endoftext|>`.
    pub eot_id: u32,
}

impl Tokenizer {
    /// Trains a byte-level BPE tokenizer of `vocab_size` tokens on `documents`.
    pub fn train<I>(documents: I, vocab_size: usize) -> Result<Self>
    where
        I: Iterator<Item = String> + Send,
    {
        if vocab_size < 256 + SPECIAL_TOKENS.len() {
            bail!(
                "--vocab-size {vocab_size} is too small: byte-level BPE needs at least 260 (256 bytes + 4 special tokens)"
            );
        }
        let specials = SPECIAL_TOKENS.iter().map(|t| AddedToken::from(*t, true)).collect();
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(specials)
            // Start from all 256 byte symbols so any text stays encodable.
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        // No prefix space: decode(encode(s)) must give back exactly s.
        let byte_level = ByteLevel::default().add_prefix_space(false).trim_offsets(false);
        // Each Chinese character alone first (see the module's documentation).
        let han = Split::new(SplitPattern::Regex(r"\p{Han}".into()), SplitDelimiterBehavior::Isolated, false)
            .map_err(anyhow::Error::msg)?;
        let pieces = Sequence::new(vec![han.into(), byte_level.into()]);
        let mut tk = TokenizerBuilder::new()
            .with_model(BPE::default())
            .with_normalizer(None::<NormalizerWrapper>)
            .with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(pieces)))
            .with_post_processor(None::<ByteLevel>)
            .with_decoder(Some(byte_level))
            .build()
            .map_err(anyhow::Error::msg)?;
        tk.train(&mut trainer, documents).map_err(anyhow::Error::msg)?;
        Self::from_inner(tk.into())
    }

    /// Loads a tokenizer from `path`: a `tokenizer.json` (ours, GPT-2's,
    /// MiniMind's: any Hugging Face one), or a folder holding one, or
    /// holding GPT-2's original vocabulary files (`vocab.json` +
    /// `merges.txt`, or `encoder.json` + `vocab.bpe`, the same two files
    /// under OpenAI's names).
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            bail!("tokenizer {} does not exist", path.display());
        }
        if !path.is_dir() {
            return Self::load_json(path);
        }
        if path.join("tokenizer.json").is_file() {
            return Self::load_json(&path.join("tokenizer.json"));
        }
        for (vocab, merges) in [("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")] {
            if path.join(vocab).is_file() && path.join(merges).is_file() {
                return Self::from_bpe_files(&path.join(vocab), &path.join(merges));
            }
        }
        bail!(
            "{} holds no tokenizer: expected tokenizer.json, vocab.json + merges.txt, or encoder.json + vocab.bpe",
            path.display()
        )
    }

    fn load_json(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow::anyhow!("{} is not a valid tokenizer.json: {e}", path.display()))?;
        Self::from_inner(inner)
    }

    /// GPT-2's tokenizer from its two original files: the vocabulary
    /// (token → id) and the merges, one pair per line in the order they
    /// were learned. The pieces are GPT-2's (its regex, no prefix space),
    /// and `<|endoftext|>`, already in the vocabulary, is made special.
    fn from_bpe_files(vocab: &Path, merges: &Path) -> Result<Self> {
        let (vocab_name, merges_name) = (vocab.to_string_lossy(), merges.to_string_lossy());
        let bpe = BPE::from_file(&vocab_name, &merges_name).build().map_err(|e| {
            anyhow::anyhow!("{} + {}: not a BPE vocabulary and its merges: {e}", vocab.display(), merges.display())
        })?;
        let byte_level = ByteLevel::default().add_prefix_space(false);
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner
            .with_pre_tokenizer(Some(byte_level))
            .with_post_processor(Some(byte_level.trim_offsets(false)))
            .with_decoder(Some(byte_level));
        if inner.token_to_id(EOT).is_none() {
            bail!("{} has no `{EOT}` token, which marks document ends", vocab.display());
        }
        inner.add_special_tokens(&[AddedToken::from(EOT, true)]);
        Self::from_inner(inner)
    }

    /// This tokenizer with those of the project's special tokens it lacks
    /// (the chat markers and the padding token: GPT-2 has only
    /// `<|endoftext|>`) added at the end of the vocabulary, and the ids
    /// they got. The model's embedding needs as many new rows.
    pub fn with_special_tokens(&self) -> Result<(Self, Vec<u32>)> {
        let mut inner = self.inner.clone();
        let missing: Vec<AddedToken> = SPECIAL_TOKENS
            .iter()
            .filter(|t| inner.token_to_id(t).is_none())
            .map(|t| AddedToken::from(*t, true))
            .collect();
        inner.add_special_tokens(&missing);
        let ids = missing.iter().map(|t| inner.token_to_id(&t.content).expect("just added")).collect();
        Ok((Self::from_inner(inner)?, ids))
    }

    fn from_inner(inner: tokenizers::Tokenizer) -> Result<Self> {
        // GPT-2's own file has <|endoftext|> but not our chat tokens: that is
        // fine for pretraining; fine-tuning checks for the chat tokens itself.
        let eot_id = inner
            .token_to_id(EOT)
            .with_context(|| format!("the tokenizer has no `{EOT}` token, which marks document ends"))?;
        let mut as_text = inner.clone();
        as_text.set_encode_special_tokens(true);
        Ok(Self { inner, as_text, eot_id })
    }

    /// Writes the standard `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner.save(path, false).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
    }

    /// The whole file as a string (hashed to detect a changed tokenizer).
    pub fn to_json(&self) -> String {
        self.inner.to_string(false).expect("a loaded tokenizer serialises")
    }

    /// Vocabulary size including the special tokens: the model's `vocab_size`.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Text → ids, all of it as text: a special-token string such as
    /// `<|endoftext|>` inside `text` becomes the ids of its characters, never
    /// the special token (which only the code inserts, by id).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.as_text.encode_fast(text, false).expect("byte-level BPE encodes any text").get_ids().to_vec()
    }

    /// Text → ids with special-token strings read as the special tokens:
    /// what the chat template's markers are, for tests that compare.
    #[cfg(test)]
    pub(crate) fn encode_with_markers(&self, text: &str) -> Vec<u32> {
        self.inner.encode_fast(text, false).expect("byte-level BPE encodes any text").get_ids().to_vec()
    }

    /// Ids → text, special tokens included (so a round trip is exact).
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, false).expect("ids come from this tokenizer")
    }

    /// The id of a special token such as `<|im_end|>`, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// The text of a growing list of ids, handed out in whole characters as
/// it grows: a Chinese character or an emoji can span several byte-level
/// tokens, and the first of them alone decodes to U+FFFD. What `chat`
/// prints and what the server streams.
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    /// Bytes of the decoded text already handed out.
    shown: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self { tokenizer, ids: Vec::new(), shown: 0 }
    }

    /// Adds one id; returns the text it completes (often empty mid-character).
    pub fn push(&mut self, id: u32) -> String {
        self.ids.push(id);
        // Decoding the whole list each time: the ids of one reply are few,
        // and pieces decoded apart can differ from the whole.
        let text = self.tokenizer.decode(&self.ids);
        if text.ends_with('\u{FFFD}') || text.len() <= self.shown || !text.is_char_boundary(self.shown) {
            return String::new();
        }
        let new = text[self.shown..].to_string();
        self.shown = text.len();
        new
    }

    /// The text not handed out yet, at the end of the reply: a character
    /// still incomplete (or bytes that never become one) as U+FFFD, so that
    /// everything pushed is handed out once.
    pub fn finish(&mut self) -> String {
        let text = self.tokenizer.decode(&self.ids);
        let rest = text.get(self.shown..).unwrap_or_default().to_string();
        self.shown = text.len();
        rest
    }

    /// Everything so far, including a character still incomplete.
    pub fn text(&self) -> String {
        self.tokenizer.decode(&self.ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_docs() -> Vec<String> {
        let en = "The river Tesk runs past Varnel. Mira bakes bread in Osk every morning. 7 plus 5 is 12.";
        let zh = "瓦内尔位于北方，泰斯克河从旁边流过。米拉每天早上在奥斯克烤面包。7加5等于12。";
        (0..50).map(|i| if i % 2 == 0 { en.to_string() } else { zh.to_string() }).collect()
    }

    #[test]
    fn english_chinese_and_special_tokens_round_trip() {
        let tok = Tokenizer::train(sample_docs().into_iter(), 400).unwrap();
        assert!(tok.vocab_size() <= 400);
        for text in [
            "The river Tesk runs past Varnel.",
            "瓦内尔位于北方，泰斯克河从旁边流过。",
            "  leading spaces, tabs\tand\nnew lines  ",
            "unseen words: quixotic zebra 🦓 ünïcödé",
            "<|im_start|>user\n你好<|im_end|>\n<|endoftext|>",
        ] {
            assert_eq!(tok.decode(&tok.encode(text)), text);
        }
        // Special-token strings in text stay text: several ids, none special.
        let special_ids: Vec<u32> = SPECIAL_TOKENS.iter().map(|t| tok.token_id(t).unwrap()).collect();
        for special in SPECIAL_TOKENS {
            let ids = tok.encode(&format!("say {special} now"));
            assert!(ids.len() > 3 && !ids.iter().any(|id| special_ids.contains(id)), "{special}: {ids:?}");
            assert_eq!(tok.decode(&ids), format!("say {special} now"));
        }
        // Training merged frequent text: far fewer tokens than bytes.
        let text = "Mira bakes bread in Osk every morning.";
        assert!(tok.encode(text).len() < text.len() / 2);
        // Chinese: one token per character at most, however often a phrase recurs.
        let zh = "米拉每天早上在奥斯克烤面包。";
        assert_eq!(tok.encode(zh).len(), zh.chars().count());
        assert_eq!(tok.encode("米拉")[..], tok.encode("米拉每天")[..2], "a name is the same tokens in any sentence");
    }

    /// GPT-2's two-file form, under both names, written by hand: three
    /// byte symbols ("Ġ" is GPT-2's stand-in for the space byte), two merges.
    #[test]
    fn loads_gpt2s_vocabulary_and_merges_and_adds_the_missing_special_tokens() {
        let dir = std::env::temp_dir().join(format!("minigpt-gpt2-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(Tokenizer::load(&dir).err().unwrap().to_string().contains("expected tokenizer.json, vocab.json"));
        let vocab = r#"{"a": 0, "b": 1, "Ġ": 2, "ab": 3, "Ġab": 4, "<|endoftext|>": 5}"#;
        let merges = "#version: 0.2\na b\nĠ ab\n";
        for (vocab_name, merges_name) in [("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")] {
            std::fs::write(dir.join(vocab_name), vocab).unwrap();
            std::fs::write(dir.join(merges_name), merges).unwrap();
            let tok = Tokenizer::load(&dir).unwrap();
            assert_eq!((tok.vocab_size(), tok.eot_id), (6, 5));
            assert_eq!(tok.encode("ab abba"), [3, 4, 1, 0], "ab | Ġab | b | a");
            assert_eq!(tok.decode(&[3, 4, 5]), "ab ab<|endoftext|>");
            std::fs::remove_file(dir.join(vocab_name)).unwrap();
            std::fs::remove_file(dir.join(merges_name)).unwrap();
        }
        std::fs::write(dir.join("vocab.json"), vocab).unwrap();
        std::fs::write(dir.join("merges.txt"), "#version: 0.2\na b c\n").unwrap();
        assert!(Tokenizer::load(&dir).err().unwrap().to_string().contains("not a BPE vocabulary and its merges"));
        std::fs::write(dir.join("merges.txt"), merges).unwrap();
        // The chat and padding tokens go after the vocabulary, in order.
        let (chat_ready, added) = Tokenizer::load(&dir).unwrap().with_special_tokens().unwrap();
        assert_eq!(added, [6, 7, 8]);
        assert_eq!(chat_ready.token_id(IM_END), Some(7));
        assert_eq!(chat_ready.encode("ab"), [3], "the rest is unchanged");
        assert!(chat_ready.with_special_tokens().unwrap().1.is_empty(), "nothing to add twice");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_text_stream_hands_out_whole_characters_only() {
        let tok = Tokenizer::train(sample_docs().into_iter(), 300).unwrap();
        let text = "Mira 米拉 🦓!";
        let mut stream = TextStream::new(&tok);
        let pieces: Vec<String> = tok.encode(text).into_iter().map(|id| stream.push(id)).collect();
        assert_eq!(pieces.concat(), text);
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
        assert!(pieces.iter().any(String::is_empty), "the emoji's first bytes wait for the rest: {pieces:?}");
        assert_eq!(stream.text(), text);
        assert_eq!(stream.finish(), "", "nothing left over");
        // A reply that ends inside a character hands its bytes out at the end.
        let half = tok.encode("🦓")[0];
        let mut stream = TextStream::new(&tok);
        assert_eq!((stream.push(half), stream.finish()), (String::new(), "\u{FFFD}".to_string()));
    }

    #[test]
    fn saves_and_loads_the_standard_format() {
        let dir = std::env::temp_dir().join(format!("minigpt-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tok = Tokenizer::train(sample_docs().into_iter(), 300).unwrap();
        let path = dir.join("tokenizer.json");
        tok.save(&path).unwrap();
        let loaded = Tokenizer::load(&path).unwrap();
        assert_eq!(loaded.encode("米拉 bakes"), tok.encode("米拉 bakes"));
        assert_eq!(loaded.eot_id, tok.eot_id);
        std::fs::write(&path, "{ not json").unwrap();
        let err = Tokenizer::load(&path).err().unwrap().to_string();
        assert!(err.contains("not a valid tokenizer.json"), "{err}");
        assert!(Tokenizer::load(&dir.join("missing.json")).is_err());
        std::fs::remove_dir_all(dir).ok();
    }
}
