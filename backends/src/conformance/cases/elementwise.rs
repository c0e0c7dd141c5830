//! Elementwise ops, norms and softmax: broadcasting over leading dims, wide and narrow
//! rows, inputs that overflow a naive exp.

use super::{ROUNDING, TRANSCENDENTAL};
use crate::conformance::case::Case;
use npurt_graph::{DType, Op};
use npurt_kernels::HostTensor;

/// `a op b` with `b` an input or (`b_weight`) a prepared weight.
fn binary(
    op: Op,
    name: &str,
    a_shape: &'static [usize],
    b_shape: &'static [usize],
    b_weight: bool,
) -> Case {
    let kind = op.kind();
    Case::new(kind, name, ROUNDING, move |cb| {
        let a = cb.input("a", a_shape, -2.0, 2.0)?;
        let b = if b_weight {
            cb.weight("b", DType::F32, b_shape, -2.0, 2.0)?
        } else {
            cb.input("b", b_shape, -2.0, 2.0)?
        };
        let y = cb.op(op.clone(), &[a, b])?;
        Ok(cb.output(y))
    })
}

fn unary(op: Op, name: &str, shape: &'static [usize], lo: f32, hi: f32) -> Case {
    let kind = op.kind();
    Case::new(kind, name, TRANSCENDENTAL, move |cb| {
        let x = cb.input("x", shape, lo, hi)?;
        let y = cb.op(op.clone(), &[x])?;
        Ok(cb.output(y))
    })
}

fn rms_norm(name: &str, shape: &'static [usize]) -> Case {
    Case::new("rms_norm", name, TRANSCENDENTAL, move |cb| {
        let x = cb.input("x", shape, -3.0, 3.0)?;
        let w = cb.weight("w", DType::F32, &shape[shape.len() - 1..], 0.5, 1.5)?;
        let y = cb.op(Op::RmsNorm { eps: 1e-5 }, &[x, w])?;
        Ok(cb.output(y))
    })
}

fn layer_norm(name: &str, shape: &'static [usize]) -> Case {
    Case::new("layer_norm", name, TRANSCENDENTAL, move |cb| {
        // Mean far from 0: a one-pass E[x^2] - E[x]^2 variance loses digits here.
        let x = cb.input("x", shape, 2.0, 6.0)?;
        let h = &shape[shape.len() - 1..];
        let w = cb.weight("w", DType::F32, h, 0.5, 1.5)?;
        let b = cb.weight("b", DType::F32, h, -0.5, 0.5)?;
        let y = cb.op(Op::LayerNorm { eps: 1e-5 }, &[x, w, b])?;
        Ok(cb.output(y))
    })
}

