//! The kernel choices of the wgpu backend: the matmul/attention family (by adapter
//! kind) and the optional instructions its tiled kernels use (by adapter features).
//! Lowering (`ops.rs`) reads both; `npurt bench` reports them.

/// Which kernel variants to use for matmul and attention. Both compute the same
/// results; they differ in how work maps to threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFamily {
    /// Register-tiled kernels where all threads of a workgroup read the same
    /// activations / keys (matmul.wgsl `lanes`, attention_lanes.wgsl): no workgroup
    /// memory, no barriers. Best on CPU drivers such as lavapipe, which run a
    /// workgroup's threads as SIMD lanes and pay per load instruction.
    Lanes,
    /// Workgroup-memory tiles and parallel reductions (`gemv`, `gemm`, attention.wgsl):
    /// the usual GPU shape.
    Tiled,
}

/// Tile sizes of the `Tiled` kernels, fixed per device. The defaults suit large GPUs;
/// the options (`WgpuOptions::gemm_rows`, `gemv_cols`, `attn_splits`) force the others so that the
/// conformance suite runs every shape on lavapipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileSizes {
    /// Rows per tile of the prefill GEMM: 64, or 32 (twice the workgroups of a matrix,
    /// for GPUs a 64-row grid leaves idle; matmul.wgsl GEMM_ROWS_32).
    pub gemm_rows: u32,
    /// Output columns per thread of the decode GEMV (matmul.wgsl GEMV_R): 1, 2 or 4;
    /// 0 picks per node (`LowerCtx::gemv_shape`).
    pub gemv_cols: u32,
    /// Key ranges per row of decode attention (attention.wgsl SPLIT_KEYS, merged by
    /// attention_combine.wgsl): 1 (none) .. `MAX_ATTENTION_SPLITS`; 0 picks per node
    /// (`attention_splits`).
    pub attn_splits: u32,
}

impl TileSizes {
    pub const DEFAULT: TileSizes = TileSizes {
        gemm_rows: 64,
        gemv_cols: 0,
        attn_splits: 0,
    };

    /// What differs from the defaults, for `npurt bench`'s kernels column ("" if
    /// nothing).
    pub fn describe(self) -> String {
        let mut parts = Vec::new();
        if self.gemm_rows != Self::DEFAULT.gemm_rows {
            parts.push(format!(", {}-row gemm tiles", self.gemm_rows));
        }
        if self.gemv_cols != Self::DEFAULT.gemv_cols {
            parts.push(format!(", {}-column gemv threads", self.gemv_cols));
        }
        match self.attn_splits {
            0 => {}
            1 => parts.push(", attention keys unsplit".into()),
            n => parts.push(format!(", attention keys in {n} ranges")),
        }
        parts.concat()
    }
}

impl KernelFamily {
    pub fn name(self) -> &'static str {
        match self {
            KernelFamily::Lanes => "lanes",
            KernelFamily::Tiled => "tiled",
        }
    }
}

/// Optional instructions the `Tiled` kernels use where the adapter has them. Each has
/// a plain fallback computing the same result within the conformance thresholds
/// (lavapipe offers the first three, so the tests run both sides; `coop` needs matrix
/// units, which no CI machine has: naga validates its shader there, and the
/// conformance suite runs it on a GPU that offers it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct KernelVariants {
    /// f16 weight tiles in the prefill GEMM (`SHADER_F16`): the weight tile holds each
    /// block's raw values (4-bit and 8-bit integers, f16 values: exact in f16), half
    /// the workgroup memory of f32, with the block's scale applied to the sums;
    /// activations stay f32 (matmul.wgsl says why).
    pub f16: bool,
    /// Subgroup shuffles for the decode GEMV's reduction (`SUBGROUP`) instead of a
    /// round trip through workgroup memory and a barrier.
    pub subgroup: bool,
    /// Packed 4x8 integer dot products (`dot4I8Packed`) for matmuls with i8
    /// activations on integer weight formats: activations quantized per 32-value block
    /// (`ActPrecision::I8`, also serving `I8Row`, which allows finer).
    pub dot4: bool,
    /// Cooperative matrices (`EXPERIMENTAL_COOPERATIVE_MATRIX` with 16x16x16 f16
    /// operands and f32 accumulators, subgroups of 32: NVIDIA's tensor cores) for the
    /// prefill GEMM with f32 or i16 activations (matmul.wgsl `gemm_coop`): each
    /// operand split into two f16 parts, so the sums stay near f32.
    pub coop: bool,
}

impl KernelVariants {
    /// No optional instruction: what any adapter runs.
    pub const PLAIN: KernelVariants = KernelVariants {
        f16: false,
        subgroup: false,
        dot4: false,
        coop: false,
    };
    /// Every optional instruction.
    pub const ALL: KernelVariants = KernelVariants {
        f16: true,
        subgroup: true,
        dot4: true,
        coop: true,
    };

    /// e.g. `f16+subgroup+dot4`, or `plain`.
    pub fn name(self) -> String {
        let on: Vec<&str> = [
            (self.f16, "f16"),
            (self.subgroup, "subgroup"),
            (self.dot4, "dot4"),
            (self.coop, "coop"),
        ]
        .iter()
        .filter(|v| v.0)
        .map(|v| v.1)
        .collect();
        if on.is_empty() {
            "plain".into()
        } else {
            on.join("+")
        }
    }

    /// `plain`, `all`, or a `+`/`,`-separated list of `f16`, `subgroup`, `dot4`, `coop`.
    pub fn parse(s: &str) -> Result<KernelVariants, String> {
        match s.trim() {
            "plain" | "none" | "" => return Ok(Self::PLAIN),
            "all" => return Ok(Self::ALL),
            _ => {}
        }
        let mut v = Self::PLAIN;
        for part in s.split([',', '+']).map(str::trim) {
            match part {
                "f16" => v.f16 = true,
                "subgroup" => v.subgroup = true,
                "dot4" => v.dot4 = true,
                "coop" => v.coop = true,
                other => {
                    return Err(format!(
                        "unknown kernel variant `{other}` (plain, all, or a list of f16, subgroup, dot4, coop)"
                    ))
                }
            }
        }
        Ok(v)
    }

    /// The variants both `self` and `other` enable.
    pub fn and(self, other: KernelVariants) -> KernelVariants {
        KernelVariants {
            f16: self.f16 && other.f16,
            subgroup: self.subgroup && other.subgroup,
            dot4: self.dot4 && other.dot4,
            coop: self.coop && other.coop,
        }
    }
}
