//! Counting tokens when the upstream reported none.
//!
//! Which counter a model gets (the rule `docs/usage-accounting.md` documents):
//! the model name as recorded (what the client asked for), with any `vendor/`
//! prefix dropped (`openai/gpt-4o` → `gpt-4o`), is looked up in tiktoken-rs's
//! table of OpenAI model names and prefixes (`gpt-4o*`, `gpt-4.1*`, `gpt-5*`,
//! `o1*`, `o3*`, `o4-mini*`, `gpt-oss-*` → o200k_base; `gpt-4*`, `gpt-3.5-turbo*`,
//! `gpt-35-turbo*`, `text-embedding-3-*`, `text-embedding-ada-002` → cl100k_base;
//! `ft:<base>:…` as its base). Everything else, including OpenAI's retired
//! GPT-3 models (whose vocabularies are not linked in), is counted with the byte
//! heuristic: one token per four bytes of UTF-8, rounded up.
//!
//! Cost bounds: a vocabulary is loaded the first time a record needs it (on the
//! audit writer's thread, some tens of megabytes, once per process), and at most
//! [`TOKENIZE_MAX`] bytes of one text are tokenized; a longer text is counted by
//! scaling that part's count to the whole length.

use tiktoken_rs::CoreBPE;
use tiktoken_rs::tokenizer::{Tokenizer, get_tokenizer};

/// The most bytes of one text that are run through a tokenizer.
pub const TOKENIZE_MAX: usize = 64 * 1024;
/// Chat framing per message (role and separators), and the reply's priming.
pub const PER_MESSAGE: u64 = 3;
pub const REPLY_PRIMING: u64 = 3;

/// How a model's text is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    O200k,
    Cl100k,
    /// One token per four bytes, rounded up.
    Bytes,
}

impl Counter {
    pub fn for_model(model: Option<&str>) -> Self {
        let Some(model) = model else {
            return Self::Bytes;
        };
        let name = model.rsplit('/').next().unwrap_or(model);
        match get_tokenizer(name) {
            Some(Tokenizer::O200kBase | Tokenizer::O200kHarmony) => Self::O200k,
            Some(Tokenizer::Cl100kBase) => Self::Cl100k,
            Some(
                Tokenizer::P50kBase | Tokenizer::R50kBase | Tokenizer::P50kEdit | Tokenizer::Gpt2,
            )
            | None => Self::Bytes,
        }
    }

    /// Tokens in `text`.
    pub fn count(self, text: &str) -> u64 {
        let bpe: &CoreBPE = match self {
            Self::Bytes => return bytes_heuristic(text.len()),
            Self::O200k => tiktoken_rs::o200k_base_singleton(),
            Self::Cl100k => tiktoken_rs::cl100k_base_singleton(),
        };
        if text.len() <= TOKENIZE_MAX {
            return bpe.encode_ordinary(text).len() as u64;
        }
        let mut cut = TOKENIZE_MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let part = bpe.encode_ordinary(&text[..cut]).len() as u64;
        scale(part, cut as u64, text.len() as u64)
    }
}

/// One token per four bytes, rounded up.
pub fn bytes_heuristic(len: usize) -> u64 {
    (len as u64).div_ceil(4)
}

/// `count` tokens seen in `seen` bytes, extended to `total` bytes (rounded up).
pub fn scale(count: u64, seen: u64, total: u64) -> u64 {
    if seen == 0 || total <= seen {
        return count;
    }
    let scaled = u128::from(count) * u128::from(total);
    u64::try_from(scaled.div_ceil(u128::from(seen))).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_family_rule() {
        for m in [
            "gpt-4o",
            "gpt-4o-mini",
            "openai/gpt-4o-mini",
            "o3-mini",
            "gpt-5",
            "gpt-4.1-nano",
            "ft:gpt-4o-mini:acme::x1",
            "gpt-oss-20b",
        ] {
            assert_eq!(Counter::for_model(Some(m)), Counter::O200k, "{m}");
        }
        for m in [
            "gpt-4",
            "gpt-3.5-turbo-0125",
            "gpt-35-turbo",
            "text-embedding-3-small",
        ] {
            assert_eq!(Counter::for_model(Some(m)), Counter::Cl100k, "{m}");
        }
        for m in [
            "llama-3.1-8b",
            "mistral-large",
            "davinci",
            "claude-3-5-sonnet",
            "qwen/qwen3",
        ] {
            assert_eq!(Counter::for_model(Some(m)), Counter::Bytes, "{m}");
        }
        assert_eq!(Counter::for_model(None), Counter::Bytes);
    }

    #[test]
    fn counts_with_the_vocabularies() {
        assert_eq!(Counter::O200k.count("Hello world"), 2);
        assert_eq!(Counter::Cl100k.count("Hello world"), 2);
        assert_eq!(Counter::O200k.count(""), 0);
        assert_eq!(Counter::Bytes.count("Hello world"), 3);
        assert_eq!(Counter::Bytes.count("héllo"), 2, "bytes, not chars");
    }

    #[test]
    fn long_text_is_sampled_and_scaled() {
        let text = "lorem ipsum dolor sit amet ".repeat(10_000);
        let sampled = Counter::O200k.count(&text);
        let exact = tiktoken_rs::o200k_base_singleton()
            .encode_ordinary(&text)
            .len() as u64;
        let diff = sampled.abs_diff(exact);
        assert!(diff * 100 <= exact, "sampled {sampled} exact {exact}");
    }

    #[test]
    fn scaling() {
        assert_eq!(scale(10, 100, 100), 10);
        assert_eq!(scale(10, 100, 250), 25);
        assert_eq!(scale(10, 100, 251), 26);
        assert_eq!(scale(10, 0, 50), 10);
        assert_eq!(bytes_heuristic(0), 0);
        assert_eq!(bytes_heuristic(5), 2);
    }
}
