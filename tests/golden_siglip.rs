//! The vision half against HF transformers (`../shared/golden` sections 2 and 4): the
//! SigLIP tower (siglip_tiny) stage by stage, the 2x2 downsampler and the projector
//! (vlm_tiny), at fp32 on the CPU backend (the wgpu backend's run is in
//! `wgpu_backend.rs`), for static batches of 1, 2, 4 and 9 tiles.
//! Tolerance: the README's `max abs <= 1e-4` for SigLIP / projector outputs.

use npurt_models::siglip::VisionFeature;
use npurt_runtime::{Runtime, VisionEncoder, VisionOptions};
use npurt_tests::{golden, max_abs_diff, GoldenTensors};

const TOL: f32 = 1e-4;

fn encoder(backend: &str, batch: usize, feature: VisionFeature, projector: bool) -> VisionEncoder {
    load(options(backend, batch, feature), projector)
}

fn options(backend: &str, batch: usize, feature: VisionFeature) -> VisionOptions {
    VisionOptions {
        backend: backend.into(),
        batch,
        precision: npurt_graph::PrecisionPolicy::F32,
        feature,
        taps: true,
        ..VisionOptions::default()
    }
}

fn load(opts: VisionOptions, projector: bool) -> VisionEncoder {
    let proj = golden("vlm_tiny/projector.safetensors");
    VisionEncoder::load(
        &Runtime::new(),
        &golden("siglip_tiny"),
        projector.then_some(proj.as_path()),
        opts,
    )
    .unwrap_or_else(|e| panic!("loading siglip_tiny: {e}"))
}

fn check(what: &str, ours: &[f32], want: &[f32]) {
    let d = max_abs_diff(ours, want);
    eprintln!("{what}: max abs diff {d:.3e}");
    assert!(d <= TOL, "{what}: max abs diff {d:.3e} > {TOL:e}");
}

/// siglip_tiny's `pixel_values` through `enc` (any backend), every HF tensor checked.
fn check_tower(backend: &str, enc: &VisionEncoder) {
    let io = GoldenTensors::open("siglip_tiny/io.safetensors");
    let (shape, pixels) = io.f32("pixel_values");
    let out = enc.encode(&pixels, shape[0]).expect("encode");
    for (ours, golden) in [
        ("patch_embeds", "patch_embeds"),
        ("hidden_states_1", "hidden_states_m2"),
        ("hidden_states_2", "encoder_out"),
    ] {
        check(
            &format!("{backend} {golden}"),
            &out.taps[ours],
            &io.f32(golden).1,
        );
    }
    check(
        &format!("{backend} last_hidden_state"),
        &out.features,
        &io.f32("last_hidden_state").1,
    );
}

#[test]
fn siglip_tiny_matches_hf_stage_by_stage() {
    check_tower("cpu", &encoder("cpu", 2, VisionFeature::Last, false));
}

#[test]
fn siglip_tiny_embeddings_and_second_to_last_feature() {
    let io = GoldenTensors::open("siglip_tiny/io.safetensors");
    let (shape, pixels) = io.f32("pixel_values");
    let enc = encoder("cpu", 4, VisionFeature::SecondLast, false);
    let out = enc.encode(&pixels, shape[0]).expect("encode");
    // The second-to-last feature is the last block's input, without post_layernorm.
    check(
        "hidden_states_m2 (feature)",
        &out.features,
        &io.f32("hidden_states_m2").1,
    );
    assert!(
        !out.taps.contains_key("hidden_states_2"),
        "the last block must not run"
    );
}

#[test]
fn downsampler_and_projector_match_vlm_tiny() {
    let io = GoldenTensors::open("vlm_tiny/io.safetensors");
    let (shape, pixels) = io.f32("pixel_values");
    let enc = encoder("cpu", 4, VisionFeature::Last, true);
    let out = enc.encode(&pixels, shape[0]).expect("encode");
    check(
        "vision_features",
        &out.features,
        &io.f32("vision_features").1,
    );
    check(
        "projected",
        out.projected.as_ref().expect("projected"),
        &io.f32("projected").1,
    );
}

