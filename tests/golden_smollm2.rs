//! SmolLM2-135M-Instruct on the CPU backend at fp32 against HF transformers goldens
//! (../shared/golden/smollm2, tolerances from its README):
//! - logits: top-1 id identical at every position; at the reference top-16 ids and for
//!   logsumexp, |ours - ref| <= 1e-3 x (our logit range at that position), and the full
//!   last-position logits within 1e-3 x the reference range;
//! - hidden states of prompt 0 layer by layer: max abs diff <= 1e-3 x max abs(ref);
//! - greedy continuations token for token; perplexity within 0.1%;
//! - chunk sizes 1, 32, 128, 512 give the same logits (fp32 rounding: 1e-4 x range).

use npurt_backends::{
    cpu::{CpuBackend, CpuOptions},
    Backend, Bindings, BufferUsage,
};
use npurt_graph::passes::Pipeline;
use npurt_graph::PrecisionPolicy;
use npurt_kernels::HostTensor;
use npurt_models::llama::{self, InputKind, LlamaGraphOptions, LogitsMode};
use npurt_models::ModelSource;
use npurt_runtime::{
    GenerateOptions, LoadOptions, Model, PromptLookup, Runtime, Session, SpeculationStats,
    StopReason,
};
use npurt_tests::*;
use std::sync::{Arc, OnceLock};

/// One model per test binary: loading is shared, tests run on it concurrently.
fn model() -> Arc<Model> {
    static M: OnceLock<Arc<Model>> = OnceLock::new();
    M.get_or_init(|| {
        Runtime::new()
            .load(
                &smollm2_gguf(),
                LoadOptions {
                    ctx: Some(1024),
                    precision: PrecisionPolicy::F32,
                    ..Default::default()
                },
            )
            .expect("load SmolLM2")
    })
    .clone()
}

fn prompts() -> Vec<(String, Vec<u32>)> {
    let p = read_json("smollm2/prompts.json");
    let list = p
        .get("prompts")
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_else(|| {
            p.as_array()
                .expect("prompts.json: list or {prompts}")
                .clone()
        });
    list.iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap_or("?").to_string();
            let ids = golden_ids(&e["ids"]);
            (name, ids)
        })
        .collect()
}

#[test]
fn logits_match_hf_at_every_position() {
    let m = model();
    let g = GoldenTensors::open("smollm2/logits.safetensors");
    for (i, (name, ids)) in prompts().into_iter().enumerate() {
        let (_, gids) = g.i32(&format!("p{i}.ids"));
        assert_eq!(
            gids.iter().map(|&x| x as u32).collect::<Vec<_>>(),
            ids,
            "{name}: prompt ids"
        );
        let mut s = Session::new(m.clone()).unwrap();
        let rows = s.feed_all_logits(&ids).unwrap();
        let (shape, top_ids) = g.i32(&format!("p{i}.topk_ids"));
        let (_, top_vals) = g.f32(&format!("p{i}.topk_vals"));
        let (_, ref_lse) = g.f32(&format!("p{i}.lse"));
        let k = shape[1];
        for (t, row) in rows.iter().enumerate() {
            let tol = 1e-3 * logit_range(row);
            let ours_top = npurt_runtime::sampling::argmax(row);
            assert_eq!(
                ours_top as i32,
                top_ids[t * k],
                "{name} position {t}: top-1 id"
            );
            for j in 0..k {
                let (id, v) = (top_ids[t * k + j] as usize, top_vals[t * k + j]);
                assert!(
                    (row[id] - v).abs() <= tol,
                    "{name} pos {t} id {id}: ours {} ref {v} tol {tol}",
                    row[id]
                );
            }
            assert!(
                (logsumexp(row) - ref_lse[t] as f64).abs() <= tol as f64,
                "{name} pos {t}: lse"
            );
        }
        let (_, last) = g.f32(&format!("p{i}.last"));
        let d = max_abs_diff(rows.last().unwrap(), &last);
        assert!(
            d <= 1e-3 * logit_range(&last),
            "{name}: last-position logits differ by {d}"
        );
    }
}