pub(super) fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for op in [Op::Add, Op::Mul] {
        v.push(binary(
            op.clone(),
            "same_shape.7x13",
            &[7, 13],
            &[7, 13],
            false,
        ));
        v.push(binary(
            op.clone(),
            "broadcast_row.7x200+200.weight",
            &[7, 200],
            &[200],
            true,
        ));
        v.push(binary(
            op.clone(),
            "broadcast_rank3.2x3x13+3x13",
            &[2, 3, 13],
            &[3, 13],
            false,
        ));
        v.push(binary(
            op.clone(),
            "broadcast_rank3.2x3x13+13",
            &[2, 3, 13],
            &[13],
            false,
        ));
        // 300,000 values: more workgroups than any small case, a row broadcast over
        // 1000 rows.
        v.push(binary(
            op,
            "broadcast_row.1000x300+300",
            &[1000, 300],
            &[300],
            false,
        ));
    }
    v.extend([
        unary(Op::Silu, "7x200", &[7, 200], -8.0, 8.0),
        unary(Op::Silu, "rank3.2x3x65", &[2, 3, 65], -20.0, 20.0),
        unary(Op::Gelu { tanh: false }, "erf.7x200", &[7, 200], -5.0, 5.0),
        unary(Op::Gelu { tanh: true }, "tanh.7x200", &[7, 200], -5.0, 5.0),
        unary(
            Op::Gelu { tanh: false },
            "erf.rank3.2x3x65",
            &[2, 3, 65],
            -3.0,
            3.0,
        ),
        unary(Op::Softmax, "7x65", &[7, 65], -4.0, 4.0),
        // |x| up to 120: exp overflows unless the row max is subtracted first.
        unary(Op::Softmax, "large_logits.3x200", &[3, 200], -120.0, 120.0),
        unary(Op::Softmax, "rank3.2x3x13", &[2, 3, 13], -4.0, 4.0),
        unary(Op::Softmax, "width1.5x1", &[5, 1], -4.0, 4.0),
        unary(Op::Softmax, "many_rows.1000x300", &[1000, 300], -4.0, 4.0),
        rms_norm("7x576", &[7, 576]),
        rms_norm("33x65", &[33, 65]),
        rms_norm("rank3.2x3x65", &[2, 3, 65]),
        // One row wider than a workgroup's reduction (decode), width no power of two.
        rms_norm("decode.1x1000", &[1, 1000]),
        layer_norm("7x65", &[7, 65]),
        layer_norm("33x576", &[33, 576]),
        layer_norm("rank3.2x3x13", &[2, 3, 13]),
        // SigLIP-so400m's width, enough rows for the CPU kernel's parallel path.
        layer_norm("64x1152", &[64, 1152]),
        layer_norm("decode.1x1000", &[1, 1000]),
    ]);
    v.extend(activation_tails());
    v.extend(activation_ramps());
    v
}

/// `op` over `n` evenly spaced values from `lo` to `hi` (inclusive): every input of
/// the range, not a random sample of it.
fn ramp(op: Op, name: &str, lo: f32, hi: f32, n: usize) -> Case {
    let kind = op.kind();
    Case::new(kind, name, TRANSCENDENTAL, move |cb| {
        let step = (hi - lo) / (n - 1) as f32;
        let xs = (0..n).map(|i| lo + step * i as f32).collect();
        let x = cb.input_data("x", HostTensor::f32([1, n], xs))?;
        let y = cb.op(op.clone(), &[x])?;
        Ok(cb.output(y))
    })
}

/// GELU over [-10, 10] in steps of 0.005. WGSL has no erf and its tanh may overflow
/// for large arguments, so a shader's own must hold over the whole range, including
/// where an approximation changes branch. The negative tail [-10, -2] gets a case of
/// its own: there the values are small, and a full-range NMSE would hide their error
/// behind the large positive outputs.
fn activation_ramps() -> Vec<Case> {
    let mut v = Vec::new();
    for (tanh, name) in [(false, "erf"), (true, "tanh")] {
        v.push(ramp(
            Op::Gelu { tanh },
            &format!("{name}.ramp.-10..10"),
            -10.0,
            10.0,
            4001,
        ));
        v.push(ramp(
            Op::Gelu { tanh },
            &format!("{name}.ramp.tail.-10..-2"),
            -10.0,
            -2.0,
            1601,
        ));
    }
    v
}

/// GELU (erf, tanh) and SiLU over widths that leave every SIMD tail length (1, 15,
/// 17, 31 values past a whole vector), one value, and a tensor large enough that the
/// CPU splits it over threads in chunks that do not divide it.
fn activation_tails() -> Vec<Case> {
    let mut v = Vec::new();
    for (op, name) in [
        (Op::Gelu { tanh: false }, "erf"),
        (Op::Gelu { tanh: true }, "tanh"),
        (Op::Silu, "silu"),
    ] {
        for (shape, label) in [
            (&[1usize, 1][..], "1x1"),
            (&[3, 17][..], "3x17"),
            (&[5, 31][..], "5x31"),
            (&[1, 15][..], "1x15"),
            (&[257, 257][..], "257x257"),
        ] {
            v.push(unary(
                op.clone(),
                &format!("{name}.tail.{label}"),
                shape,
                -6.0,
                6.0,
            ));
        }
    }
    v
}
