//! The packed (quantized) matmul: `out [m, n_out] = epilogue(a [m, k] @ W^T)` for a
//! [`PackedMatrix`] `W [n, k]`, with the activations quantized on the fly to the
//! requested [`ActPrecision`].
//!
//! Work split: the output is cut into 16-column tiles (one packed weight tile each) and
//! row groups of 8. Tasks own contiguous ranges of tiles (and, when there are too few
//! tiles to feed every thread, ranges of row groups), so every weight tile is unpacked
//! once per row block and streamed from memory once per call in decode. Within a task,
//! rows are walked in chunks small enough that their quantized activations stay in L2
//! while all of the task's tiles pass over them; within a chunk a tile is loaded once
//! and reused by every row block (8 rows per microkernel call on AVX-512).

use super::act_quant::{self, ActScratch, RowNorm, GROUP};
use super::microkernels::{self, Job, KernelSet, PairKernel, TileOut};
use super::packed::{PackedMatrix, TILE_ROWS};
use super::{dispatch, epilogue, isa, Isa, SendPtr};
use crate::reference::KernelError;
use npurt_graph::{ActPrecision, Activation, Epilogue};
use std::cell::RefCell;

thread_local! {
    /// Quantized activations of the last call on this thread, reused so decode does
    /// not allocate. Taken out for the duration of a call (a nested call on the same
    /// thread simply gets a fresh one).
    static SCRATCH: RefCell<ActScratch> = RefCell::new(ActScratch::default());
}

/// Activation bytes per L2-resident row chunk (Zen 4 / most x86 have >= 512 KiB L2;
/// half is left for the weight tiles streaming through).
const ROW_CHUNK_BYTES: usize = 192 * 1024;
/// Most bytes of quantized activations prepared at once (see `slab_rows`; 1 MiB was
/// at least as fast as 4 MiB in every alternating pair of so400m encodes).
const SLAB_BYTES: usize = 1 << 20;
/// Below this many multiply-adds a call runs on the calling thread: waking workers
/// costs more than it saves.
const PARALLEL_MIN_MACS: usize = 1 << 17;
/// Smallest task worth splitting off: ~160 KB of Q4 weights, ~8 us of decode. Smaller
/// tasks cost more in claims than they win in balance (a 576x576 GEMV on 2 threads:
/// 7 us as 2 tasks, 9 us as 6).
const TASK_MIN_MACS: usize = 1 << 18;

/// `out [m, n_out] = epilogue(a [m, k] @ w^T)` with activations quantized to `act`
/// (I16: one scale per row; I8: one per 32-value block; F32: as given). `n_out` is
/// `w.n()`, or `w.n() / 2` when the epilogue starts with a GLU (gate rows `0..n/2`,
/// up rows `n/2..n`, `out = act(gate) * up`). `bias` is `[n_out]` and `residual`
/// `[m, n_out]`, each given exactly when the epilogue has that step. The steps run in
/// order on each output tile while it is in registers (`epilogue.rs`). Runs on the
/// current kernel thread pool, using the best kernels this CPU supports (see
/// [`super::with_isa`]).
#[allow(clippy::too_many_arguments)]
pub fn matmul_packed(
    a: &[f32],
    m: usize,
    w: &PackedMatrix,
    act: ActPrecision,
    epilogue: Epilogue,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    matmul_packed_with(isa(), a, m, None, w, act, epilogue, bias, residual, out)
}

/// [`matmul_packed`] of `norm(a)` (an rms_norm or layer_norm prologue), the norm
/// computed while the activations are quantized (see `act_quant`).
#[allow(clippy::too_many_arguments)]
pub fn matmul_packed_norm(
    a: &[f32],
    m: usize,
    norm: RowNorm,
    w: &PackedMatrix,
    act: ActPrecision,
    epilogue: Epilogue,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    matmul_packed_with(
        isa(),
        a,
        m,
        Some(norm),
        w,
        act,
        epilogue,
        bias,
        residual,
        out,
    )
}

