//! Tokenizer and chat-template goldens (`../shared/golden/smollm2`, README section 1):
//! the tokenizer built from the GGUF's `tokenizer.ggml.*` metadata and the HF
//! `tokenizer.json` must both reproduce every case of `tokenizer_cases.json` exactly,
//! and the chat template (from `chat_template.jinja` and from the GGUF) must reproduce
//! every case of `chat_cases.json`, text and ids.

use npurt_models::tokenizer::{self, BpeParts, StreamDecoder, Tokenizer};
use npurt_models::{ChatMessage, ChatTemplate, ModelSource};
use npurt_tests::{golden, read_json, smollm2_gguf};
use serde_json::Value;

struct TokCase {
    name: String,
    text: String,
    ids: Vec<u32>,
    decoded: String,
    tokens: Vec<String>,
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn str_of(v: &Value) -> String {
    v.as_str().expect("string").to_string()
}

fn tok_cases() -> Vec<TokCase> {
    let j = read_json("smollm2/tokenizer_cases.json");
    let cases: Vec<TokCase> = j["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| TokCase {
            name: str_of(&c["name"]),
            text: str_of(&c["text"]),
            ids: ids_of(&c["ids"]),
            decoded: str_of(&c["decoded"]),
            tokens: c["tokens"]
                .as_array()
                .expect("tokens")
                .iter()
                .map(str_of)
                .collect(),
        })
        .collect();
    assert_eq!(cases.len(), 40, "tokenizer_cases.json should hold 40 cases");
    cases
}

struct ChatCase {
    name: String,
    messages: Vec<ChatMessage>,
    rendered: String,
    ids: Vec<u32>,
}

fn chat_cases() -> Vec<ChatCase> {
    let j = read_json("smollm2/chat_cases.json");
    let cases: Vec<ChatCase> = j["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| ChatCase {
            name: str_of(&c["name"]),
            messages: c["messages"]
                .as_array()
                .expect("messages")
                .iter()
                .map(|m| ChatMessage::new(str_of(&m["role"]), str_of(&m["content"])))
                .collect(),
            rendered: str_of(&c["rendered"]),
            ids: ids_of(&c["ids"]),
        })
        .collect();
    assert_eq!(cases.len(), 4, "chat_cases.json should hold 4 cases");
    cases
}