#[test]
fn hidden_states_match_hf_layer_by_layer() {
    // Built by hand from public APIs, as a backend vendor or debugger would: the one
    // llama graph with taps, compiled on the CPU backend.
    let src = ModelSource::open(&smollm2_gguf()).unwrap();
    let g = GoldenTensors::open("smollm2/hidden.safetensors");
    let (_, ids) = g.i32("ids");
    let t = ids.len();
    let mut graph = llama::build(
        &src.config,
        &LlamaGraphOptions {
            rows: t,
            cache_rows: t,
            logits: LogitsMode::All,
            input: InputKind::Ids,
            taps: true,
        },
    )
    .unwrap();
    Pipeline::default_optimize().run(&mut graph).unwrap();
    let be = CpuBackend::new(CpuOptions::default());
    let weights: Vec<_> = graph
        .sources("weight")
        .into_iter()
        .map(|(id, name, _)| {
            (
                id,
                be.prepare_weight(name, src.weights.to_f32(name).unwrap())
                    .unwrap(),
            )
        })
        .collect();
    let exec = be.compile(&graph, &weights).unwrap();
    let mut b = Bindings::default();
    let bind = |b: &mut Bindings, name: &str, v: HostTensor| {
        let buf = be.alloc(&v.fact, BufferUsage::Activations).unwrap();
        be.write(buf.as_ref(), &v).unwrap();
        b.sources
            .push((graph.find_source("input", name).unwrap(), buf));
    };
    bind(&mut b, "ids", HostTensor::i32([t], ids.clone()));
    bind(&mut b, "pos", HostTensor::i32([1], vec![0]));
    bind(&mut b, "n_valid", HostTensor::i32([1], vec![t as i32]));
    for (id, _, fact) in graph.sources("state") {
        b.sources
            .push((id, be.alloc(fact, BufferUsage::State).unwrap()));
    }
    for (name, id) in &graph.outputs {
        b.outputs.push((
            name.clone(),
            be.alloc(graph.fact(*id), BufferUsage::Activations).unwrap(),
        ));
    }
    exec.run(&b, exec.new_scratch().unwrap().as_mut()).unwrap();
    let ours = |name: &str| {
        be.read(
            b.output(name)
                .unwrap_or_else(|| panic!("no tap {name}"))
                .as_ref(),
        )
        .unwrap()
        .into_f32()
        .unwrap()
    };
    let mut names: Vec<String> = (0..30).map(|l| format!("h{l}")).collect();
    names.extend(
        [
            "h30_prenorm",
            "final_norm",
            "l0.attn_in",
            "l0.q",
            "l0.k",
            "l0.v",
            "l0.q_rope",
            "l0.k_rope",
            "l0.attn_out",
        ]
        .map(String::from),
    );
    for name in names {
        let (_, r) = g.f32(&name);
        let scale = r.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = max_abs_diff(&ours(&name), &r);
        assert!(
            d <= 1e-3 * scale,
            "{name}: max abs diff {d} > 1e-3 x {scale}"
        );
    }
    let (_, h30) = g.f32("h30");
    assert!(
        max_abs_diff(&ours("final_norm"), &h30)
            <= 1e-3 * h30.iter().fold(0f32, |a, v| a.max(v.abs()))
    );
}

fn greedy_case(m: &Arc<Model>, case: &serde_json::Value) {
    greedy_case_with(m, case, None);
}

/// A golden greedy case, generated with `speculation` (the text must not change);
/// returns what speculation did.
fn greedy_case_with(
    m: &Arc<Model>,
    case: &serde_json::Value,
    speculation: Option<PromptLookup>,
) -> SpeculationStats {
    let ids: Vec<u32> = golden_ids(&case["prompt_ids"]);
    let want: Vec<u32> = golden_ids(&case["new_ids"]);
    let mut s = Session::new(m.clone()).unwrap();
    let mut streamed = String::new();
    let out = s
        .generate(
            &ids,
            &GenerateOptions {
                max_tokens: want.len(),
                speculation,
                ..Default::default()
            },
            |piece, _| {
                streamed.push_str(piece);
                true
            },
        )
        .unwrap();
    let name = case["name"].as_str().unwrap();
    assert_eq!(out.tokens, want, "{name}: greedy continuation");
    let stopped_at_eos = case["stopped_at_eos"].as_bool().unwrap();
    assert_eq!(
        out.stop == StopReason::Eos,
        stopped_at_eos,
        "{name}: stop reason {:?}",
        out.stop
    );
    assert_eq!(
        streamed, out.text,
        "{name}: streamed text equals the final text"
    );
    assert_eq!(
        out.text,
        case["text_skip_special"].as_str().unwrap(),
        "{name}: text"
    );
    // The session holds the prompt and every new token but the last, as without a draft.
    assert_eq!(
        s.tokens().len(),
        ids.len() + want.len() - 1,
        "{name}: session length"
    );
    assert_eq!(
        &s.tokens()[ids.len()..],
        &want[..want.len() - 1],
        "{name}: session tokens"
    );
    out.speculation
}

