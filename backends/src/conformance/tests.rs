//! Tests of the suite itself: coverage of the IR, well-formed cases, a correct report,
//! and the calibration of the activation-quantization thresholds.

use super::cases::{self, OP_KINDS};
use super::*;
use npurt_graph::{ActPrecision, Op, Prologue};
use npurt_kernels::{reference as r, HostTensor};
use std::collections::HashSet;

#[test]
fn every_op_has_cases_and_labels_are_unique() {
    let all = cases::all();
    for kind in OP_KINDS {
        assert!(
            all.iter().any(|c| c.op == kind),
            "no conformance case for `{kind}`"
        );
    }
    let mut seen = HashSet::new();
    for c in &all {
        assert!(seen.insert(c.label()), "duplicate case {}", c.label());
        assert!(
            OP_KINDS.contains(&c.op),
            "case {} tests an unknown op",
            c.label()
        );
    }
    // Keep the suite a quick run, not a sweep (about 500 cases since it took over the
    // wgpu tests' per-op sweeps: every epilogue at decode, odd K, every rope scaling;
    // and the layer_norm prologue's; the whole suite on every CPU kernel path takes a
    // few seconds).
    assert!(all.len() < 520, "{} cases", all.len());
}

/// A case is one node of the op under test, alone or with the ops a backend may fuse
/// into it (`attention block.*`: slices, ropes and KV writes), all of known kinds.
#[test]
fn every_case_builds_one_op_and_the_oracle_evaluates_it() {
    for c in cases::all() {
        let data = c
            .instantiate()
            .unwrap_or_else(|e| panic!("{}: {e}", c.label()));
        let computed: Vec<_> = data
            .graph
            .nodes
            .iter()
            .filter(|n| !n.op.is_source())
            .collect();
        let under_test = computed.iter().filter(|n| n.op.kind() == c.op).count();
        assert_eq!(
            under_test,
            1,
            "{}: one node of the op under test",
            c.label()
        );
        assert!(
            computed.len() == 1 || c.name.contains("block."),
            "{}: {} compute nodes in a case that is no block",
            c.label(),
            computed.len()
        );
        for n in &computed {
            assert!(
                cases::op_index(&n.op).is_some(),
                "{}: {}",
                c.label(),
                n.op.kind()
            );
        }
        let expected = oracle::expected(&data).unwrap_or_else(|e| panic!("{}: {e}", c.label()));
        assert!(
            expected.iter().flatten().all(|v| v.is_finite()),
            "{}: non-finite reference",
            c.label()
        );
        assert!(
            expected.iter().flatten().any(|v| *v != 0.0),
            "{}: all-zero reference tests nothing",
            c.label()
        );
    }
}