/// Every golden case: ids, byte-level token strings, and decode(ids), all exact.
fn check_tokenizer(tok: &Tokenizer, label: &str) {
    let mut failures = Vec::new();
    for c in tok_cases() {
        let ids = tokenizer::encode(tok, &c.text)
            .unwrap_or_else(|e| panic!("{label}/{}: encode: {e}", c.name));
        if ids != c.ids {
            failures.push(format!(
                "{}: ids\n  got      {:?}\n  expected {:?}",
                c.name, ids, c.ids
            ));
            continue;
        }
        let enc = tok.encode(c.text.as_str(), true).expect("encode");
        if enc.get_tokens() != c.tokens.as_slice() {
            failures.push(format!(
                "{}: tokens\n  got      {:?}\n  expected {:?}",
                c.name,
                enc.get_tokens(),
                c.tokens
            ));
        }
        let decoded = tokenizer::decode(tok, &c.ids)
            .unwrap_or_else(|e| panic!("{label}/{}: decode: {e}", c.name));
        if decoded != c.decoded {
            failures.push(format!(
                "{}: decoded {:?}, expected {:?}",
                c.name, decoded, c.decoded
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{label}: {} case(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn gguf_source() -> ModelSource {
    let path = smollm2_gguf();
    ModelSource::open(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

fn golden_template() -> ChatTemplate {
    let src = std::fs::read_to_string(golden("smollm2/chat_template.jinja"))
        .expect("chat_template.jinja");
    let cfg = read_json("smollm2/tokenizer_config.json");
    assert_eq!(
        cfg["chat_template"].as_str(),
        Some(src.as_str()),
        "chat_template.jinja != tokenizer_config.json"
    );
    ChatTemplate::new(src, str_of(&cfg["bos_token"]), str_of(&cfg["eos_token"]))
        .expect("golden chat template compiles")
}

fn check_chat(template: &ChatTemplate, tok: &Tokenizer, label: &str) {
    for c in chat_cases() {
        let rendered = template
            .render(&c.messages, true)
            .unwrap_or_else(|e| panic!("{label}/{}: render: {e}", c.name));
        assert_eq!(
            rendered, c.rendered,
            "{label}/{}: rendered text differs",
            c.name
        );
        let ids = tokenizer::encode(tok, &rendered)
            .unwrap_or_else(|e| panic!("{label}/{}: encode: {e}", c.name));
        assert_eq!(
            ids, c.ids,
            "{label}/{}: ids of the rendered text differ",
            c.name
        );
    }
}

// (a) The tokenizer built from the GGUF metadata alone.
#[test]
fn gguf_tokenizer_reproduces_golden_cases() {
    let src = gguf_source();
    assert_eq!(src.tokenizer.get_vocab_size(true), 49152);
    check_tokenizer(&src.tokenizer, "gguf");
}

// (b) The HF tokenizer.json.
#[test]
fn tokenizer_json_reproduces_golden_cases() {
    let tok =
        tokenizer::from_file(&golden("smollm2/tokenizer.json")).expect("tokenizer.json loads");
    check_tokenizer(&tok, "tokenizer.json");
}

/// `from_bpe_parts` on GGUF-style parts rebuilt from tokenizer.json (vocab by id,
/// "a b" merges, special added tokens as control tokens): independent of the GGUF loader.
#[test]
fn bpe_parts_from_tokenizer_json_reproduce_golden_cases() {
    let j: Value = serde_json::from_str(
        &std::fs::read_to_string(golden("smollm2/tokenizer.json")).expect("tokenizer.json"),
    )
    .expect("tokenizer.json parses");
    let vocab = j["model"]["vocab"].as_object().expect("vocab");
    let mut tokens = vec![String::new(); vocab.len()];
    for (t, id) in vocab {
        tokens[id.as_u64().expect("id") as usize] = t.clone();
    }
    let mut token_types = vec![1; tokens.len()];
    for at in j["added_tokens"].as_array().expect("added_tokens") {
        let id = at["id"].as_u64().expect("id") as usize;
        assert_eq!(tokens[id], str_of(&at["content"]));
        token_types[id] = if at["special"].as_bool() == Some(true) {
            3
        } else {
            4
        };
    }
    let merges = j["model"]["merges"]
        .as_array()
        .expect("merges")
        .iter()
        .map(|m| match m {
            Value::Array(p) => format!("{} {}", str_of(&p[0]), str_of(&p[1])),
            other => str_of(other),
        })
        .collect();
    let parts = BpeParts {
        model: "gpt2".into(),
        pre: Some("smollm".into()),
        tokens,
        merges,
        token_types,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        unknown_token_id: Some(0),
        padding_token_id: Some(2),
        add_bos_token: false,
        add_eos_token: false,
    };
    let tok = tokenizer::from_bpe_parts(&parts).expect("from_bpe_parts");
    check_tokenizer(&tok, "bpe_parts(tokenizer.json)");
    check_chat(&golden_template(), &tok, "bpe_parts(tokenizer.json)");
}

// (c) The golden template: rendered text and its ids, with both tokenizers.
#[test]
fn golden_chat_template_reproduces_chat_cases() {
    let template = golden_template();
    let tok =
        tokenizer::from_file(&golden("smollm2/tokenizer.json")).expect("tokenizer.json loads");
    check_chat(&template, &tok, "golden template + tokenizer.json");
    let src = gguf_source();
    check_chat(
        &template,
        &src.tokenizer,
        "golden template + gguf tokenizer",
    );
}

// (d) The template stored in the GGUF renders the same.
#[test]
fn gguf_chat_template_reproduces_chat_cases() {
    let src = gguf_source();
    let template = src
        .chat_template
        .as_ref()
        .expect("the SmolLM2 GGUF has tokenizer.chat_template");
    assert_eq!(template.source(), golden_template().source());
    assert_eq!(template.bos_token, "<|im_start|>");
    assert_eq!(template.eos_token, "<|im_end|>");
    check_chat(template, &src.tokenizer, "gguf template + gguf tokenizer");
}

/// Feeds ids one by one; returns the chunks (the last one from `finish`).
fn stream(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    let mut sd = StreamDecoder::new();
    let mut chunks: Vec<String> = ids
        .iter()
        .map(|&id| sd.push(tok, id).expect("push"))
        .collect();
    chunks.push(sd.finish(tok).expect("finish"));
    chunks
}

fn check_stream(tok: &Tokenizer, label: &str) {
    let cases = tok_cases();
    let multibyte = [
        "chinese_1",
        "chinese_2",
        "japanese_1",
        "emoji_1",
        "emoji_zwj",
        "mixed_lang",
    ];
    for name in multibyte {
        assert!(
            cases.iter().any(|c| c.name == name),
            "golden case {name} missing"
        );
    }
    for c in &cases {
        let chunks = stream(tok, &c.ids);
        assert_eq!(
            chunks.concat(),
            c.decoded,
            "{label}/{}: streamed text differs",
            c.name
        );
        if !c.decoded.contains('\u{FFFD}') {
            assert!(
                chunks.iter().all(|s| !s.contains('\u{FFFD}')),
                "{label}/{}: a chunk has a partial character: {chunks:?}",
                c.name
            );
        }
        if multibyte.contains(&c.name.as_str()) {
            // The cases really do split characters across tokens: some ids emit nothing.
            let held_back = chunks[..c.ids.len()]
                .iter()
                .filter(|s| s.is_empty())
                .count();
            assert!(
                held_back > 0,
                "{label}/{}: expected some ids to complete no character",
                c.name
            );
        }
    }
}

// (e) Streaming detokenization of the Chinese/emoji (and all other) cases.
#[test]
fn stream_decoder_reproduces_decoded_text() {
    let tok =
        tokenizer::from_file(&golden("smollm2/tokenizer.json")).expect("tokenizer.json loads");
    check_stream(&tok, "tokenizer.json");
    let src = gguf_source();
    check_stream(&src.tokenizer, "gguf");
}

#[test]
fn decode_rejects_out_of_range_ids() {
    let tok =
        tokenizer::from_file(&golden("smollm2/tokenizer.json")).expect("tokenizer.json loads");
    assert!(tokenizer::decode(&tok, &[49152]).is_err());
    let mut sd = StreamDecoder::new();
    assert!(sd.push(&tok, u32::MAX).is_err());
}
