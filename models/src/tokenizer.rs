//! Tokenizers: the HF `tokenizers` crate, built either from a `tokenizer.json` or from
//! the `tokenizer.ggml.*` metadata of a GGUF file (byte-level BPE).
//!
//! Besides the two constructors ([`from_file`], [`from_bpe_parts`]) this module has the
//! helpers the runtime uses: [`encode`] (HF `tok(text).input_ids`), [`decode`]
//! (`skip_special_tokens=False`) and [`StreamDecoder`] for emitting text token by token.

use crate::{ModelError, Result};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::{SpecialToken, TemplateProcessing};
pub use tokenizers::Tokenizer;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

/// What a GGUF file says about its BPE tokenizer (`tokenizer.ggml.*`), already
/// extracted from the metadata by the GGUF loader.
#[derive(Clone, Debug, Default)]
pub struct BpeParts {
    /// `tokenizer.ggml.model` (only "gpt2" = byte-level BPE is supported).
    pub model: String,
    /// `tokenizer.ggml.pre` (e.g. "smollm", "llama-bpe"): picks the pre-tokenizer regex.
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// "left right" pairs, highest priority first.
    pub merges: Vec<String>,
    /// llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Vec<i32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub unknown_token_id: Option<u32>,
    pub padding_token_id: Option<u32>,
    pub add_bos_token: bool,
    pub add_eos_token: bool,
}

/// llama.cpp token type: control token (`<|im_start|>`, `</s>`, ...).
pub const TOKEN_TYPE_CONTROL: i32 = 3;
/// llama.cpp token type: user-defined token (matched verbatim in text, not special).
pub const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The llama3 pre-tokenizer regex (llama.cpp `LLAMA_VOCAB_PRE_TYPE_LLAMA3`, HF Llama-3 `tokenizer.json`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The Qwen2 pre-tokenizer regex: llama3's, with digits split one by one.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn tok_err(msg: impl Into<String>) -> ModelError {
    ModelError::Tokenizer(msg.into())
}