/// [`matmul_packed`] (with an optional norm prologue) on an explicit kernel path
/// (lowered to what the CPU supports).
#[allow(clippy::too_many_arguments)]
pub fn matmul_packed_with(
    isa: Isa,
    a: &[f32],
    m: usize,
    norm: Option<RowNorm>,
    w: &PackedMatrix,
    act: ActPrecision,
    epilogue: Epilogue,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let isa = isa.min(dispatch::detected());
    let (n, k) = (w.n(), w.k());
    let fail = |what: String| {
        Err(KernelError(format!(
            "matmul_packed ({} [{n}, {k}], m = {m}): {what}",
            w.dtype()
        )))
    };
    let Some(n_out) = epilogue.out_cols(n) else {
        return fail(format!("{epilogue} needs an even number of weight rows"));
    };
    if Some(a.len()) != m.checked_mul(k) {
        return fail(format!("a has {} values, want m * k", a.len()));
    }
    if norm.is_some_and(|norm| !norm.fits(k)) {
        return fail("the norm's weight or bias does not have k values".into());
    }
    if Some(out.len()) != m.checked_mul(n_out) {
        return fail(format!("out has {} values, want {m} * {n_out}", out.len()));
    }
    match (epilogue.has_bias(), bias) {
        (true, Some(b)) if b.len() == n_out => {}
        (true, Some(b)) => return fail(format!("bias has {} values, want {n_out}", b.len())),
        (true, None) => return fail(format!("epilogue `{epilogue}` needs a bias")),
        (false, Some(_)) => return fail(format!("epilogue `{epilogue}` takes no bias")),
        (false, None) => {}
    }
    match (epilogue.has_residual(), residual) {
        (true, Some(r)) if r.len() == out.len() => {}
        (true, Some(r)) => {
            return fail(format!(
                "residual has {} values, want {}",
                r.len(),
                out.len()
            ))
        }
        (true, None) => return fail(format!("epilogue `{epilogue}` needs a residual")),
        (false, Some(_)) => return fail(format!("epilogue `{epilogue}` takes no residual")),
        (false, None) => {}
    }
    if m == 0 {
        return Ok(());
    }
    if epilogue.glu().is_some() && n_out % TILE_ROWS != 0 {
        // The up rows do not start on a tile boundary, so a tile of gate columns has no
        // matching up tile: multiply first, then apply the epilogue (allocates; no LLaMA
        // shape takes this path, their intermediate sizes are multiples of 16).
        let mut pre = vec![0f32; m * n];
        matmul_packed_with(
            isa,
            a,
            m,
            norm,
            w,
            act,
            Epilogue::NONE,
            None,
            None,
            &mut pre,
        )?;
        return super::epilogue_f32(Some(&pre), m, n, epilogue, bias, residual, out);
    }

    let set = microkernels::select(w.format, act, isa);
    // Pairs of tiles need no GLU (its up tile is the second product already).
    let pair = microkernels::select_pair(w.format, act, isa).filter(|_| epilogue.glu().is_none());
    let mut scratch = SCRATCH.with(|s| {
        s.try_borrow_mut()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default()
    });
    // Rows are quantized (and multiplied) a slab at a time, so the scratch stays about
    // a MiB however many rows come: a batch of 4 ViT tiles' fc2 input (2916 x 4304) is
    // 28 MB at i16 in one piece, 1 MB a slab. Every task walks its rows in L2-sized
    // chunks and streams its weight tiles once per chunk anyway, so a slab costs only
    // a pool wake-up, and its quantized rows are read while still in cache: the
    // so400m encode was 7-12% faster in alternating runs than with one slab.
    let slab = slab_rows(k, act);
    let mut r0 = 0;
    while r0 < m {
        let rows = slab.min(m - r0);
        act_quant::prepare(
            &a[r0 * k..(r0 + rows) * k],
            rows,
            k,
            norm,
            set.plan,
            isa,
            &mut scratch,
        );
        let job = Call {
            isa,
            w,
            set: &set,
            pair,
            act: &scratch,
            m: rows,
            n_out,
            glu: epilogue.glu().map(|act| (act, n_out / TILE_ROWS)),
            epilogue,
            bias,
            residual: residual.map(|r| &r[r0 * n_out..(r0 + rows) * n_out]),
            out: SendPtr(out[r0 * n_out..].as_mut_ptr()),
        };
        job.run(act);
        r0 += rows;
    }
    SCRATCH.with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            *s = scratch;
        }
    });
    Ok(())
}

/// Bytes one row of `k` activations takes in the scratch at precision `act` (values,
/// then block sums and scales).
fn act_row_bytes(k: usize, act: ActPrecision) -> usize {
    match act {
        ActPrecision::F32 => 4 * k,
        ActPrecision::I16 => 2 * k + k / 4,
        ActPrecision::I8 | ActPrecision::I8Row => k + k * 3 / 8,
    }
}

/// Rows quantized at a time: whole row groups filling at most `SLAB_BYTES`.
fn slab_rows(k: usize, act: ActPrecision) -> usize {
    (SLAB_BYTES / act_row_bytes(k, act).max(1) / GROUP).max(1) * GROUP
}

/// One validated call.
struct Call<'a> {
    isa: Isa,
    w: &'a PackedMatrix,
    set: &'a KernelSet,
    /// Two tiles per call where the kernel family has it (never with a GLU).
    pair: Option<PairKernel>,
    act: &'a ActScratch,
    m: usize,
    n_out: usize,
    /// A leading GLU: its activation, and the up tile of output tile `t` is
    /// `t + up_tiles`.
    glu: Option<(Activation, usize)>,
    /// Walked on every output tile (its steps after the GLU).
    epilogue: Epilogue,
    bias: Option<&'a [f32]>,
    residual: Option<&'a [f32]>,
    out: SendPtr,
}