/// Results do not depend on the static batch: 9 tiles (the paper's 768x1536 image)
/// through B = 1, 2, 4 and 9 give the same features; the last batch's padding is
/// dropped.
#[test]
fn results_do_not_depend_on_the_batch() {
    let io = GoldenTensors::open("vlm_tiny/io.safetensors");
    let (shape, pixels) = io.f32("pixel_values");
    let per = pixels.len() / shape[0];
    // 9 tiles: the 3 golden ones three times, each copy perturbed so no two are equal.
    let mut nine = Vec::with_capacity(9 * per);
    for i in 0..9 {
        nine.extend(
            pixels[(i % 3) * per..(i % 3 + 1) * per]
                .iter()
                .map(|x| x * (1.0 - 0.05 * (i / 3) as f32)),
        );
    }
    let runs: Vec<_> = [1, 2, 4, 9]
        .into_iter()
        .map(|b| {
            (
                b,
                encoder("cpu", b, VisionFeature::Last, true)
                    .encode(&nine, 9)
                    .expect("encode"),
            )
        })
        .collect();
    let want = io.f32("projected").1;
    let per_tile = want.len() / 3;
    for (b, out) in &runs {
        let p = out.projected.as_ref().unwrap();
        assert_eq!(p.len(), 9 * per_tile, "B={b}: wrong row count");
        // The first three tiles are the golden ones.
        check(&format!("B={b} projected[0..3]"), &p[..3 * per_tile], &want);
        let d = max_abs_diff(p, runs[0].1.projected.as_ref().unwrap());
        assert!(d <= 1e-5, "B={b} differs from B=1 by {d:.3e}");
    }
}

/// The same tower and projector on the wgpu backend (lavapipe in CI): every node of
/// every stage on wgpu (one segment, no CPU fallback), within the same tolerance. Not
/// pipelined, so the Conv2D runs on wgpu too (pipelined, it runs on the CPU:
/// `vision_pipeline.rs`).
#[test]
fn siglip_tiny_and_projector_on_wgpu() {
    let io = GoldenTensors::open("vlm_tiny/io.safetensors");
    let (shape, pixels) = io.f32("pixel_values");
    let enc = load(
        VisionOptions {
            pipeline: false,
            ..options("wgpu", 2, VisionFeature::Last)
        },
        true,
    );
    for st in &enc.stages {
        assert_eq!(
            st.exec.segments(),
            1,
            "{} stage falls back to another backend:\n{:?}",
            st.name,
            st.exec.report()
        );
        assert_eq!(st.exec.backends()[0].name(), "wgpu", "{} stage", st.name);
    }
    let out = enc.encode(&pixels, shape[0]).expect("encode on wgpu");
    check(
        "wgpu vision_features",
        &out.features,
        &io.f32("vision_features").1,
    );
    check(
        "wgpu projected",
        out.projected.as_ref().expect("projected"),
        &io.f32("projected").1,
    );
    check_tower("wgpu", &enc);
}

/// The compiler fuses the ViT into few kernels: every block is LayerNorm, one q/k/v
/// matmul (+bias), attention, o_proj [+bias+residual], LayerNorm, fc1 [+bias+gelu],
/// fc2 [+bias+residual]; the projector is merge, LayerNorm, fc1 [+bias+gelu],
/// fc2 [+bias]. No stand-alone add or gelu is left in either. With quantized
/// activations (w8a8, w8a16) each LayerNorm becomes the prologue of the matmul that
/// reads it (computed while its activations are quantized): only the tower's
/// post-layernorm, an output, stays a node.
#[test]
fn vit_and_projector_are_fused() {
    use npurt_graph::PrecisionPolicy;
    for precision in [
        PrecisionPolicy::F32,
        PrecisionPolicy::W8A8,
        PrecisionPolicy::W8A16,
    ] {
        let fused = precision.name != "f32";
        let opts = VisionOptions {
            precision: precision.clone(),
            ..options("cpu", 1, VisionFeature::Last)
        };
        let enc = load(opts, true);
        let kinds = |name: &str| -> Vec<String> {
            let st = enc.stages.iter().find(|s| s.name == name).unwrap();
            st.graph
                .nodes
                .iter()
                .filter(|n| !n.op.is_source())
                .map(|n| match &n.op {
                    npurt_graph::Op::MatMul {
                        prologue, epilogue, ..
                    } => format!("{}matmul{epilogue}", prologue.name()),
                    op => op.kind().to_string(),
                })
                .collect()
        };
        let enc_kinds = kinds("encoder");
        let count = |k: &str| enc_kinds.iter().filter(|x| *x == k).count();
        eprintln!("{}: encoder: {enc_kinds:?}", precision.name);
        let layers = enc.config.num_hidden_layers;
        let ln = if fused { "layer_norm+" } else { "" };
        assert_eq!(
            count(&format!("{ln}matmul+bias+gelu_tanh")),
            layers,
            "fc1 with bias+GELU"
        );
        assert_eq!(
            count("matmul+bias+residual"),
            2 * layers,
            "o_proj and fc2 with bias+residual"
        );
        assert_eq!(
            count(&format!("{ln}matmul+bias")),
            layers,
            "one fused q/k/v matmul per layer"
        );
        let norms = if fused { 1 } else { 2 * layers + 1 };
        assert_eq!(count("layer_norm"), norms, "{enc_kinds:?}");
        for k in ["add", "gelu", "matmul"] {
            assert_eq!(count(k), 0, "a stand-alone {k} is left: {enc_kinds:?}");
        }
        let proj = kinds("projector");
        let want: &[&str] = if fused {
            &[
                "space_to_channel",
                "layer_norm+matmul+bias+gelu",
                "matmul+bias",
            ]
        } else {
            &[
                "space_to_channel",
                "layer_norm",
                "matmul+bias+gelu",
                "matmul+bias",
            ]
        };
        assert_eq!(proj, want, "projector kernels at {}", precision.name);
    }
}

