//! Bad inputs to the vision half: a SigLIP config that disagrees with its weights
//! (shapes, layer count, patch size), a projector whose width does not fit the tower,
//! pixel tensors of the wrong shape, and checkpoints named with the `vision_model.`
//! prefix (accepted, same results). Each error is typed and names the problem.
//! (Image files: see `image_preprocess.rs`.)

use npurt_models::siglip::{self, SiglipVisionConfig};
use npurt_models::testfiles::{safetensors_f32, temp_path, write_json};
use npurt_models::ModelError;
use npurt_runtime::{Runtime, RuntimeError, VisionEncoder, VisionOptions};
use npurt_tests::{golden, max_abs_diff, GoldenTensors};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A copy of siglip_tiny with its config edited by `edit` (and optionally renamed
/// weights), removed on drop.
struct TinyDir(PathBuf);

impl TinyDir {
    fn new(name: &str, edit: impl FnOnce(&mut Value), rename: Option<&str>) -> Self {
        let d = temp_path(name);
        std::fs::create_dir_all(&d).unwrap();
        let mut cfg: Value =
            serde_json::from_slice(&std::fs::read(golden("siglip_tiny/config.json")).unwrap())
                .unwrap();
        edit(&mut cfg);
        write_json(&d.join("config.json"), &cfg).unwrap();
        let src = golden("siglip_tiny/model.safetensors");
        match rename {
            None => {
                std::fs::copy(&src, d.join("model.safetensors")).unwrap();
            }
            Some(prefix) => {
                let bytes = std::fs::read(&src).unwrap();
                let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
                let views: Vec<(String, safetensors::tensor::TensorView)> = st
                    .tensors()
                    .into_iter()
                    .map(|(n, v)| (format!("{prefix}{n}"), v))
                    .collect();
                safetensors::serialize_to_file(views, &None, &d.join("model.safetensors")).unwrap();
            }
        }
        TinyDir(d)
    }
}

impl Drop for TinyDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn load_err(dir: &Path) -> ModelError {
    match siglip::load_dir(dir) {
        Ok(_) => panic!(
            "{} loaded although its config disagrees with its weights",
            dir.display()
        ),
        Err(e) => e,
    }
}

fn assert_names(e: &dyn std::fmt::Display, words: &[&str]) {
    let m = e.to_string();
    for w in words {
        assert!(m.contains(w), "error `{m}` does not mention `{w}`");
    }
}

#[test]
fn config_that_disagrees_with_the_weights_is_a_typed_error() {
    // Wrong width: the first tensor the config implies names both shapes.
    let d = TinyDir::new("hidden", |c| c["hidden_size"] = 64.into(), None);
    let e = load_err(&d.0);
    assert!(matches!(e, ModelError::ShapeMismatch { .. }), "{e}");
    assert_names(&e, &["embeddings.patch_embedding.weight", "64"]);

    // Fewer layers than the weights have.
    let d = TinyDir::new("fewer", |c| c["num_hidden_layers"] = 1.into(), None);
    let e = load_err(&d.0);
    assert_names(&e, &["num_hidden_layers", "encoder.layers.1."]);

    // More layers than the weights have.
    let d = TinyDir::new("more", |c| c["num_hidden_layers"] = 3.into(), None);
    let e = load_err(&d.0);
    assert!(matches!(e, ModelError::MissingTensor(_)), "{e}");
    assert_names(&e, &["encoder.layers.2."]);

    // Another patch size than the conv kernel's.
    let d = TinyDir::new("patch", |c| c["patch_size"] = 16.into(), None);
    let e = load_err(&d.0);
    assert_names(&e, &["patch_size", "16", "14x14"]);

    // Heads that do not divide the width, absurd sizes.
    let d = TinyDir::new("heads", |c| c["num_attention_heads"] = 3.into(), None);
    assert_names(&load_err(&d.0), &["num_attention_heads", "3"]);
    let d = TinyDir::new("huge", |c| c["hidden_size"] = (1u64 << 40).into(), None);
    assert_names(&load_err(&d.0), &["hidden_size"]);
    let d = TinyDir::new("act", |c| c["hidden_act"] = "relu".into(), None);
    assert_names(&load_err(&d.0), &["hidden_act", "relu"]);
}

#[test]
fn vision_model_prefix_is_accepted_with_identical_results() {
    let io = GoldenTensors::open("siglip_tiny/io.safetensors");
    let (shape, pixels) = io.f32("pixel_values");
    let opts = || VisionOptions {
        precision: npurt_graph::PrecisionPolicy::F32,
        batch: 3,
        ..VisionOptions::default()
    };
    let d = TinyDir::new("prefixed", |_| {}, Some("vision_model."));
    let rt = Runtime::new();
    let a = VisionEncoder::load(&rt, &d.0, None, opts()).expect("prefixed names load");
    let b = VisionEncoder::load(&rt, &golden("siglip_tiny"), None, opts()).unwrap();
    let (ya, yb) = (
        a.encode(&pixels, shape[0]).unwrap(),
        b.encode(&pixels, shape[0]).unwrap(),
    );
    assert_eq!(max_abs_diff(&ya.features, &yb.features), 0.0);
}

#[test]
fn pixels_of_the_wrong_shape_are_typed_errors() {
    let enc = VisionEncoder::load(
        &Runtime::new(),
        &golden("siglip_tiny"),
        None,
        VisionOptions::default(),
    )
    .unwrap();
    let tile = enc.tile_elems();
    for (len, tiles) in [(tile - 1, 1), (2 * tile, 1), (0, 0), (tile, 0)] {
        match enc.encode(&vec![0.0; len], tiles) {
            Err(
                e @ RuntimeError::InvalidOption {
                    option: "pixels", ..
                },
            ) => assert_names(&e, &["tiles of 3x384x384"]),
            other => panic!(
                "{len} values as {tiles} tiles: {:?}",
                other.map(|o| o.tiles)
            ),
        }
    }
    // The encoder is still usable after refusing.
    assert!(enc.encode(&vec![0.0; tile], 1).is_ok());
}

#[test]
fn projector_that_does_not_fit_the_tower_is_a_typed_error() {
    let p = temp_path("projector.safetensors");
    // fc1 takes 256 inputs, but 2x2-merged 128-wide tokens are 512 wide.
    let bytes = safetensors_f32(&[
        ("mm_projector.ln.weight".into(), vec![256]),
        ("mm_projector.ln.bias".into(), vec![256]),
        ("mm_projector.fc1.weight".into(), vec![576, 256]),
        ("mm_projector.fc1.bias".into(), vec![576]),
        ("mm_projector.fc2.weight".into(), vec![576, 576]),
        ("mm_projector.fc2.bias".into(), vec![576]),
    ]);
    std::fs::write(&p, bytes).unwrap();
    let r = VisionEncoder::load(
        &Runtime::new(),
        &golden("siglip_tiny"),
        Some(&p),
        VisionOptions::default(),
    );
    std::fs::remove_file(&p).ok();
    match r {
        Err(e) => assert_names(&e, &["fc1 takes 256 inputs", "512"]),
        Ok(_) => panic!("a 256-input projector loaded behind a 128-wide tower"),
    }
}

#[test]
fn so400m_config_is_consistent() {
    let c = SiglipVisionConfig::so400m();
    c.validate().unwrap();
    assert_eq!((c.grid(), c.tokens(), c.head_dim()), (27, 729, 72));
}