impl Call<'_> {
    fn run(&self, act: ActPrecision) {
        let tiles = self.n_out.div_ceil(TILE_ROWS);
        let groups = self.m.div_ceil(GROUP);
        let threads = super::pool::current_threads();
        let macs = self.m * self.w.n() * self.w.k();
        if threads <= 1 || macs < PARALLEL_MIN_MACS {
            return self.run_range(0..tiles, 0..groups, act);
        }
        // Up to four tasks per thread (claimed dynamically, so a thread slowed by a
        // neighbour process does not hold the others up), but none smaller than
        // TASK_MIN_MACS (each claim moves a cache line between cores), and a multiple of
        // the thread count: 3 equal tasks on 2 threads take as long as 4 (a 576x1536
        // GEMV on 2 threads went from 17 to 9 us). Whole tiles, and row groups as well
        // when there are too few tiles.
        let want = (macs / TASK_MIN_MACS)
            .clamp(threads, threads * 4)
            .next_multiple_of(threads);
        let tile_tasks = tiles.min(want);
        let group_tasks = want.div_ceil(tile_tasks).min(groups);
        super::pool::for_each(tile_tasks * group_tasks, |i| {
            let (ti, gi) = (i % tile_tasks, i / tile_tasks);
            let t = ti * tiles / tile_tasks..(ti + 1) * tiles / tile_tasks;
            let g = gi * groups / group_tasks..(gi + 1) * groups / group_tasks;
            self.run_range(t, g, act);
        });
    }

    /// Output tiles `tiles` for row groups `groups`, with the loop and epilogue code
    /// compiled for the kernels' ISA (so the epilogue vectorizes).
    fn run_range(
        &self,
        tiles: std::ops::Range<usize>,
        groups: std::ops::Range<usize>,
        act: ActPrecision,
    ) {
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `self.isa` is at most what the CPU supports.
            Isa::Avx512Vnni => unsafe { self.run_range_avx512(tiles, groups, act) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2Fma | Isa::Avx2Vnni => unsafe { self.run_range_avx2(tiles, groups, act) },
            _ => self.run_range_generic(tiles, groups, act),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn run_range_avx512(
        &self,
        tiles: std::ops::Range<usize>,
        groups: std::ops::Range<usize>,
        act: ActPrecision,
    ) {
        self.run_range_generic(tiles, groups, act)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run_range_avx2(
        &self,
        tiles: std::ops::Range<usize>,
        groups: std::ops::Range<usize>,
        act: ActPrecision,
    ) {
        self.run_range_generic(tiles, groups, act)
    }

    #[inline(always)]
    fn run_range_generic(
        &self,
        tiles: std::ops::Range<usize>,
        groups: std::ops::Range<usize>,
        act: ActPrecision,
    ) {
        let chunk = (ROW_CHUNK_BYTES / (act_row_bytes(self.w.k(), act) * GROUP).max(1)).max(1);
        // The kernel's output tiles, zeroed once: each call overwrites the rows it
        // computes, and only those are read. (Zeroing them per call put eight more
        // stores per tile into a store buffer that the output's writes already fill.)
        let mut acc: TileOut = [[0f32; TILE_ROWS]; GROUP];
        let mut up: TileOut = [[0f32; TILE_ROWS]; GROUP];
        let mut g0 = groups.start;
        while g0 < groups.end {
            let g1 = (g0 + chunk).min(groups.end);
            let mut t = tiles.start;
            while t < tiles.end {
                // Two tiles at a time where a pair kernel exists and the range has two
                // left; its rows in pair calls, any rest tile by tile.
                let pair = self.pair.filter(|_| t + 1 < tiles.end);
                for g in g0..g1 {
                    let rows = (self.m - g * GROUP).min(GROUP);
                    let mut r0 = 0;
                    while r0 < rows {
                        if let Some(p) = pair.filter(|p| p.rows <= rows - r0) {
                            self.tile_pair(p, t, g, r0, &mut acc, &mut up);
                            r0 += p.rows;
                            continue;
                        }
                        let (mr, kernel) = self.set.pick(rows - r0);
                        self.tile(kernel, t, g, r0, mr, &mut acc, &mut up);
                        if pair.is_some() {
                            self.tile(kernel, t + 1, g, r0, mr, &mut acc, &mut up);
                        }
                        r0 += mr;
                    }
                }
                t += if pair.is_some() { 2 } else { 1 };
            }
            g0 = g1;
        }
    }

    /// Asks for the residual's and the output's lines of this tile (`mr` rows from
    /// `row0`, 16 columns from `j0`: one 64-byte line a row) while the kernel runs.
    /// Walking a 16-column tile down the rows strides through memory by a whole row,
    /// which the hardware prefetchers do not follow: without this the epilogue's
    /// residual load missed to DRAM on every row (28% of the epilogue loop's samples
    /// in the so400m encode), and each output store waited for its line.
    #[inline(always)]
    fn prefetch_tile_rows(&self, row0: usize, mr: usize, j0: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0, _MM_HINT_T0};
            for r in 0..mr {
                let o = (row0 + r) * self.n_out + j0;
                // SAFETY: prefetches are hints and never fault; `o` is inside `out`
                // and `residual` (both m * n_out values) anyway.
                unsafe {
                    if let Some(res) = self.residual {
                        _mm_prefetch::<_MM_HINT_T0>(res.as_ptr().add(o) as *const i8);
                    }
                    _mm_prefetch::<_MM_HINT_ET0>(self.out.at(o) as *const i8);
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (row0, mr, j0);
    }

    /// One microkernel call (two for a GLU) and the epilogue's steps, in order, on the
    /// tile while it is in registers.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn tile(
        &self,
        kernel: microkernels::TileKernel,
        t: usize,
        g: usize,
        r0: usize,
        mr: usize,
        acc: &mut TileOut,
        up: &mut TileOut,
    ) {
        let row0 = g * GROUP + r0;
        self.prefetch_tile_rows(row0, mr, t * TILE_ROWS);
        // SAFETY: the kernel set was selected for an ISA the CPU supports and its plan
        // prepared `self.act`; rows r0..r0+mr of group g exist (< m), and tile t (and
        // its up tile) exist in `w`.
        unsafe { kernel(&Job::new(self.w, t, self.act, g, r0), acc) };
        if let Some((act, up_tiles)) = self.glu {
            // SAFETY: as above, for the up tile t + up_tiles < w's tiles.
            unsafe { kernel(&Job::new(self.w, t + up_tiles, self.act, g, r0), up) };
            for r in 0..mr {
                epilogue::glu(act, &mut acc[r], &up[r]);
            }
        }
        self.finish(t, row0, mr, acc);
    }

    /// Tiles `t` and `t + 1` for `p.rows` rows from row `r0` of group `g` in one pair
    /// kernel call, then each tile's epilogue and store.
    #[inline(always)]
    fn tile_pair(
        &self,
        p: PairKernel,
        t: usize,
        g: usize,
        r0: usize,
        acc: &mut TileOut,
        acc2: &mut TileOut,
    ) {
        let row0 = g * GROUP + r0;
        self.prefetch_tile_rows(row0, p.rows, t * TILE_ROWS);
        self.prefetch_tile_rows(row0, p.rows, (t + 1) * TILE_ROWS);
        // SAFETY: as in `tile`; the pair kernel was selected with the kernel set, whose
        // plan prepared `self.act`, and tile t + 1 exists (the caller's range has it).
        unsafe { (p.kernel)(&Job::new(self.w, t, self.act, g, r0), acc, acc2) };
        self.finish(t, row0, p.rows, acc);
        self.finish(t + 1, row0, p.rows, acc2);
    }

    /// The epilogue's steps after its GLU on tile `t`'s product for rows
    /// `row0..row0 + mr` (in `acc`), and its store to the output.
    #[inline(always)]
    fn finish(&self, t: usize, row0: usize, mr: usize, acc: &mut TileOut) {
        let j0 = t * TILE_ROWS;
        let cols = (self.n_out - j0).min(TILE_ROWS);
        let n_out = self.n_out;
        let steps = self.epilogue.after_glu();
        if !steps.is_empty() {
            for (r, acc) in acc.iter_mut().enumerate().take(mr) {
                let o = (row0 + r) * n_out + j0;
                let bias = self.bias.and_then(|b| b.get(j0..j0 + cols));
                let res = self.residual.and_then(|x| x.get(o..o + cols));
                if cols == TILE_ROWS {
                    // A whole tile: the slices' length is the constant 16 once inlined,
                    // so every step is a few unrolled vector ops.
                    epilogue::apply(steps, &mut acc[..TILE_ROWS], bias, res);
                } else {
                    epilogue::apply(steps, &mut acc[..cols], bias, res);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate().take(mr) {
            // SAFETY: this task alone writes columns j0..j0+cols of rows row0..row0+mr,
            // all inside `out` (m * n_out values); no other reference to them exists
            // while this slice lives.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(self.out.at((row0 + r) * n_out + j0), cols)
            };
            if let Ok(dst) = <&mut [f32; TILE_ROWS]>::try_from(&mut *dst) {
                // A whole tile: a fixed-size copy (one vector store, not a memmove call).
                *dst = *acc;
            } else {
                dst.copy_from_slice(&acc[..cols]);
            }
        }
    }
}