/// The pre-tokenizer for a `tokenizer.ggml.pre` value.
fn pre_tokenizer_for(pre: Option<&str>) -> Result<PreTokenizerWrapper> {
    // GPT-2: ByteLevel with its built-in GPT-2 regex, exactly as HF converts these GGUFs.
    let gpt2 = || PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
    let split_then_bytes = |regex: &str| -> Result<PreTokenizerWrapper> {
        let split = Split::new(
            SplitPattern::Regex(regex.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| {
            tok_err(format!(
                "pre-tokenizer regex for `{}`: {e}",
                pre.unwrap_or("")
            ))
        })?;
        Ok(PreTokenizerWrapper::Sequence(PreSequence::new(vec![
            PreTokenizerWrapper::Split(split),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
        ])))
    };
    match pre {
        None | Some("default") | Some("gpt2") | Some("gpt-2") | Some("smollm") => Ok(gpt2()),
        Some("llama-bpe") | Some("llama3") | Some("llama-v3") => split_then_bytes(LLAMA3_REGEX),
        Some("qwen2") => split_then_bytes(QWEN2_REGEX),
        Some(other) => {
            log::warn!(
                "tokenizer.ggml.pre = `{other}` is not known; using the GPT-2 byte-level regex"
            );
            Ok(gpt2())
        }
    }
}

/// Builds the tokenizer a GGUF file describes.
///
/// Byte-level BPE (`tokenizer.ggml.model == "gpt2"`) with the vocabulary and merges of the
/// file, a ByteLevel pre-tokenizer (regex picked by `tokenizer.ggml.pre`), a ByteLevel
/// decoder, no normalizer, and a post-processor that adds BOS/EOS only when the file asks
/// for it. Control tokens (type 3) become special added tokens and user-defined tokens
/// (type 4) plain added tokens, so `<|im_start|>` written in text encodes to one id.
/// Malformed metadata is an error, never a panic.
pub fn from_bpe_parts(parts: &BpeParts) -> Result<Tokenizer> {
    if parts.model != "gpt2" {
        return Err(tok_err(format!(
            "tokenizer.ggml.model `{}` is not supported (only `gpt2`, byte-level BPE)",
            parts.model
        )));
    }
    let n = parts.tokens.len();
    if n == 0 {
        return Err(tok_err("tokenizer.ggml.tokens is empty"));
    }
    if n > u32::MAX as usize {
        return Err(tok_err(format!(
            "tokenizer.ggml.tokens has {n} entries, more than u32 ids can address"
        )));
    }
    if !parts.token_types.is_empty() && parts.token_types.len() != n {
        return Err(tok_err(format!(
            "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {n}",
            parts.token_types.len()
        )));
    }
    for (field, id) in [
        ("bos_token_id", parts.bos_token_id),
        ("eos_token_id", parts.eos_token_id),
        ("unknown_token_id", parts.unknown_token_id),
        ("padding_token_id", parts.padding_token_id),
    ] {
        if let Some(id) = id {
            if id as usize >= n {
                return Err(tok_err(format!(
                    "tokenizer.ggml.{field} = {id} is out of range (vocabulary of {n})"
                )));
            }
        }
    }

    // Vocabulary: the first occurrence of a duplicated string keeps its id.
    let mut vocab = Vocab::with_capacity(n);
    let mut duplicates = 0usize;
    for (id, tok) in parts.tokens.iter().enumerate() {
        if vocab.contains_key(tok) {
            duplicates += 1;
        } else {
            vocab.insert(tok.clone(), id as u32);
        }
    }
    if duplicates > 0 {
        log::warn!("tokenizer.ggml.tokens: {duplicates} duplicated token strings; the first id of each is used");
    }

    let mut merges = Vec::with_capacity(parts.merges.len());
    for (i, m) in parts.merges.iter().enumerate() {
        let pair = m
            .split_once(' ')
            .filter(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains(' '));
        let Some((a, b)) = pair else {
            return Err(tok_err(format!(
                "tokenizer.ggml.merges[{i}] = {m:?} is not of the form \"left right\""
            )));
        };
        for side in [a, b] {
            if !vocab.contains_key(side) {
                return Err(tok_err(format!(
                    "tokenizer.ggml.merges[{i}] = {m:?}: `{side}` is not in the vocabulary"
                )));
            }
        }
        if !vocab.contains_key(&format!("{a}{b}")) {
            return Err(tok_err(format!(
                "tokenizer.ggml.merges[{i}] = {m:?}: the merged token `{a}{b}` is not in the vocabulary"
            )));
        }
        merges.push((a.to_string(), b.to_string()));
    }

    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| tok_err(format!("building the BPE model: {e}")))?;

    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(pre_tokenizer_for(parts.pre.as_deref())?));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    tok.with_post_processor(Some(post_processor(parts)?));

    // Added tokens, in id order. Without token types, the declared BOS/EOS/UNK/PAD ids
    // are the only tokens known to be special.
    let mut special = Vec::new();
    let mut user = Vec::new();
    if parts.token_types.is_empty() {
        let mut ids: Vec<u32> = [
            parts.unknown_token_id,
            parts.bos_token_id,
            parts.eos_token_id,
            parts.padding_token_id,
        ]
        .into_iter()
        .flatten()
        .collect();
        ids.sort_unstable();
        ids.dedup();
        special.extend(
            ids.into_iter()
                .map(|id| AddedToken::from(parts.tokens[id as usize].clone(), true)),
        );
    } else {
        for (tok_str, &ty) in parts.tokens.iter().zip(&parts.token_types) {
            if tok_str.is_empty() {
                continue;
            }
            match ty {
                TOKEN_TYPE_CONTROL => special.push(AddedToken::from(tok_str.clone(), true)),
                TOKEN_TYPE_USER_DEFINED => user.push(AddedToken::from(tok_str.clone(), false)),
                _ => {}
            }
        }
    }
    tok.add_special_tokens(&special);
    tok.add_tokens(&user);
    Ok(tok)
}

