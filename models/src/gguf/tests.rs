//! The GGUF reader and llama loader, on files written by `testfiles::GgufWriter`.

use super::*;
use crate::testfiles::{self, GgufWriter, TinyLlama};
use crate::{ModelError, Result};

fn parse(bytes: &[u8]) -> Result<GgufFile> {
    GgufFile::parse(bytes, "test.gguf")
}

#[test]
fn metadata_of_every_type_round_trips() {
    let nested = GgufArray::Array(vec![
        GgufArray::I32(vec![1, -2]),
        GgufArray::String(vec!["x".into()]),
        GgufArray::Array(vec![GgufArray::Bool(vec![true])]),
    ]);
    let values = vec![
        ("u8", GgufValue::U8(200)),
        ("i8", GgufValue::I8(-5)),
        ("u16", GgufValue::U16(60000)),
        ("i16", GgufValue::I16(-30000)),
        ("u32", GgufValue::U32(4_000_000_000)),
        ("i32", GgufValue::I32(-7)),
        ("u64", GgufValue::U64(1 << 50)),
        ("i64", GgufValue::I64(-(1 << 50))),
        ("f32", GgufValue::F32(1.5)),
        ("f64", GgufValue::F64(-2.25)),
        ("bool", GgufValue::Bool(true)),
        ("str", GgufValue::String("héllo".into())),
        ("arr.u8", GgufValue::Array(GgufArray::U8(vec![1, 2, 3]))),
        ("arr.f64", GgufValue::Array(GgufArray::F64(vec![0.5]))),
        (
            "arr.str",
            GgufValue::Array(GgufArray::String(vec!["a".into(), "".into()])),
        ),
        ("arr.empty", GgufValue::Array(GgufArray::U64(vec![]))),
        ("arr.nested", GgufValue::Array(nested)),
    ];
    let mut w = GgufWriter::new();
    for (k, v) in &values {
        w.kv(k, v.clone());
    }
    let (bytes, _) = w.build();
    let f = parse(&bytes).unwrap();
    assert_eq!(f.metadata.len(), values.len());
    for (k, v) in &values {
        assert_eq!(f.get(k), Some(v), "{k}");
    }
    assert_eq!(f.get_u64("u8"), Some(200));
    assert_eq!(f.get_u64("i32"), None, "negative ints are not u64");
    assert_eq!(f.get_i64("i64"), Some(-(1 << 50)));
    assert_eq!(f.get_f32("f64"), Some(-2.25));
    assert_eq!(f.get_str("str"), Some("héllo"));
    assert_eq!(f.get_str_array("arr.str").map(<[String]>::len), Some(2));
    assert!(f.tensors.is_empty());
}

#[test]
fn version_2_is_accepted_and_1_refused() {
    let mut w = GgufWriter::new();
    w.version = 2;
    assert_eq!(parse(&w.build().0).unwrap().version, 2);
    w.version = 1;
    assert!(matches!(
        parse(&w.build().0),
        Err(ModelError::BadFormat { .. })
    ));
}

#[test]
fn tiny_llama_loads_with_config_and_exact_values() {
    let tiny = TinyLlama::default();
    let path = testfiles::temp_path("tiny_llama.gguf");
    std::fs::write(&path, tiny.gguf().0).unwrap();
    let (cfg, store, file) = load(&path).unwrap();
    std::fs::remove_file(&path).ok();

    assert_eq!(
        (
            cfg.num_hidden_layers,
            cfg.hidden_size,
            cfg.intermediate_size
        ),
        (tiny.layers, tiny.hidden, tiny.inter)
    );
    assert_eq!(
        (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim
        ),
        (tiny.heads, tiny.kv_heads, tiny.head_dim)
    );
    assert_eq!(cfg.vocab_size, tiny.vocab);
    assert_eq!(cfg.rope_theta, 100000.0);
    assert_eq!(cfg.rms_norm_eps, 1e-5);
    assert_eq!(cfg.max_position_embeddings, 256);
    assert!(cfg.tie_word_embeddings);
    assert_eq!(
        (cfg.bos_token_id, cfg.eos_token_ids.clone()),
        (Some(1), vec![2])
    );
    assert!(!store.contains("lm_head.weight"));
    assert_eq!(
        file.summary(),
        format!(
            "GGUF v3, {} tensors: q4_1 x{}, f32 x{}, q8_0 x{}",
            2 + 9 * tiny.layers,
            5 * tiny.layers,
            3 * tiny.layers + 1,
            tiny.layers + 1
        )
    );

    // Q8_0 embedding, no permutation: exact.
    let emb = store.to_f32("model.embed_tokens.weight").unwrap();
    assert_eq!(emb.shape(), [tiny.vocab, tiny.hidden]);
    let emb = emb.as_f32().unwrap();
    for r in 0..tiny.vocab {
        for c in 0..tiny.hidden {
            assert_eq!(
                emb[r * tiny.hidden + c],
                testfiles::pattern_value(GgmlType::Q8_0, r, c),
                "embed[{r},{c}]"
            );
        }
    }
}

/// HF row `d` of each head is GGUF row `2 * (d % (hd/2)) + d / (hd/2)`, written out
/// here independently of `UnpermuteRope`.
fn gguf_row_of_hf_row(r: usize, head_dim: usize) -> usize {
    let (head, d) = (r / head_dim, r % head_dim);
    let half = head_dim / 2;
    head * head_dim + if d < half { 2 * d } else { 2 * (d - half) + 1 }
}

