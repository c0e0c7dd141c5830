//! The pipelined vision encode (BlueLM-V Fig. 6: the Conv2D of batch i+1 on its own
//! stream while the blocks of batch i run) against the sequential one, on the golden
//! siglip_tiny + vlm_tiny projector: 9 tiles in batches of 4 (three batches, the last
//! padded). On the CPU both runs compute the same kernels, so they agree bitwise; with
//! wgpu the pipelined Conv2D runs on the CPU backend instead of the GPU, so they agree
//! within the goldens' tolerance.

use npurt_graph::PrecisionPolicy;
use npurt_runtime::{Runtime, VisionEncoder, VisionOptions, VisionOutput};
use npurt_tests::{golden, max_abs_diff, GoldenTensors};

const TILES: usize = 9;
const BATCH: usize = 4;

fn encoder(backend: &str, precision: PrecisionPolicy, pipeline: bool) -> VisionEncoder {
    let opts = VisionOptions {
        backend: backend.into(),
        batch: BATCH,
        precision,
        taps: true,
        pipeline,
        ..VisionOptions::default()
    };
    let proj = golden("vlm_tiny/projector.safetensors");
    VisionEncoder::load(&Runtime::new(), &golden("siglip_tiny"), Some(&proj), opts)
        .unwrap_or_else(|e| panic!("loading siglip_tiny: {e}"))
}

/// 9 tiles: vlm_tiny's 3 golden tiles three times, each copy scaled so no two agree.
fn nine_tiles() -> Vec<f32> {
    let io = GoldenTensors::open("vlm_tiny/io.safetensors");
    let (shape, pixels) = io.f32("pixel_values");
    let per = pixels.len() / shape[0];
    (0..TILES)
        .flat_map(|i| {
            pixels[(i % 3) * per..(i % 3 + 1) * per]
                .iter()
                .map(move |x| x * (1.0 - 0.05 * (i / 3) as f32))
        })
        .collect()
}

/// Every output of `a` and `b` (features, projected tokens, each tap) within `tol`.
fn assert_same(what: &str, a: &VisionOutput, b: &VisionOutput, tol: f32) {
    let mut pairs = vec![
        ("features", &a.features, &b.features),
        (
            "projected",
            a.projected.as_ref().expect("projected"),
            b.projected.as_ref().expect("projected"),
        ),
    ];
    assert_eq!(
        a.taps.keys().collect::<Vec<_>>(),
        b.taps.keys().collect::<Vec<_>>()
    );
    pairs.extend(a.taps.iter().map(|(k, v)| (k.as_str(), v, &b.taps[k])));
    for (name, x, y) in pairs {
        assert_eq!(x.len(), y.len(), "{what} {name}: lengths");
        let d = max_abs_diff(x, y);
        eprintln!("{what} {name}: max abs diff {d:.3e}");
        if tol == 0.0 {
            assert!(x == y, "{what} {name}: not bitwise equal (max abs {d:.3e})");
        } else {
            assert!(d <= tol, "{what} {name}: max abs diff {d:.3e} > {tol:e}");
        }
    }
}

fn check_timings(out: &VisionOutput, pipelined: bool) {
    let t = out.timings;
    eprintln!("{t:?}");
    assert_eq!(t.pipelined, pipelined);
    let sum = t.conv_ms + t.blocks_ms + t.project_ms;
    assert!((t.sequential_ms - sum).abs() < 1e-9);
    assert!(t.hidden_ms >= 0.0 && t.hidden_ms <= t.conv_ms + t.blocks_ms);
    assert!(t.conv_ms > 0.0 && t.blocks_ms > 0.0 && t.project_ms > 0.0);
}

#[test]
fn pipelined_equals_sequential_on_cpu() {
    let pixels = nine_tiles();
    for precision in [PrecisionPolicy::F32, PrecisionPolicy::W8A16] {
        let piped = encoder("cpu", precision.clone(), true);
        let seq = encoder("cpu", precision.clone(), false);
        // The pipelined embed stage has a CPU backend (and thread) of its own.
        assert!(!std::sync::Arc::ptr_eq(
            &piped.embed_backends[0],
            &piped.backends[0]
        ));
        let a = piped.encode(&pixels, TILES).expect("pipelined encode");
        let b = seq.encode(&pixels, TILES).expect("sequential encode");
        check_timings(&a, true);
        check_timings(&b, false);
        assert_same(&format!("cpu {}", precision.name), &a, &b, 0.0);
        // A second call reuses the runners: same result.
        let again = piped
            .encode(&pixels, TILES)
            .expect("second pipelined encode");
        assert_same("cpu again", &a, &again, 0.0);
    }
}

#[test]
fn pipelined_equals_sequential_on_wgpu() {
    let pixels = nine_tiles();
    let piped = encoder("wgpu", PrecisionPolicy::F32, true);
    let seq = encoder("wgpu", PrecisionPolicy::F32, false);
    let stage_backend = |enc: &VisionEncoder, name: &str| {
        let st = enc.stages.iter().find(|s| s.name == name).unwrap();
        assert_eq!(st.exec.segments(), 1, "{name} stage is split");
        st.exec.backends()[0].name().to_string()
    };
    assert_eq!(
        stage_backend(&piped, "embed"),
        "cpu",
        "pipelined Conv2D on the CPU"
    );
    assert_eq!(stage_backend(&piped, "encoder"), "wgpu");
    assert_eq!(stage_backend(&piped, "projector"), "wgpu");
    assert_eq!(stage_backend(&seq, "embed"), "wgpu");
    let a = piped
        .encode(&pixels, TILES)
        .expect("pipelined encode on wgpu");
    let b = seq
        .encode(&pixels, TILES)
        .expect("sequential encode on wgpu");
    check_timings(&a, true);
    check_timings(&b, false);
    assert_same("wgpu", &a, &b, 1e-4);
}

#[test]
fn an_embed_stream_without_threads_is_an_error() {
    let opts = VisionOptions {
        embed_threads: 0,
        ..VisionOptions::default()
    };
    let err = VisionEncoder::load(&Runtime::new(), &golden("siglip_tiny"), None, opts)
        .err()
        .expect("embed_threads = 0 must be refused");
    assert!(err.to_string().contains("embed_threads"), "{err}");
}
