//! Matmul epilogues: the work fused into a matmul's output stage, as an ordered list of
//! steps (tract's `FusedSpec`), not one enum variant per combination.
//!
//! A kernel computes the raw product tile, then walks [`Epilogue::steps`] in order:
//!
//! | step               | extra input      | effect on each output value                   |
//! |--------------------|------------------|-----------------------------------------------|
//! | [`Step::Glu`]      | -                | `act(gate) * up` (weight rows `[gate; up]`, N halves) |
//! | [`Step::Bias`]     | bias `[N]`       | `v + bias[n]`                                 |
//! | [`Step::Act`]      | -                | `act(v)`                                      |
//! | [`Step::Residual`] | residual `[M, N]`| `v + residual[m, n]`                          |
//!
//! The list is ordered and each step appears at most once, in table order: a GLU can
//! only come first (it needs the raw gate and up products), and an activation sits
//! between the bias and the residual (`x + gelu(xW + b)` is what a transformer block
//! computes; `gelu(x + ...)` is not). So the lists a model meets are
//! `+bias+gelu` (ViT MLP fc1, projector), `+bias+residual` (ViT MLP fc2, attention
//! output), `+residual` (LLaMA o_proj/down_proj), `+swiglu` (LLaMA gate+up). The order
//! is enforced when a list is built ([`Epilogue::new`], [`Epilogue::then`]), so every
//! `Epilogue` value is valid and a kernel never meets one it cannot walk.
//!
//! Extra inputs follow the matmul's `a, b` and the prologue's weight in step order:
//! bias, then residual (see `MatMulOperands`).

use std::fmt;

/// A pointwise activation, shared by matmul epilogues and the standalone activation
/// ops (`Op::Silu`, `Op::Gelu`; see [`crate::Op::activation`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `x * sigmoid(x)`.
    Silu,
    /// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))` (PyTorch's default, SigLIP's projector).
    Gelu,
    /// GELU's tanh approximation, `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`
    /// (HF `gelu_pytorch_tanh`, SigLIP's encoder MLP).
    GeluTanh,
}

impl Activation {
    pub const ALL: [Activation; 3] = [Activation::Silu, Activation::Gelu, Activation::GeluTanh];

    pub fn name(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_tanh",
        }
    }

    /// The GELU flavour `Op::Gelu { tanh }` computes.
    pub fn gelu(tanh: bool) -> Self {
        if tanh {
            Activation::GeluTanh
        } else {
            Activation::Gelu
        }
    }
}

/// One fused step of an [`Epilogue`]; see the module docs for the order rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// Gated linear unit over weight rows `[gate; up]` (`2N` rows): `act(gate) * up`,
    /// `N` outputs. `Glu(Silu)` is LLaMA's SwiGLU from one fused gate+up matmul.
    Glu(Activation),
    /// `+ bias[n]`, bias `[N]`.
    Bias,
    Act(Activation),
    /// `+ residual[m, n]`, residual `[M, N]`.
    Residual,
}

impl Step {
    /// Position in the fixed order (a list's ranks strictly increase).
    fn rank(self) -> u8 {
        match self {
            Step::Glu(_) => 0,
            Step::Bias => 1,
            Step::Act(_) => 2,
            Step::Residual => 3,
        }
    }

    /// The extra matmul input this step reads, if any.
    pub fn has_input(self) -> bool {
        matches!(self, Step::Bias | Step::Residual)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // `swiglu` keeps LLaMA's fused node names and kernel tables as they were.
            Step::Glu(Activation::Silu) => f.write_str("swiglu"),
            Step::Glu(a) => write!(f, "glu_{}", a.name()),
            Step::Bias => f.write_str("bias"),
            Step::Act(a) => f.write_str(a.name()),
            Step::Residual => f.write_str("residual"),
        }
    }
}

/// Why a list of steps is not an epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EpilogueError {
    #[error("epilogue step `{step}` cannot follow `{after}` (order: glu, bias, activation, residual; each at most once)")]
    Order { step: Step, after: Step },
}

/// Most steps a list can hold: one of each kind.
const MAX_STEPS: usize = 4;

/// An ordered list of fused output steps (at most one of each kind, in the order
/// glu, bias, activation, residual). Small and `Copy`: a fixed array and a length,
/// unused slots always `Step::Bias` so the derived `Eq`/`Hash` compare lists.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epilogue {
    steps: [Step; MAX_STEPS],
    len: u8,
}

impl Default for Epilogue {
    fn default() -> Self {
        Epilogue::NONE
    }
}

impl Epilogue {
    /// No fused work: the raw product.
    pub const NONE: Epilogue = Epilogue {
        steps: [Step::Bias; MAX_STEPS],
        len: 0,
    };
    /// `+ bias`.
    pub const BIAS: Epilogue = Epilogue::one(Step::Bias);
    /// `+ residual`.
    pub const RESIDUAL: Epilogue = Epilogue::one(Step::Residual);
    /// `+ bias + residual` (ViT attention output and MLP fc2).
    pub const BIAS_RESIDUAL: Epilogue = Epilogue {
        steps: [Step::Bias, Step::Residual, Step::Bias, Step::Bias],
        len: 2,
    };
    /// LLaMA's SwiGLU: `silu(gate) * up` over weight rows `[gate; up]`.
    pub const SWIGLU: Epilogue = Epilogue::one(Step::Glu(Activation::Silu));

