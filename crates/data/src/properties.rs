//! Property tests: the readers never panic on any input, whatever it is,
//! and any message content goes through the chat template as text.

use std::sync::OnceLock;

use proptest::prelude::*;

use crate::chat::{Message, Role, render_chatml, tokenize_conversation};
use crate::tokenizer::{SPECIAL_TOKENS, Tokenizer};

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let docs = ["What river is Varnel beside? The Tesk.", "米拉住在奥斯克。", "user assistant system"];
        Tokenizer::train(docs.iter().cycle().take(60).map(|s| s.to_string()), 320).unwrap()
    })
}

/// Text made of pieces a hostile or careless input would hold: markers,
/// newlines, JSON punctuation, other scripts, and any characters at all.
fn nasty_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("<|im_end|>".to_string()),
        Just("<|im_start|>assistant\n".to_string()),
        Just("<|endoftext|>".to_string()),
        Just("<|pad|>".to_string()),
        Just("<|".to_string()),
        Just("\n".to_string()),
        Just("\"},{\"role\":\"".to_string()),
        Just("米拉".to_string()),
        any::<String>(),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
}

proptest! {
    #[test]
    fn readers_never_panic_on_any_line(line in any::<String>(), nasty in nasty_text()) {
        for text in [&line, &nasty] {
            let _ = crate::sft::parse_line(text);
            let _ = crate::dpo::parse_pair(text);
        }
    }

    #[test]
    fn readers_never_panic_on_almost_valid_json(user in nasty_text(), reply in nasty_text()) {
        let turns = serde_json::json!([{"role": "user", "content": user}, {"role": "assistant", "content": reply}]);
        let sft = serde_json::json!({ "conversations": turns, "answer": reply }).to_string();
        if let Ok((messages, _)) = crate::sft::parse_line(&sft) {
            prop_assert_eq!(messages.len(), 2);
        }
        let pair = serde_json::json!({ "prompt": user, "chosen": reply, "rejected": "no" }).to_string();
        let _ = crate::dpo::parse_pair(&pair);
    }

    #[test]
    fn any_content_goes_through_the_template_as_text(user in nasty_text(), reply in nasty_text()) {
        let tok = tokenizer();
        let messages = vec![Message::new(Role::User, user), Message::new(Role::Assistant, reply)];
        let (ids, supervised) = tokenize_conversation(tok, &messages);
        prop_assert_eq!(ids.len(), supervised.len());
        // Exactly the template's markers: one opening and one closing per turn, nothing else special.
        let count = |token: &str| ids.iter().filter(|&&id| Some(id) == tok.token_id(token)).count();
        prop_assert_eq!(count("<|im_start|>"), 2);
        prop_assert_eq!(count("<|im_end|>"), 2);
        prop_assert_eq!(count("<|endoftext|>") + count("<|pad|>"), 0);
        // And the ids read back as the rendered conversation, character for character.
        prop_assert_eq!(tok.decode(&ids), render_chatml(&messages, false));
    }

    #[test]
    fn encoding_any_text_round_trips_without_special_tokens(text in nasty_text()) {
        let tok = tokenizer();
        let ids = tok.encode(&text);
        prop_assert_eq!(tok.decode(&ids), text);
        let specials: Vec<u32> = SPECIAL_TOKENS.iter().filter_map(|t| tok.token_id(t)).collect();
        prop_assert!(ids.iter().all(|id| !specials.contains(id)));
    }
}

#[test]
fn the_corpus_reader_never_panics_on_arbitrary_bytes() {
    let dir = std::env::temp_dir().join(format!("minigpt-props-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut state = crate::util::SplitMix64(7);
    for _ in 0..200 {
        let len = state.below(400);
        let bytes: Vec<u8> = (0..len).map(|_| state.next_u64() as u8).collect();
        for name in ["c.txt", "c.jsonl"] {
            let path = dir.join(name);
            std::fs::write(&path, &bytes).unwrap();
            if let Ok(corpus) = crate::Corpus::open(&path) {
                // Each document is Ok or a named error; never a panic.
                corpus.documents().take(1000).for_each(drop);
            }
        }
    }
    std::fs::remove_dir_all(dir).ok();
}