#[test]
fn nmse_guards_zero_references_and_non_finite_values() {
    assert_eq!(nmse(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
    assert!((nmse(&[2.0, 0.0], &[1.0, 0.0]) - 1.0).abs() < 1e-12);
    assert_eq!(nmse(&[0.5], &[0.0]), 0.25);
    assert_eq!(nmse(&[f32::NAN], &[1.0]), f64::INFINITY);
    assert_eq!(nmse(&[1.0], &[1.0, 2.0]), f64::INFINITY);
}

#[test]
fn filter_selects_by_op_prefix_or_case() {
    let all = cases::all();
    let pick = |f: &str| all.iter().filter(|c| matches(c, f)).count();
    assert_eq!(pick("silu"), all.iter().filter(|c| c.op == "silu").count());
    assert!(pick("matmul/q4_0") > 1 && pick("matmul/q4_0") < pick("matmul"));
    assert_eq!(pick("attention/gqa9_3.hd16.pos13.n_valid4"), 1);
    assert_eq!(pick("nonsense"), 0);
}

#[test]
fn report_prints_an_aligned_table_and_the_summary() {
    let row = |op: &str, status| Row {
        op: op.into(),
        case: "c".into(),
        backend: "b".into(),
        nmse: Some(1e-9),
        threshold: 1e-7,
        status,
    };
    let r = Report {
        rows: vec![
            row("matmul", Status::Pass),
            row("silu", Status::Fail("NMSE too big".into())),
            row("gather", Status::Unsupported("q4_0 tables".into())),
        ],
    };
    let s = r.to_string();
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 5, "{s}");
    assert!(
        lines[0].starts_with("op ") && lines[0].contains("NMSE") && lines[0].contains("threshold")
    );
    let col = lines[0].find("backend").unwrap();
    assert!(
        lines[1..4].iter().all(|l| &l[col..col + 1] == "b"),
        "columns aligned:\n{s}"
    );
    assert_eq!(lines[4], "1 passed, 1 failed, 1 unsupported");
    assert_eq!((r.passed(), r.failed(), r.unsupported()), (1, 1, 1));
    assert!(!r.is_ok());
}

/// Rounds `x [rows, k]` through i16 with one scale per row, or i8 with one scale per
/// 32-value block, exactly as `ActPrecision` defines (round to nearest, symmetric).
fn fake_quantize(x: &[f32], k: usize, act: ActPrecision) -> Vec<f32> {
    let (group, qmax) = match act {
        ActPrecision::F32 => return x.to_vec(),
        ActPrecision::I16 => (k, 32767.0f32),
        ActPrecision::I8 => (32, 127.0),
        ActPrecision::I8Row => (k, 127.0),
    };
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(k) {
        for g in row.chunks(group) {
            let scale = g.iter().fold(0f32, |a, v| a.max(v.abs())) / qmax;
            out.extend(g.iter().map(|v| {
                if scale == 0.0 {
                    0.0
                } else {
                    (v / scale).round().clamp(-qmax, qmax) * scale
                }
            }));
        }
    }
    out
}

/// The i16/i8 thresholds are calibrated here: a backend that quantizes activations
/// exactly as the IR says must pass every such case with at least 10x margin.
#[test]
fn activation_thresholds_admit_an_exact_quantizer_with_margin() {
    let mut worst = [0f64; 2];
    for c in cases::all().iter().filter(|c| c.op == "matmul") {
        let mut data = c.instantiate().unwrap();
        let mm = data
            .graph
            .nodes
            .iter()
            .find(|n| n.op.kind() == "matmul")
            .unwrap()
            .clone();
        let Op::MatMul { act, prologue, .. } = mm.op else {
            unreachable!()
        };
        if act == ActPrecision::F32 {
            continue;
        }
        let exact = oracle::expected(&data).unwrap();
        let a = mm.inputs[0];
        let fact = data.graph.fact(a).clone();
        let source = |data: &CaseData, id| {
            let t = &data.sources.iter().find(|(i, _)| *i == id).unwrap().1;
            t.as_f32().unwrap().to_vec()
        };
        let mut x = source(&data, a);
        if prologue != Prologue::None {
            // The quantizer sees the normalized rows: apply the norm here and run the
            // matmul without its prologue.
            let w = source(&data, mm.inputs[2]);
            let raw = x.clone();
            match prologue {
                Prologue::RmsNorm { eps } => r::rms_norm(&raw, &w, eps, &mut x),
                Prologue::LayerNorm { eps } => {
                    r::layer_norm(&raw, &w, &source(&data, mm.inputs[3]), eps, &mut x)
                }
                Prologue::None => unreachable!(),
            }
            let node = data
                .graph
                .nodes
                .iter_mut()
                .find(|n| n.name == mm.name)
                .unwrap();
            node.inputs.drain(2..2 + prologue.extra_inputs());
            if let Op::MatMul { prologue, .. } = &mut node.op {
                *prologue = Prologue::None;
            }
        }
        let q = fake_quantize(&x, fact.shape[1], act);
        let slot = data.sources.iter_mut().find(|(id, _)| *id == a).unwrap();
        slot.1 = HostTensor::f32(fact.shape.clone(), q);
        let quantized = oracle::expected(&data).unwrap();
        let e = nmse(&quantized[0], &exact[0]);
        let i = matches!(act, ActPrecision::I8 | ActPrecision::I8Row) as usize;
        worst[i] = worst[i].max(e);
        assert!(
            e * 10.0 <= c.threshold,
            "{}: an exact {} quantizer measures NMSE {e:.2e}, threshold {:.1e}",
            c.label(),
            act.name(),
            c.threshold
        );
    }
    println!(
        "worst NMSE of an exact quantizer: i16 {:.2e}, i8 {:.2e}",
        worst[0], worst[1]
    );
    assert!(
        worst[0] > 0.0 && worst[1] > worst[0],
        "calibration measured nothing: {worst:?}"
    );
}