    const fn one(step: Step) -> Epilogue {
        Epilogue {
            steps: [step, Step::Bias, Step::Bias, Step::Bias],
            len: 1,
        }
    }

    /// The list `steps`, or why it breaks the order rules.
    pub fn new(steps: &[Step]) -> Result<Epilogue, EpilogueError> {
        steps.iter().try_fold(Epilogue::NONE, |e, &s| e.then(s))
    }

    /// This list with `step` appended, or why it cannot follow: the one call a fusion
    /// pass needs (`mm.epilogue.then(Step::Residual)` either fuses or says no).
    pub fn then(self, step: Step) -> Result<Epilogue, EpilogueError> {
        if let Some(&after) = self.steps().last() {
            if step.rank() <= after.rank() {
                return Err(EpilogueError::Order { step, after });
            }
        }
        // Strictly increasing ranks over 4 kinds: a valid list never exceeds MAX_STEPS.
        let mut e = self;
        e.steps[e.len as usize] = step;
        e.len += 1;
        Ok(e)
    }

    /// The steps in the order a kernel applies them.
    pub fn steps(&self) -> &[Step] {
        &self.steps[..self.len as usize]
    }

    pub fn is_empty(self) -> bool {
        self.len == 0
    }

    /// The steps after a leading GLU: what a kernel applies to `act(gate) * up` (or to
    /// the raw product when there is no GLU).
    pub fn after_glu(&self) -> &[Step] {
        match self.glu() {
            Some(_) => &self.steps()[1..],
            None => self.steps(),
        }
    }

    /// The GLU's activation when the list starts with a GLU.
    pub fn glu(self) -> Option<Activation> {
        match self.steps().first() {
            Some(Step::Glu(a)) => Some(*a),
            _ => None,
        }
    }

    /// The activation step's function, if there is one.
    pub fn activation(self) -> Option<Activation> {
        self.steps().iter().find_map(|s| match s {
            Step::Act(a) => Some(*a),
            _ => None,
        })
    }

    pub fn has_bias(self) -> bool {
        self.steps().contains(&Step::Bias)
    }

    pub fn has_residual(self) -> bool {
        self.steps().contains(&Step::Residual)
    }

    /// Extra matmul inputs the steps read (bias, residual).
    pub fn extra_inputs(self) -> usize {
        self.steps().iter().filter(|s| s.has_input()).count()
    }

    /// Output columns for `n_b` weight rows (a GLU halves them), or `None` when a GLU
    /// meets an odd row count.
    pub fn out_cols(self, n_b: usize) -> Option<usize> {
        match self.glu() {
            Some(_) if !n_b.is_multiple_of(2) => None,
            Some(_) => Some(n_b / 2),
            None => Some(n_b),
        }
    }

    /// `+bias+gelu_tanh+residual` style suffix for node names, `npurt inspect` and
    /// conformance case names (empty for no steps).
    pub fn name(self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Epilogue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.steps().iter().try_for_each(|s| write!(f, "+{s}"))
    }
}

impl fmt::Debug for Epilogue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.steps()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Activation::*;

    #[test]
    fn builds_the_lists_models_need_and_names_them() {
        let fc1 = Epilogue::new(&[Step::Bias, Step::Act(GeluTanh)]).unwrap();
        assert_eq!(fc1.name(), "+bias+gelu_tanh");
        assert_eq!(fc1.activation(), Some(GeluTanh));
        assert!(fc1.has_bias() && !fc1.has_residual());
        assert_eq!(fc1.extra_inputs(), 1);
        let full = fc1.then(Step::Residual).unwrap();
        assert_eq!(full.name(), "+bias+gelu_tanh+residual");
        assert_eq!(full.extra_inputs(), 2);
        assert_eq!(
            Epilogue::BIAS.then(Step::Residual),
            Ok(Epilogue::BIAS_RESIDUAL)
        );
        assert_eq!(Epilogue::new(&[Step::Glu(Silu)]), Ok(Epilogue::SWIGLU));
        assert_eq!(Epilogue::SWIGLU.name(), "+swiglu");
        assert_eq!(Epilogue::NONE.name(), "");
        assert_eq!(Epilogue::SWIGLU.out_cols(10), Some(5));
        assert_eq!(Epilogue::SWIGLU.out_cols(9), None);
        assert_eq!(Epilogue::SWIGLU.after_glu(), &[] as &[Step]);
        assert_eq!(Epilogue::BIAS.after_glu(), &[Step::Bias]);
        assert_eq!(format!("{full:?}"), "[Bias, Act(GeluTanh), Residual]");
    }

    #[test]
    fn rejects_out_of_order_and_repeated_steps() {
        for bad in [
            &[Step::Residual, Step::Bias][..],
            &[Step::Bias, Step::Bias],
            &[Step::Act(Gelu), Step::Bias],
            &[Step::Bias, Step::Glu(Silu)],
            &[Step::Act(Gelu), Step::Act(Silu)],
        ] {
            let err = Epilogue::new(bad).unwrap_err().to_string();
            assert!(err.contains("cannot follow"), "{bad:?}: {err}");
        }
        // Equal lists built different ways are equal values (and hash alike).
        let a = Epilogue::NONE.then(Step::Bias).unwrap();
        assert_eq!(a, Epilogue::BIAS);
        assert_eq!(Epilogue::default(), Epilogue::NONE);
    }
}