/// `$A` alone, with BOS in front / EOS behind when the GGUF asks for them.
fn post_processor(parts: &BpeParts) -> Result<TemplateProcessing> {
    let mut specials = Vec::new();
    let (mut single, mut pair) = (Vec::new(), Vec::new());
    let mut push = |key: &str, id_field: &str, id: Option<u32>| -> Result<()> {
        let id = id.ok_or_else(|| {
            tok_err(format!(
                "add_{key}_token is set but tokenizer.ggml.{id_field} is missing"
            ))
        })?;
        let st = SpecialToken::new(
            key.to_string(),
            vec![id],
            vec![parts.tokens[id as usize].clone()],
        )
        .map_err(|e| tok_err(format!("post-processor: {e}")))?;
        specials.push(st);
        Ok(())
    };
    if parts.add_bos_token {
        push("bos", "bos_token_id", parts.bos_token_id)?;
        single.push("bos");
        pair.push("bos");
    }
    single.push("$A");
    pair.push("$A");
    if parts.add_eos_token {
        push("eos", "eos_token_id", parts.eos_token_id)?;
        single.push("eos");
        pair.push("eos");
    }
    if parts.add_bos_token {
        pair.push("bos:1");
    }
    pair.push("$B:1");
    if parts.add_eos_token {
        pair.push("eos:1");
    }
    TemplateProcessing::builder()
        .try_single(single)
        .and_then(|b| b.try_pair(pair))
        .map_err(|e| tok_err(format!("post-processor template: {e}")))?
        .special_tokens(specials)
        .build()
        .map_err(|e| tok_err(format!("post-processor: {e}")))
}

/// Loads a `tokenizer.json`.
pub fn from_file(path: &std::path::Path) -> Result<Tokenizer> {
    // A FIFO would block the tokenizers crate's read forever.
    crate::source::require_file(path)?;
    Tokenizer::from_file(path)
        .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))
}

/// `tok(text).input_ids` as HF does it: special tokens written in the text are matched,
/// and the post-processor adds BOS/EOS if the tokenizer is configured to.
pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let enc = tok
        .encode(text, true)
        .map_err(|e| tok_err(format!("encoding: {e}")))?;
    Ok(enc.get_ids().to_vec())
}

/// `tok.decode(ids, skip_special_tokens=False)`. An id outside the vocabulary is an error
/// (the tokenizers crate would drop it silently).
pub fn decode(tok: &Tokenizer, ids: &[u32]) -> Result<String> {
    check_ids(tok, ids)?;
    tok.decode(ids, false)
        .map_err(|e| tok_err(format!("decoding: {e}")))
}

fn check_ids(tok: &Tokenizer, ids: &[u32]) -> Result<()> {
    if let Some(&bad) = ids.iter().find(|&&id| tok.id_to_token(id).is_none()) {
        return Err(tok_err(format!(
            "token id {bad} is outside the vocabulary ({} tokens)",
            tok.get_vocab_size(true)
        )));
    }
    Ok(())
}

/// Incremental detokenizer for generation: feed ids one at a time, get back the text
/// that became final with that id.
///
/// A byte-level token may carry only part of a UTF-8 character (Chinese, emoji), and
/// some decoders change earlier text depending on what follows, so each step decodes a
/// small window of recent ids and emits only what lies beyond the text already emitted;
/// while the window's text ends in an incomplete character (U+FFFD) nothing is emitted.
/// The concatenation of everything [`push`](Self::push) and [`finish`](Self::finish)
/// return equals `decode(all ids)`.
///
/// The decoder holds no reference to the tokenizer, so it can live next to it in a
/// session; pass the same tokenizer to every call.
#[derive(Clone, Debug, Default)]
pub struct StreamDecoder {
    /// Ids not yet retired: `ids[..read]` is context already emitted, `ids[read..]` pending.
    ids: Vec<u32>,
    /// How many of `ids` have had their text emitted.
    read: usize,
    skip_special_tokens: bool,
}