/// Precision is a compile option of one graph: w8a8 compiles the tower's attention to
/// integer products (`AttentionPrecision::I8`), w8a16 to f16 operands, f32 keeps it in
/// f32, and the CPU backend runs the matching kernel.
#[test]
fn presets_compile_their_attention_precision() {
    use npurt_graph::{AttentionPrecision, Op, PrecisionPolicy};
    for (p, want) in [
        (PrecisionPolicy::W8A8, AttentionPrecision::I8),
        (PrecisionPolicy::W8A16, AttentionPrecision::F16),
        (PrecisionPolicy::F32, AttentionPrecision::F32),
    ] {
        let opts = VisionOptions {
            precision: p.clone(),
            ..VisionOptions::default()
        };
        let enc = VisionEncoder::load(&Runtime::new(), &golden("siglip_tiny"), None, opts).unwrap();
        let st = enc.stages.iter().find(|s| s.name == "encoder").unwrap();
        let got: Vec<AttentionPrecision> = st
            .graph
            .nodes
            .iter()
            .filter_map(|n| match n.op {
                Op::Attention { precision, .. } => Some(precision),
                _ => None,
            })
            .collect();
        assert_eq!(got.len(), enc.config.num_hidden_layers, "{}", p.name);
        assert!(got.iter().all(|&x| x == want), "{}: {got:?}", p.name);
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Precision presets against fp32: cosine similarity of the projected embeddings
/// (flattened, and the worst single token) on vlm_tiny's tiles and on rocket.jpg's
/// five tiles. The issue asks >= 0.99 for w8a16 (the default); measured 0.99994, so
/// the floors sit just under what is measured (0.999 / 0.998 for w8a8) to catch a
/// regression. The README's table comes from this test's output.
#[test]
fn quantized_presets_keep_the_projected_embeddings() {
    use npurt_graph::PrecisionPolicy;
    let proj = golden("vlm_tiny/projector.safetensors");
    let vlm = GoldenTensors::open("vlm_tiny/io.safetensors");
    let rocket = GoldenTensors::open("preprocess/rocket.safetensors");
    for (image, io) in [("vlm_tiny (chelsea)", &vlm), ("rocket.jpg", &rocket)] {
        let (shape, pixels) = io.f32("pixel_values");
        let run = |p: PrecisionPolicy| {
            let opts = VisionOptions {
                precision: p,
                ..VisionOptions::default()
            };
            let enc =
                VisionEncoder::load(&Runtime::new(), &golden("siglip_tiny"), Some(&proj), opts)
                    .unwrap();
            enc.encode(&pixels, shape[0]).unwrap().projected.unwrap()
        };
        let reference = run(PrecisionPolicy::F32);
        let width = 576;
        for (p, floor) in [
            (PrecisionPolicy::W8A16, 0.999),
            (PrecisionPolicy::W8A8, 0.998),
        ] {
            let ours = run(p.clone());
            let all = cosine(&ours, &reference);
            let worst = ours
                .chunks_exact(width)
                .zip(reference.chunks_exact(width))
                .map(|(a, b)| cosine(a, b))
                .fold(1.0, f64::min);
            eprintln!(
                "{image} {}: cosine {all:.6}, worst token {worst:.6}",
                p.name
            );
            assert!(
                all >= floor,
                "{image} {}: cosine {all:.6} < {floor}",
                p.name
            );
        }
    }
}
