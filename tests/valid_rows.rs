//! A prefill chunk costs its valid rows (`npurt_graph::rows`): the CPU backend computes
//! only the rows its `n_valid` input says are tokens. On the real SmolLM2 the logits of
//! every prompt row, the KV cache they leave behind (seen through the next tokens'
//! logits) and the greedy continuation equal those of a backend that computes every
//! padded row, bit for bit, at each preset; and the graphs where rows mix (the ViT)
//! are left whole. The wgpu backend sizes its dispatches to the valid rows on the GPU;
//! a LLaMA model there gives the same bits as its padded runs too, with either kernel
//! family.

use npurt_backends::cpu::{CpuBackend, CpuOptions};
use npurt_backends::wgpu::{KernelFamily, WgpuBackend, WgpuOptions};
use npurt_backends::{Backend, Registry};
use npurt_graph::rows::ValidRows;
use npurt_graph::{Op, PrecisionPolicy};
use npurt_models::llama::{InputKind, LogitsMode};
use npurt_models::random_llama::{RandomLlama, TokenizerKvs, WeightDType};
use npurt_models::siglip::{self, SiglipGraphOptions, SiglipVisionConfig, VisionStage};
use npurt_models::ModelSource;
use npurt_runtime::{GenerateOptions, LoadOptions, Model, Runtime, Session};
use npurt_tests::{llama_graph, small_llama_shape, smollm2_gguf, smollm2_graph};
use std::sync::Arc;

/// A runtime whose `cpu` backend computes a chunk's padding rows too.
fn padded_runtime() -> Runtime {
    let mut r = Registry::with_builtin();
    r.register("cpu", |o| {
        Ok(Arc::new(CpuBackend::new(CpuOptions {
            threads: o.threads,
            padded_rows: true,
        })) as Arc<dyn Backend>)
    });
    Runtime::with_registry(r)
}

/// The logits of `ids` and then of `turn` fed into a fresh session of `model`, and the
/// greedy text of 12 tokens after them.
fn prompt_turn_and_text(model: Arc<Model>, ids: &[u32], turn: &[u32]) -> (Vec<Vec<f32>>, String) {
    let mut s = Session::new(model).unwrap();
    let mut logits = s.feed_all_logits(ids).unwrap();
    logits.extend(s.feed_all_logits(turn).unwrap());
    let gen = GenerateOptions {
        max_tokens: 12,
        ..Default::default()
    };
    let text = s.generate(&[], &gen, |_, _| true).unwrap().text;
    (logits, text)
}

/// Two runs' logits, row by row, bit for bit, and their texts.
fn assert_same(what: &str, ours: &(Vec<Vec<f32>>, String), padded: &(Vec<Vec<f32>>, String)) {
    assert_eq!(ours.0.len(), 153, "{what}");
    for (i, (a, b)) in ours.0.iter().zip(&padded.0).enumerate() {
        assert!(a == b, "{what}: row {i}'s logits differ");
    }
    assert_eq!(ours.1, padded.1, "{what}");
}

#[test]
fn llama_chunks_have_valid_rows_and_the_vit_has_none() {
    for (logits, input) in [
        (LogitsMode::Last, InputKind::Ids),
        (LogitsMode::All, InputKind::Ids),
        (LogitsMode::Last, InputKind::Embeddings),
    ] {
        let g = smollm2_graph(128, logits, input, PrecisionPolicy::W4A16);
        let what = format!("{logits:?} {input:?}");
        let v = ValidRows::of(&g).unwrap_or_else(|| panic!("{what}: no valid rows"));
        assert_eq!(v.rows, 128, "{what}");
        assert!(matches!(&g.node(v.n_valid).op, Op::Input { name, .. } if name == "n_valid"));
        let count = |pred: &dyn Fn(&Op) -> bool| {
            g.ids()
                .filter(|&id| pred(&g.node(id).op) && v.limits(&g, id))
                .count()
        };
        // Every matmul, attention and KV write of the 30 layers runs on valid rows only.
        let matmuls = g
            .ids()
            .filter(|&id| matches!(g.node(id).op, Op::MatMul { .. }))
            .count();
        let limited_matmuls = count(&|op| matches!(op, Op::MatMul { .. }));
        let head = usize::from(logits == LogitsMode::Last);
        assert_eq!(
            limited_matmuls + head,
            matmuls,
            "{what}: the head reads one row"
        );
        assert_eq!(
            count(&|op| matches!(op, Op::Attention { .. })),
            30,
            "{what}"
        );
        assert_eq!(count(&|op| matches!(op, Op::KvWrite)), 60, "{what}");
        let logits_out = g.outputs.iter().find(|(n, _)| n == "logits").unwrap().1;
        assert_eq!(
            v.token_rows[logits_out.0],
            logits == LogitsMode::All,
            "{what}"
        );
    }
    // Decode has one row; the ViT's attention mixes a tile's rows.
    let g = smollm2_graph(1, LogitsMode::Last, InputKind::Ids, PrecisionPolicy::W4A16);
    assert_eq!(ValidRows::of(&g), None);
    let vit = siglip::build(
        &SiglipVisionConfig::so400m(),
        &SiglipGraphOptions {
            batch: 1,
            stage: VisionStage::Encoder,
            feature: Default::default(),
            taps: false,
        },
    )
    .unwrap();
    assert_eq!(ValidRows::of(&vit), None);
}

