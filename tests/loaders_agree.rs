//! The two loaders give the same model: the real SmolLM2 GGUF, exported here as an HF
//! model directory (config.json from the golden HF config, f32 safetensors of the
//! dequantized weights in HF order, the golden tokenizer files), loads to the same
//! config and tensors, and the compiled f32 models produce identical logits.

use npurt_graph::PrecisionPolicy;
use npurt_models::ModelSource;
use npurt_runtime::{LoadOptions, Runtime, Session};
use npurt_tests::*;

#[test]
fn gguf_and_hf_directory_give_the_same_model() {
    let gguf = ModelSource::open(&smollm2_gguf()).unwrap();
    let dir = std::env::temp_dir().join(format!("npurt-hf-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let model_json = read_json("smollm2/model.json");
    std::fs::write(dir.join("config.json"), model_json["hf_config"].to_string()).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(golden(&format!("smollm2/{f}")), dir.join(f)).unwrap();
    }
    let names: Vec<String> = gguf.weights.names().map(String::from).collect();
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = names
        .iter()
        .map(|n| {
            let t = gguf.weights.to_f32(n).unwrap();
            let bytes = t
                .as_f32()
                .unwrap()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            (n.clone(), t.fact.shape.clone(), bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, &None, &dir.join("model.safetensors")).unwrap();
    drop(tensors);

    let hf = ModelSource::open(&dir).unwrap();
    assert_eq!(hf.config, gguf.config, "configs differ");
    for n in &names {
        assert_eq!(
            hf.weights.to_f32(n).unwrap(),
            gguf.weights.to_f32(n).unwrap(),
            "tensor {n} differs"
        );
    }
    let ids: Vec<u32> = golden_ids(&read_json("smollm2/prompts.json")["prompts"][0]["ids"]);
    let opts = || LoadOptions {
        ctx: Some(64),
        precision: PrecisionPolicy::F32,
        ..Default::default()
    };
    let rt = Runtime::new();
    let a = Session::new(rt.load(&smollm2_gguf(), opts()).unwrap())
        .unwrap()
        .feed_all_logits(&ids)
        .unwrap();
    let b = Session::new(rt.load(&dir, opts()).unwrap())
        .unwrap()
        .feed_all_logits(&ids)
        .unwrap();
    assert_eq!(
        a, b,
        "logits differ between the GGUF and the HF-directory model"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
