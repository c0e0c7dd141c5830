//! The profiler (`Executable::profile`, `Session::feed_profiled`, `bench::profile`) on
//! the fetched SmolLM2, on the CPU backend and on wgpu (lavapipe in CI) in each of its
//! timing modes: every compute node of the graph once, finite non-negative times, the
//! per-kind totals equal to the sum over their nodes, the time source as labelled, and
//! the same logits as an unprofiled run. A missing adapter fails, it never skips.

use npurt_backends::profile::is_compute;
use npurt_backends::wgpu::{ProfileTiming, WgpuBackend, WgpuOptions};
use npurt_backends::{Backend, Profile, Registry, TimeSource};
use npurt_runtime::{GraphKind, LoadOptions, Model, Runtime, Session};
use npurt_tests::smollm2_gguf;
use std::collections::HashMap;
use std::sync::Arc;

const CHUNK: usize = 16;

fn load(backend: &str, timing: Option<ProfileTiming>) -> Arc<Model> {
    let mut registry = Registry::with_builtin();
    registry.register("wgpu", move |_| {
        Ok(Arc::new(WgpuBackend::new(WgpuOptions {
            profile_timing: timing,
            ..Default::default()
        })?) as Arc<dyn Backend>)
    });
    Runtime::with_registry(registry)
        .load(
            &smollm2_gguf(),
            LoadOptions {
                backend: backend.into(),
                threads: Some(2),
                chunk: CHUNK,
                ctx: Some(64),
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("load SmolLM2 on {backend}: {e}"))
}

fn check(model: &Model, kind: GraphKind, p: &Profile, source: TimeSource) {
    let graph = &model.graph(kind).graph;
    let what = format!("{kind:?} on {}", p.method);
    // Every compute node exactly once.
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for n in &p.nodes {
        *seen.entry(n.node.as_str()).or_default() += 1;
    }
    let mut want = 0;
    let mut kinds: HashMap<&str, String> = HashMap::new();
    for id in graph.ids() {
        let n = graph.node(id);
        if is_compute(&n.op) {
            want += 1;
            kinds.insert(n.name.as_str(), n.op.kind().to_string());
            assert_eq!(
                seen.get(n.name.as_str()),
                Some(&1),
                "{what}: node `{}` must appear once",
                n.name
            );
        }
    }
    assert_eq!(p.nodes.len(), want, "{what}: extra nodes");
    assert!(want > 100, "{what}: {want} compute nodes");
    for n in &p.nodes {
        assert!(n.ms.is_finite() && n.ms >= 0.0, "{what}: {n:?}");
        assert_eq!(n.source, source, "{what}: {n:?}");
        assert_eq!(
            n.op,
            kinds[n.node.as_str()],
            "{what}: op kind of {}",
            n.node
        );
    }
    assert_eq!(
        kinds.len(),
        want,
        "{what}: compute node names are not unique"
    );
    assert!(p.nodes_ms() > 0.0, "{what}: all zero");
    // Per-kind totals are the sums over their nodes.
    let kinds = p.by_kind();
    for k in &kinds {
        let sum: f64 = p.nodes.iter().filter(|n| n.op == k.op).map(|n| n.ms).sum();
        let count = p.nodes.iter().filter(|n| n.op == k.op).count();
        assert!(
            (k.ms - sum).abs() <= 1e-9 * sum.max(1.0),
            "{what}: {k:?} vs {sum}"
        );
        assert_eq!(k.count, count, "{what}: {k:?}");
    }
    assert_eq!(kinds.iter().map(|k| k.count).sum::<usize>(), p.nodes.len());
    assert!(kinds.iter().any(|k| k.op == "matmul"), "{what}: {kinds:?}");
    let h = &p.host;
    for (name, v) in [
        ("record", h.record_ms),
        ("submit", h.submit_ms),
        ("wait", h.wait_ms),
        ("readback", h.readback_ms),
        ("compute", h.compute_ms),
        ("total", h.total_ms),
    ] {
        assert!(v.is_finite() && v >= 0.0, "{what}: host {name} = {v}");
    }
    assert!(h.total_ms > 0.0, "{what}: {h:?}");
    let parts = h.record_ms + h.submit_ms + h.wait_ms + h.readback_ms + h.compute_ms;
    assert!(parts <= h.total_ms * 1.001 + 1e-3, "{what}: {h:?}");
}

/// Profiles a prefill chunk and a decode step through the bench API and the session
/// API, and checks the profiled session's logits against an unprofiled one's.
fn profile_model(model: &Arc<Model>, source: TimeSource) {
    let bp = npurt_runtime::bench::profile(model, 0).expect("bench::profile");
    assert_eq!(bp.prefill_rows, CHUNK);
    check(model, GraphKind::Prefill, &bp.prefill, source);
    check(model, GraphKind::Decode, &bp.decode, source);
    let text = bp.format(15);
    assert_eq!(
        text.matches("| op kind | ms | share | nodes |").count(),
        2,
        "{text}"
    );
    assert_eq!(text.matches("| slowest nodes |").count(), 2, "{text}");
    assert!(text.contains(source.describe()), "{text}");
    // Both graphs' matmuls read the same weights (SmolLM2 at w4a16: 96 MB), and the
    // decode step, bound by reading them, states its weight rate.
    let (pw, dw) = (
        bp.prefill_matmuls.weight_bytes,
        bp.decode_matmuls.weight_bytes,
    );
    assert!(pw == dw && (80e6..120e6).contains(&dw), "{pw} {dw}");
    let line = format!("\nmatmul weights: {:.1} MB read in ", dw / 1e6);
    assert_eq!(text.matches(&line).count(), 1, "{text}");

    let ids: Vec<u32> = (0..CHUNK as u32 + 1).map(|i| 100 + 37 * i).collect();
    let mut plain = Session::new(model.clone()).unwrap();
    plain.feed(&ids[..CHUNK]).unwrap();
    let want_prefill = plain.last_logits().unwrap().to_vec();
    plain.feed(&ids[CHUNK..]).unwrap();
    let mut profiled = Session::new(model.clone()).unwrap();
    profiled.feed_profiled(&ids[..CHUNK]).unwrap();
    assert_eq!(
        profiled.last_logits().unwrap(),
        &want_prefill[..],
        "prefill logits"
    );
    profiled.feed_profiled(&ids[CHUNK..]).unwrap();
    assert_eq!(
        profiled.last_logits().unwrap(),
        plain.last_logits().unwrap(),
        "decode logits"
    );
    assert_eq!(profiled.len(), CHUNK + 1);
    // More ids than one execution is refused, typed.
    let e = profiled.feed_profiled(&[1; CHUNK + 1]).unwrap_err();
    assert!(e.to_string().contains("one execution"), "{e}");
}

/// On wgpu a fused-QKV decode step has no dispatch for its column slices (read in
/// place) nor its ropes (applied by the KV write and the attention as they read): they
/// take 0 ms, with no timestamp overhead counted against them, and the time is where
/// the work is.
fn in_place_nodes_take_no_time(p: &Profile) {
    for op in ["slice_cols", "rope"] {
        let nodes: Vec<_> = p.nodes.iter().filter(|n| n.op == op).collect();
        assert!(nodes.len() >= 30, "{op}: {} nodes", nodes.len());
        for n in nodes {
            assert_eq!(n.ms, 0.0, "{}: {n:?}", p.method);
        }
    }
    let mut matmuls = p.nodes.iter().filter(|n| n.op == "matmul");
    assert!(matmuls.all(|n| n.ms > 0.0), "{}", p.method);
}

#[test]
fn cpu_backend_profiles_every_node_on_the_host_clock() {
    let m = load("cpu", None);
    profile_model(&m, TimeSource::Host);
    let p = npurt_runtime::bench::profile(&m, 0).unwrap();
    assert!(
        p.prefill.method.starts_with("cpu (2 threads)"),
        "{}",
        p.prefill.method
    );
    // A synchronous backend computes on the host: nothing to submit or wait for.
    assert!(p.decode.host.compute_ms > 0.0 && p.decode.host.wait_ms == 0.0);
    // The decode step after the chunk, or deeper in the cache (`npurt bench -d`'s
    // deepest); a depth past the context is a typed error.
    assert_eq!(p.decode_depth, CHUNK);
    let deep = npurt_runtime::bench::profile(&m, 40).unwrap();
    assert_eq!(deep.decode_depth, 40);
    assert!(
        deep.format(3)
            .contains("decode step (1 row, 40 tokens in the KV cache)"),
        "{}",
        deep.format(3)
    );
    assert_eq!(deep.to_json()["decode_depth"], 40);
    check(&m, GraphKind::Decode, &deep.decode, TimeSource::Host);
    assert!(npurt_runtime::bench::profile(&m, 64).is_err());
}

#[test]
fn wgpu_profiles_with_timestamps_where_the_adapter_has_them() {
    let m = load("wgpu", None);
    let be = WgpuBackend::new(WgpuOptions::default()).expect("wgpu backend");
    let f = be.timestamp_features();
    let (timing, source) =
        if f.contains(npurt_backends::wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES) {
            (ProfileTiming::InsidePasses, TimeSource::Gpu)
        } else if f.contains(npurt_backends::wgpu::Features::TIMESTAMP_QUERY) {
            (ProfileTiming::PassPerNode, TimeSource::Gpu)
        } else {
            (ProfileTiming::HostPerNode, TimeSource::Host)
        };
    assert_eq!(be.profile_timing(), timing);
    profile_model(&m, source);
    let p = npurt_runtime::bench::profile(&m, 0).unwrap();
    assert!(
        p.decode.method.contains(timing.name()),
        "{}",
        p.decode.method
    );
    // A device run: the host waits for it and computes nothing itself.
    assert!(p.decode.host.wait_ms > 0.0 && p.decode.host.compute_ms == 0.0);
    in_place_nodes_take_no_time(&p.decode);
}

/// Lavapipe has timestamp queries inside passes; the other two modes are forced here
/// so every path the profiler takes on some adapter runs in CI.
#[test]
fn wgpu_profiles_with_one_pass_per_node() {
    let be = WgpuBackend::new(WgpuOptions::default()).expect("wgpu backend");
    if !be
        .timestamp_features()
        .contains(npurt_backends::wgpu::Features::TIMESTAMP_QUERY)
    {
        // Forcing it must then be refused, typed, not crash device creation.
        let e = WgpuBackend::new(WgpuOptions {
            profile_timing: Some(ProfileTiming::PassPerNode),
            ..Default::default()
        })
        .err()
        .expect("refused");
        assert!(e.to_string().contains("TIMESTAMP_QUERY"), "{e}");
        return;
    }
    let m = load("wgpu", Some(ProfileTiming::PassPerNode));
    profile_model(&m, TimeSource::Gpu);
    in_place_nodes_take_no_time(&npurt_runtime::bench::profile(&m, 0).unwrap().decode);
}

#[test]
fn wgpu_profiles_with_host_time_per_submission() {
    profile_model(
        &load("wgpu", Some(ProfileTiming::HostPerNode)),
        TimeSource::Host,
    );
}
