//! The memory planner on the real graphs: the SmolLM2 prefill/decode graphs (as
//! compiled at w4a16) and SigLIP-so400m's encoder graph for a batch of 4 tiles. No two
//! values live at the same time overlap, and the arena is far below one buffer per
//! value. (Random graphs are checked in `graph/src/plan.rs`.)

use npurt_graph::passes::Pipeline;
use npurt_graph::{plan, Graph, PrecisionPolicy};
use npurt_models::llama::{InputKind, LogitsMode};
use npurt_models::siglip::{
    self, SiglipGraphOptions, SiglipVisionConfig, VisionFeature, VisionStage,
};
use npurt_tests::smollm2_graph;

fn check(name: &str, g: &Graph, at_most: f64) {
    let p = plan::plan(g, 64);
    p.check().unwrap_or_else(|e| panic!("{name}: {e}"));
    let ratio = p.arena_bytes as f64 / p.naive_bytes as f64;
    eprintln!(
        "{name}: arena {} B, naive {} B ({:.1}%)",
        p.arena_bytes,
        p.naive_bytes,
        100.0 * ratio
    );
    assert!(
        ratio <= at_most,
        "{name}: arena is {:.1}% of the naive sum",
        100.0 * ratio
    );
}

#[test]
fn llama_graphs_plan_into_a_small_arena() {
    for (rows, logits, input, at_most) in [
        (128, LogitsMode::Last, InputKind::Ids, 0.05),
        (128, LogitsMode::All, InputKind::Ids, 0.5),
        (128, LogitsMode::Last, InputKind::Embeddings, 0.05),
        (1, LogitsMode::Last, InputKind::Ids, 0.5),
    ] {
        let g = smollm2_graph(rows, logits, input, PrecisionPolicy::W4A16);
        check(
            &format!("llama rows {rows} {logits:?} {input:?}"),
            &g,
            at_most,
        );
    }
}

#[test]
fn siglip_so400m_plans_into_a_small_arena() {
    let cfg = SiglipVisionConfig::so400m();
    for stage in [VisionStage::Embed, VisionStage::Encoder] {
        let mut g = siglip::build(
            &cfg,
            &SiglipGraphOptions {
                batch: 4,
                stage,
                feature: VisionFeature::Last,
                taps: false,
            },
        )
        .unwrap();
        Pipeline::compile(PrecisionPolicy::W8A8, Box::new(|_| None))
            .run(&mut g)
            .unwrap();
        check(
            &format!("so400m {stage:?}"),
            &g,
            if stage == VisionStage::Encoder {
                0.05
            } else {
                1.0
            },
        );
    }
}