impl StreamDecoder {
    /// A decoder that keeps special tokens in the text (`skip_special_tokens=False`).
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder that drops special tokens (`<|im_end|>`, ...) from the text.
    pub fn skipping_special_tokens() -> Self {
        StreamDecoder {
            skip_special_tokens: true,
            ..Self::default()
        }
    }

    /// Feeds one id; returns the newly completed text (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        check_ids(tok, &[id])?;
        self.ids.push(id);
        let prefix = self.decode(tok, &self.ids[..self.read])?;
        let text = self.decode(tok, &self.ids)?;
        if text.len() <= prefix.len() || text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let new = suffix_beyond(&prefix, &text).to_string();
        // Keep the last emitted chunk's ids as context for the next step.
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        Ok(new)
    }

    /// Flushes whatever is still pending (e.g. an incomplete character at the end of
    /// generation, which comes out as U+FFFD exactly as a full `decode` would write it)
    /// and resets the decoder.
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String> {
        let out = if self.read < self.ids.len() {
            let prefix = self.decode(tok, &self.ids[..self.read])?;
            let text = self.decode(tok, &self.ids)?;
            suffix_beyond(&prefix, &text).to_string()
        } else {
            String::new()
        };
        self.reset();
        Ok(out)
    }

    /// Forgets all state (start of a new reply).
    pub fn reset(&mut self) {
        self.ids.clear();
        self.read = 0;
    }

    fn decode(&self, tok: &Tokenizer, ids: &[u32]) -> Result<String> {
        if ids.is_empty() {
            return Ok(String::new());
        }
        tok.decode(ids, self.skip_special_tokens)
            .map_err(|e| tok_err(format!("decoding: {e}")))
    }
}

