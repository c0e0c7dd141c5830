//! The operands of the CPU's bidirectional attention kernels, read in place.
//!
//! A ViT block's q, k and v are the column ranges of one fused q/k/v product
//! `[rows, q + 2 kv]`. The kernels read each head's rows with a stride anyway, so they
//! take the ranges where they are ([`Qkv::columns_of`]) instead of three copies (the
//! copies were 3% of the so400m encode, and a write and a read of 13 MB per layer
//! each).

use crate::reference::KernelError;

/// q, k and v of a bidirectional attention: row `r` of q is the `n_heads * head_dim`
/// values at `q[r * q_stride..]`, of k and v the `n_kv_heads * head_dim` values at
/// `k[r * kv_stride..]` and `v[r * kv_stride..]`.
#[derive(Clone, Copy, Debug)]
pub struct Qkv<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub q_stride: usize,
    pub kv_stride: usize,
}

/// A checked call's geometry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QkvShape {
    /// q's (and the output's) row width, `n_heads * head_dim`.
    pub qw: usize,
    /// k's and v's row width, `n_kv_heads * head_dim`.
    pub kw: usize,
    /// Query (and key) rows: whole sequences.
    pub rows: usize,
}

impl<'a> Qkv<'a> {
    /// Three dense matrices (`[rows, qw]`, `[rows, kw]`, `[rows, kw]`).
    pub fn dense(q: &'a [f32], k: &'a [f32], v: &'a [f32], [qw, kw]: [usize; 2]) -> Self {
        Qkv {
            q,
            k,
            v,
            q_stride: qw,
            kv_stride: kw,
        }
    }

    /// The column ranges `[q0, q0 + qw)`, `[k0, k0 + kw)`, `[v0, v0 + kw)` of one
    /// `[rows, width]` matrix, read in place (the ranges are not checked here: the
    /// kernel's check does it, with the head counts).
    pub fn columns_of(x: &'a [f32], width: usize, [q0, k0, v0]: [usize; 3]) -> Self {
        let from = |c: usize| x.get(c..).unwrap_or_default();
        Qkv {
            q: from(q0),
            k: from(k0),
            v: from(v0),
            q_stride: width,
            kv_stride: width,
        }
    }

    /// Checks the operands against the heads, `seq` and `out` (`[rows, qw]`, dense):
    /// every row of every operand inside its slice, whole sequences.
    pub(crate) fn check(
        &self,
        seq: usize,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        out: &[f32],
    ) -> Result<QkvShape, KernelError> {
        if head_dim == 0 || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
            return Err(KernelError(format!(
                "bidirectional attention: {n_heads} heads over {n_kv_heads} kv heads of head_dim {head_dim}"
            )));
        }
        let (qw, kw) = (n_heads * head_dim, n_kv_heads * head_dim);
        let rows = out.len() / qw;
        // `rows` rows of `width` values, `stride` apart, inside `len` values.
        let holds = |len: usize, width: usize, stride: usize| {
            stride >= width
                && (rows == 0
                    || (rows - 1)
                        .checked_mul(stride)
                        .and_then(|n| n.checked_add(width))
                        .is_some_and(|n| n <= len))
        };
        if seq == 0
            || !out.len().is_multiple_of(qw)
            || !rows.is_multiple_of(seq)
            || !holds(self.q.len(), qw, self.q_stride)
            || !holds(self.k.len(), kw, self.kv_stride)
            || !holds(self.v.len(), kw, self.kv_stride)
        {
            return Err(KernelError(format!(
                "bidirectional attention: {rows} output rows of {qw} are not whole sequences of {seq} \
                 whose q (stride {}), k and v (stride {}) rows of {qw}, {kw} and {kw} values fit \
                 in {}, {} and {} values",
                self.q_stride,
                self.kv_stride,
                self.q.len(),
                self.k.len(),
                self.v.len()
            )));
        }
        Ok(QkvShape { qw, kw, rows })
    }

    /// Dense copies of the operands (for the reference kernel, which takes dense rows).
    pub(crate) fn to_dense(self, s: QkvShape) -> [Vec<f32>; 3] {
        let rows = |x: &[f32], width: usize, stride: usize| -> Vec<f32> {
            (0..s.rows)
                .flat_map(|r| &x[r * stride..r * stride + width])
                .copied()
                .collect()
        };
        [
            rows(self.q, s.qw, self.q_stride),
            rows(self.k, s.kw, self.kv_stride),
            rows(self.v, s.kw, self.kv_stride),
        ]
    }
}