#[test]
fn valid_rows_give_the_logits_cache_and_text_of_padded_chunks() {
    let model_path = smollm2_gguf();
    // 150 tokens: a whole chunk and one of 22 valid rows, then 3 tokens fed as a short
    // turn (a chunk of 3 rows), then greedy decode.
    let src = ModelSource::open(&model_path).unwrap();
    let ids = src
        .tokenizer
        .encode(
            "The quick brown fox jumps over the lazy dog. ".repeat(15),
            false,
        )
        .unwrap()
        .get_ids()[..150]
        .to_vec();
    let turn = &ids[10..13];
    for precision in [
        PrecisionPolicy::W4A16,
        PrecisionPolicy::W4A8,
        PrecisionPolicy::F32,
    ] {
        let run = |rt: &Runtime| {
            let opts = LoadOptions {
                threads: Some(2),
                precision: precision.clone(),
                ctx: Some(512),
                ..Default::default()
            };
            prompt_turn_and_text(rt.load(&model_path, opts).unwrap(), &ids, turn)
        };
        assert_same(
            precision.name,
            &run(&Runtime::new()),
            &run(&padded_runtime()),
        );
    }
}

/// A small random LLaMA (GQA, 2 layers, a byte-level vocabulary) on wgpu, each kernel
/// family, valid rows against padded rows: the logits of 150 prompt rows (a whole
/// 128-row chunk and one of 22 valid rows), of a 3-token turn and the greedy text after
/// them are bit-identical, at w4a16 and at w4a8 (whose tiled GEMM quantizes the
/// activations in a pass of its own).
#[test]
fn wgpu_valid_rows_give_the_logits_cache_and_text_of_padded_chunks() {
    let root = npurt_models::testfiles::temp_path("wgpu-valid-rows");
    std::fs::create_dir_all(&root).unwrap();
    let path = root.join("model.gguf");
    let m = RandomLlama {
        shape: small_llama_shape(259, false),
        seed: 5,
        dtype: WeightDType::F16,
    };
    m.write_gguf(&path, &TokenizerKvs::byte_level(259).unwrap())
        .unwrap();
    let ids: Vec<u32> = (0..150u32).map(|i| (i * 37 + 11) % 256 + 3).collect();
    let turn = &ids[10..13];
    for kernels in [KernelFamily::Lanes, KernelFamily::Tiled] {
        for precision in [PrecisionPolicy::W4A16, PrecisionPolicy::W4A8] {
            // (Its fused QKV weight has 128 rows, as many as the chunk: still a weight.)
            let chunk = llama_graph(
                &path,
                128,
                LogitsMode::All,
                InputKind::Ids,
                precision.clone(),
            );
            assert!(ValidRows::of(&chunk).is_some(), "{}", precision.name);
            let run = |padded_rows: bool| {
                let mut r = Registry::with_builtin();
                r.register("wgpu", move |_| {
                    Ok(Arc::new(WgpuBackend::new(WgpuOptions {
                        kernels: Some(kernels),
                        padded_rows,
                        ..Default::default()
                    })?) as Arc<dyn Backend>)
                });
                let opts = LoadOptions {
                    backend: "wgpu".into(),
                    precision: precision.clone(),
                    ctx: Some(256),
                    ..Default::default()
                };
                let model = Runtime::with_registry(r).load(&path, opts).unwrap();
                prompt_turn_and_text(model, &ids, turn)
            };
            let what = format!("{} {}", kernels.name(), precision.name);
            assert_same(&what, &run(false), &run(true));
        }
    }
    std::fs::remove_dir_all(&root).ok();
}