#[test]
fn greedy_continuations_match_hf() {
    let m = model();
    let g = read_json("smollm2/greedy.json");
    for case in g["results"].as_array().unwrap() {
        greedy_case(&m, case);
    }
}

/// Speculative decoding by prompt lookup gives HF's greedy continuations token for
/// token, and the cases exercise both outcomes: drafts kept and drafts rejected.
#[test]
fn greedy_continuations_match_hf_with_speculation() {
    let m = model();
    let g = read_json("smollm2/greedy.json");
    let mut total = SpeculationStats::default();
    for case in g["results"].as_array().unwrap() {
        for max_draft in [1, 7] {
            let st = greedy_case_with(
                &m,
                case,
                Some(PromptLookup {
                    max_draft,
                    min_ngram: 1,
                    ..Default::default()
                }),
            );
            assert!(st.accepted <= st.drafted && st.verify_calls <= st.drafted);
            total.verify_calls += st.verify_calls;
            total.drafted += st.drafted;
            total.accepted += st.accepted;
        }
    }
    assert!(total.accepted > 0, "no draft token was kept: {total:?}");
    assert!(
        total.accepted < total.drafted,
        "no draft token was rejected: {total:?}"
    );
}

#[test]
fn sessions_share_one_model_across_threads() {
    let m = model();
    let g = read_json("smollm2/greedy.json");
    let cases = g["results"].as_array().unwrap().clone();
    std::thread::scope(|s| {
        for case in cases.iter().take(2) {
            let m = m.clone();
            s.spawn(move || greedy_case(&m, case));
        }
    });
}

#[test]
fn perplexity_matches_hf() {
    let m = model();
    let p = read_json("smollm2/perplexity.json");
    let ids: Vec<u32> = golden_ids(&p["ids"]);
    let text = std::fs::read_to_string(golden("texts/apache-2.0.txt")).unwrap();
    let ours_ids = m.encode(&text).unwrap();
    assert_eq!(
        &ours_ids[..ids.len()],
        &ids[..],
        "tokenization of the perplexity text"
    );
    let r = npurt_runtime::perplexity(
        &m,
        &ids,
        p["max_length"].as_u64().unwrap() as usize,
        p["stride"].as_u64().unwrap() as usize,
    )
    .unwrap();
    let ref_ppl = p["perplexity"]
        .as_f64()
        .expect("perplexity.json: perplexity");
    assert_eq!(r.scored, ids.len() - 1);
    assert!(
        (r.ppl - ref_ppl).abs() <= 1e-3 * ref_ppl,
        "perplexity {} vs HF {ref_ppl}",
        r.ppl
    );
    let nll = p["mean_nll_nats"]
        .as_f64()
        .expect("perplexity.json: mean_nll_nats");
    assert!(
        (r.nll - nll).abs() <= 1e-4,
        "mean nll {} vs HF {nll} (README: 1e-4 nats)",
        r.nll
    );
}

#[test]
fn chunk_size_does_not_change_results() {
    let p = read_json("smollm2/perplexity.json");
    let ids: Vec<u32> = golden_ids(&p["ids"]).into_iter().take(300).collect();
    let reference = model();
    let base = Session::new(reference.clone())
        .unwrap()
        .feed_all_logits(&ids)
        .unwrap();
    for chunk in [1, 32, 512] {
        let m = Runtime::new()
            .load(
                &smollm2_gguf(),
                LoadOptions {
                    chunk,
                    ctx: Some(512),
                    precision: PrecisionPolicy::F32,
                    ..Default::default()
                },
            )
            .unwrap();
        let mut s = Session::new(m).unwrap();
        // Feed in uneven pieces so chunks start at positions that are not multiples of C.
        let mut rows = s.feed_all_logits(&ids[..7]).unwrap();
        rows.extend(s.feed_all_logits(&ids[7..]).unwrap());
        for (t, (a, b)) in rows.iter().zip(&base).enumerate() {
            let d = max_abs_diff(a, b);
            assert!(
                d <= 1e-4 * logit_range(b),
                "chunk {chunk} position {t}: logits differ by {d}"
            );
        }
    }
}