/// The part of `text` beyond `prefix`. `prefix` is normally a prefix of `text`; if a
/// decoder rewrote earlier text, emit from the first differing character instead.
fn suffix_beyond<'a>(prefix: &str, text: &'a str) -> &'a str {
    if let Some(rest) = text.strip_prefix(prefix) {
        return rest;
    }
    let common: usize = prefix
        .chars()
        .zip(text.chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a.len_utf8())
        .sum();
    &text[common..]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny byte-level vocabulary: all 256 byte symbols, a few merges, two specials.
    fn tiny_parts() -> BpeParts {
        let alphabet: Vec<char> = {
            let mut v: Vec<char> = ByteLevel::alphabet().into_iter().collect();
            v.sort_unstable();
            v
        };
        let mut tokens = vec![
            "<|endoftext|>".to_string(),
            "<|im_start|>".to_string(),
            "<|im_end|>".to_string(),
        ];
        tokens.extend(alphabet.iter().map(|c| c.to_string()));
        tokens.extend(["he", "hel", "hell", "hello", "Ġw", "Ġwo"].map(String::from));
        let mut token_types = vec![1; tokens.len()];
        token_types[..3].fill(TOKEN_TYPE_CONTROL);
        BpeParts {
            model: "gpt2".into(),
            pre: Some("smollm".into()),
            merges: ["h e", "he l", "hel l", "hell o", "Ġ w", "Ġw o"]
                .map(String::from)
                .to_vec(),
            tokens,
            token_types,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
            unknown_token_id: Some(0),
            padding_token_id: Some(2),
            add_bos_token: false,
            add_eos_token: false,
        }
    }

    fn err_text(r: Result<Tokenizer>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn tiny_tokenizer_round_trips() {
        let parts = tiny_parts();
        let tok = from_bpe_parts(&parts).unwrap();
        let ids = encode(&tok, "<|im_start|>hello world<|im_end|>").unwrap();
        assert_eq!(ids[0], 1);
        assert_eq!(*ids.last().unwrap(), 2);
        assert_eq!(
            ids[1],
            parts.tokens.iter().position(|t| t == "hello").unwrap() as u32
        );
        assert_eq!(
            decode(&tok, &ids).unwrap(),
            "<|im_start|>hello world<|im_end|>"
        );
        assert!(decode(&tok, &[parts.tokens.len() as u32]).is_err());
    }

    #[test]
    fn bos_eos_are_added_when_asked() {
        let mut parts = tiny_parts();
        parts.add_bos_token = true;
        parts.add_eos_token = true;
        let tok = from_bpe_parts(&parts).unwrap();
        let ids = encode(&tok, "hello").unwrap();
        assert_eq!(ids.len(), 3);
        assert_eq!((ids[0], ids[2]), (1, 2));
        parts.bos_token_id = None;
        assert!(err_text(from_bpe_parts(&parts)).contains("bos_token_id"));
    }

    #[test]
    fn unsupported_model_is_named() {
        let mut parts = tiny_parts();
        parts.model = "llama".into();
        let e = err_text(from_bpe_parts(&parts));
        assert!(e.contains("`llama`"), "{e}");
    }

    #[test]
    fn empty_vocabulary_is_rejected() {
        let mut parts = tiny_parts();
        parts.tokens.clear();
        parts.token_types.clear();
        assert!(err_text(from_bpe_parts(&parts)).contains("empty"));
    }

    #[test]
    fn token_types_length_must_match() {
        let mut parts = tiny_parts();
        parts.token_types.pop();
        let e = err_text(from_bpe_parts(&parts));
        assert!(e.contains("token_type"), "{e}");
    }

    #[test]
    fn malformed_merges_are_rejected() {
        for bad in ["he", "h  e", " he", "h e l", "q z", "h o"] {
            let mut parts = tiny_parts();
            parts.merges.push(bad.to_string());
            let e = err_text(from_bpe_parts(&parts));
            assert!(e.contains("merges["), "{bad:?}: {e}");
        }
    }

    #[test]
    fn special_ids_must_be_in_range() {
        let mut parts = tiny_parts();
        parts.eos_token_id = Some(parts.tokens.len() as u32);
        let e = err_text(from_bpe_parts(&parts));
        assert!(e.contains("eos_token_id"), "{e}");
    }

    #[test]
    fn pre_tokenizer_variants_build() {
        for pre in [
            None,
            Some("gpt2"),
            Some("llama-bpe"),
            Some("qwen2"),
            Some("something-new"),
        ] {
            let mut parts = tiny_parts();
            parts.pre = pre.map(String::from);
            let tok = from_bpe_parts(&parts).unwrap();
            let ids = encode(&tok, "hello world").unwrap();
            assert_eq!(decode(&tok, &ids).unwrap(), "hello world", "pre = {pre:?}");
        }
    }

    #[test]
    fn stream_decoder_holds_back_partial_characters() {
        let parts = tiny_parts();
        let tok = from_bpe_parts(&parts).unwrap();
        // "é😀" is 2 + 4 bytes; with no merges for them each byte is one token.
        let ids = encode(&tok, "hé😀 x").unwrap();
        let mut sd = StreamDecoder::new();
        let mut out = Vec::new();
        for &id in &ids {
            out.push(sd.push(&tok, id).unwrap());
        }
        out.push(sd.finish(&tok).unwrap());
        assert_eq!(out.concat(), "hé😀 x");
        assert!(out.iter().all(|s| !s.contains('\u{FFFD}')));
        // An incomplete character at the end is flushed as U+FFFD, like `decode`.
        let mut sd = StreamDecoder::new();
        let first = encode(&tok, "é").unwrap()[0];
        assert_eq!(sd.push(&tok, first).unwrap(), "");
        assert_eq!(sd.finish(&tok).unwrap(), decode(&tok, &[first]).unwrap());
    }
}