#[test]
fn q_and_k_rows_are_unpermuted() {
    let tiny = TinyLlama::default();
    let path = testfiles::temp_path("tiny_llama_perm.gguf");
    std::fs::write(&path, tiny.gguf().0).unwrap();
    let (cfg, store, _) = load(&path).unwrap();
    std::fs::remove_file(&path).ok();

    // q is F32, k is Q4_1 in the tiny model: both must come out in HF row order.
    for (name, ty, rows) in [
        ("q_proj", GgmlType::F32, cfg.q_width()),
        ("k_proj", GgmlType::Q4_1, cfg.kv_width()),
    ] {
        for layer in 0..tiny.layers {
            let t = store
                .to_f32(&format!("model.layers.{layer}.self_attn.{name}.weight"))
                .unwrap();
            assert_eq!(t.shape(), [rows, tiny.hidden]);
            let v = t.as_f32().unwrap();
            for r in 0..rows {
                let src = gguf_row_of_hf_row(r, tiny.head_dim);
                for c in 0..tiny.hidden {
                    assert_eq!(
                        v[r * tiny.hidden + c],
                        testfiles::pattern_value(ty, src, c),
                        "{name} row {r} col {c}"
                    );
                }
            }
        }
    }
    // Spot checks of the permutation itself (head_dim 16, half 8).
    assert_eq!(gguf_row_of_hf_row(1, 16), 2);
    assert_eq!(gguf_row_of_hf_row(8, 16), 1);
    assert_eq!(gguf_row_of_hf_row(16 + 9, 16), 16 + 3);
    // v is not permuted.
    let v = store
        .to_f32("model.layers.0.self_attn.v_proj.weight")
        .unwrap();
    assert_eq!(
        v.as_f32().unwrap()[tiny.hidden],
        testfiles::pattern_value(TinyLlama::V_TYPE, 1, 0)
    );
}

#[test]
fn untied_output_becomes_lm_head() {
    let tiny = TinyLlama::default();
    let mut w = tiny.gguf_writer();
    w.tensor(
        "output.weight",
        &[tiny.hidden as u64, tiny.vocab as u64],
        GgmlType::F32,
        testfiles::pattern_bytes(GgmlType::F32, tiny.vocab, tiny.hidden),
    );
    let path = testfiles::temp_path("tiny_llama_untied.gguf");
    std::fs::write(&path, w.build().0).unwrap();
    let (cfg, store, _) = load(&path).unwrap();
    std::fs::remove_file(&path).ok();
    assert!(!cfg.tie_word_embeddings);
    assert_eq!(
        store.fact("lm_head.weight").unwrap().shape,
        [tiny.vocab, tiny.hidden]
    );
}

#[test]
fn unsupported_type_names_the_tensor() {
    let tiny = TinyLlama::default();
    let mut w = tiny.gguf_writer();
    w.tensor(
        "output.weight",
        &[256, tiny.vocab as u64],
        GgmlType::Q6_K,
        vec![0; 210 * tiny.vocab],
    );
    let f = parse(&w.build().0).unwrap();
    assert_eq!(
        f.tensor("output.weight").unwrap().ggml_type.to_string(),
        "q6_k"
    );
    let err = f.tensor("output.weight").unwrap().dtype().unwrap_err();
    assert!(
        matches!(&err, ModelError::UnsupportedDType { tensor, dtype } if tensor == "output.weight" && dtype == "q6_k"),
        "{err}"
    );
}

#[test]
fn tokenizer_parts_come_from_metadata() {
    let f = parse(&TinyLlama::default().gguf().0).unwrap();
    let p = f.tokenizer_parts().unwrap();
    assert_eq!(p.model, "gpt2");
    assert_eq!(p.tokens.len(), TinyLlama::default().vocab);
    assert_eq!(p.token_types.len(), p.tokens.len());
    assert_eq!(
        (p.bos_token_id, p.eos_token_id, p.add_bos_token),
        (Some(1), Some(2), false)
    );
    assert_eq!(f.token_string(Some(2)), Some("<|im_end|>"));
    assert_eq!(f.token_string(Some(1_000_000)), None);
}

#[test]
fn misaligned_and_overlapping_offsets_are_lies() {
    let tiny = TinyLlama::default();
    let (bytes, layout) = tiny.gguf();
    let (_, at) = layout.tensor_offset_fields[1];
    let mut b = bytes.clone();
    b[at..at + 8].copy_from_slice(&1u64.to_le_bytes());
    assert!(
        matches!(parse(&b), Err(ModelError::LyingHeader { field, .. }) if field.contains("offset"))
    );
    let mut b = bytes.clone();
    b[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
    let err = parse(&b).unwrap_err();
    assert!(
        matches!(err, ModelError::LyingHeader { .. }) && err.to_string().contains("overlaps"),
        "{err}"
    );
}

#[test]
fn absurd_alignment_is_refused() {
    let mut w = GgufWriter::new();
    w.kv("general.alignment", GgufValue::U32(3));
    let err = parse(&w.build().0).unwrap_err();
    assert!(err.to_string().contains("general.alignment"), "{err}");
}
