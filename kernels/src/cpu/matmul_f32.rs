//! f32 matmul `a [m,k] x b^T` with `b [n,k]` (Linear layout): tasks own blocks of
//! output columns, so each block of `b` rows is read once from memory and reused
//! across all `m` rows of `a` while it is in cache.

use super::{isa, Isa, SendPtr};

/// Output columns per task: small enough to balance 2..16 threads on 576-wide
/// matrices, large enough to amortise task overhead.
const COLS_PER_TASK: usize = 32;
const LANES: usize = 8;

#[inline(always)]
fn dot4(a: &[f32], b0: &[f32], b1: &[f32], b2: &[f32], b3: &[f32]) -> [f32; 4] {
    let k = a.len();
    let mut acc = [[0f32; LANES]; 4];
    let full = k / LANES * LANES;
    let mut p = 0;
    while p < full {
        for l in 0..LANES {
            let av = a[p + l];
            acc[0][l] += av * b0[p + l];
            acc[1][l] += av * b1[p + l];
            acc[2][l] += av * b2[p + l];
            acc[3][l] += av * b3[p + l];
        }
        p += LANES;
    }
    let mut r = [0f32; 4];
    for (ri, acc) in r.iter_mut().zip(&acc) {
        *ri = acc.iter().sum();
    }
    for p in full..k {
        r[0] += a[p] * b0[p];
        r[1] += a[p] * b1[p];
        r[2] += a[p] * b2[p];
        r[3] += a[p] * b3[p];
    }
    r
}

#[inline(always)]
fn dot1(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let full = a.len() / LANES * LANES;
    for p in (0..full).step_by(LANES) {
        for l in 0..LANES {
            acc[l] += a[p + l] * b[p + l];
        }
    }
    acc.iter().sum::<f32>() + (full..a.len()).map(|p| a[p] * b[p]).sum::<f32>()
}

/// Columns `j0..j1` of the output for all rows.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, j0: usize, j1: usize, out: SendPtr) {
    let mut j = j0;
    while j < j1 {
        if j + 4 <= j1 {
            let bs = [
                &b[j * k..][..k],
                &b[(j + 1) * k..][..k],
                &b[(j + 2) * k..][..k],
                &b[(j + 3) * k..][..k],
            ];
            for i in 0..m {
                let r = dot4(&a[i * k..][..k], bs[0], bs[1], bs[2], bs[3]);
                for (c, v) in r.iter().enumerate() {
                    // SAFETY: this task alone writes columns j0..j1; i*n+j+c < m*n.
                    unsafe { *out.at(i * n + j + c) = *v };
                }
            }
            j += 4;
        } else {
            for i in 0..m {
                let v = dot1(&a[i * k..][..k], &b[j * k..][..k]);
                // SAFETY: as above.
                unsafe { *out.at(i * n + j) = v };
            }
            j += 1;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_avx2(
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    j0: usize,
    j1: usize,
    out: SendPtr,
) {
    block(a, b, m, k, n, j0, j1, out)
}

#[allow(clippy::too_many_arguments)]
fn run_block(
    isa: Isa,
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    j0: usize,
    j1: usize,
    out: SendPtr,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() only reports Avx2Fma or better when the CPU has AVX2 and FMA.
        Isa::Avx2Fma | Isa::Avx2Vnni | Isa::Avx512Vnni => unsafe {
            block_avx2(a, b, m, k, n, j0, j1, out)
        },
        _ => block(a, b, m, k, n, j0, j1, out),
    }
}

/// `out [m, n] = a [m, k] @ op(b)`; `op(b) = b^T` for `transpose_b` (b `[n, k]`).
pub fn matmul_f32(
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    transpose_b: bool,
    out: &mut [f32],
) {
    assert!(
        a.len() >= m * k && b.len() >= n * k && out.len() >= m * n,
        "matmul_f32: slices smaller than m,k,n"
    );
    if !transpose_b {
        // Rare in npurt's graphs (weights are Linear-layout); transpose once and reuse.
        let mut bt = vec![0f32; n * k];
        for p in 0..k {
            for j in 0..n {
                bt[j * k + p] = b[p * n + j];
            }
        }
        return matmul_f32(a, &bt, m, k, n, true, out);
    }
    // Resolved here, on the calling thread (`with_isa` is thread-local).
    let isa = isa();
    let ptr = SendPtr(out.as_mut_ptr());
    let tasks = n.div_ceil(COLS_PER_TASK);
    super::pool::for_each(tasks, |t| {
        let j0 = t * COLS_PER_TASK;
        run_block(isa, a, b, m, k, n, j0, (j0 + COLS_PER_TASK).min(n), ptr);
    });
}
