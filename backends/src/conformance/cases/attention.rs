//! The attention block's ops: rope (every scaling, pos > 0, partial rotary dims),
//! kv_write (prefill chunk and last-row decode), attention (GQA 9/3 as SmolLM2, MHA 4/4,
//! pos 0 and pos > 0, padded chunks with n_valid < rows (compared on their valid rows:
//! the padding rows' values are unspecified), garbage past the valid rows,
//! chunks spanning several query and key blocks, odd head_dims), over f32, f16 and
//! int8 (`Q8Head`) KV caches; and whole attention blocks (`block_case`), the chain a
//! backend may fuse.

use super::{ATTENTION, ATTENTION_F16, ATTENTION_I8, EXACT, KV_INT8_WRITE, ROPE};
use crate::conformance::case::{Case, CaseBuilder, Compared};
use npurt_graph::AttentionPrecision::{self, F16 as F16_ATTN, F32 as F32_ATTN, I8 as I8_ATTN};
use npurt_graph::DType::{self, F16, F32};
use npurt_graph::{AttentionMode, Op, RopeParams, RopeScaling};

#[allow(clippy::too_many_arguments)]
fn rope_case(
    name: &str,
    heads: usize,
    head_dim: usize,
    rotary_dim: usize,
    theta: f32,
    scaling: RopeScaling,
    rows: usize,
    pos: i32,
    n_valid: i32,
) -> Case {
    Case::new("rope", name, ROPE, move |cb| {
        let x = cb.input("x", &[rows, heads * head_dim], -2.0, 2.0)?;
        let p = cb.scalar("pos", pos)?;
        let nv = cb.scalar("n_valid", n_valid)?;
        let params = RopeParams {
            head_dim,
            rotary_dim,
            theta,
            scaling: scaling.clone(),
        };
        let y = cb.op(Op::Rope { params }, &[x, p, nv])?;
        Ok(cb.output(y))
    })
}

/// `kv` is the cache dtype; f16 cases are named `f16.<name>`.
fn kv_write_case(
    kv: DType,
    name: &str,
    cache_rows: usize,
    width: usize,
    rows: usize,
    pos: i32,
) -> Case {
    let threshold = if matches!(kv, DType::Q8Head { .. }) {
        KV_INT8_WRITE
    } else {
        EXACT
    };
    Case::new("kv_write", kv_name(kv, name), threshold, move |cb| {
        let cache = cb.state_of("cache", kv, &[cache_rows, width], -1.0, 1.0)?;
        let new = cb.input("new", &[rows, width], -1.0, 1.0)?;
        let p = cb.scalar("pos", pos)?;
        cb.op(Op::KvWrite, &[cache, new, p])?;
        Ok(Compared::State(cache))
    })
}

fn kv_name(kv: DType, name: &str) -> String {
    match kv {
        DType::F32 => name.to_string(),
        DType::Q8Head { .. } => format!("int8.{name}"),
        _ => format!("{kv}.{name}"),
    }
}

/// The int8 KV cache (`--kv-cache int8`) of head dim 16, 24 and 64.
const KV8_16: DType = DType::Q8Head { head_dim: 16 };
const KV8_24: DType = DType::Q8Head { head_dim: 24 };
const KV8_64: DType = DType::Q8Head { head_dim: 64 };

#[allow(clippy::too_many_arguments)]
fn attention_case(
    kv: DType,
    name: &str,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    rows: usize,
    cache_rows: usize,
    pos: i32,
    n_valid: i32,
) -> Case {
    Case::new("attention", kv_name(kv, name), ATTENTION, move |cb| {
        // Scores of a few units: a softmax that is neither flat nor one-hot.
        let q = cb.input("q", &[rows, n_heads * head_dim], -2.0, 2.0)?;
        let kw = n_kv_heads * head_dim;
        let k = cb.state_of("k_cache", kv, &[cache_rows, kw], -2.0, 2.0)?;
        let v = cb.state_of("v_cache", kv, &[cache_rows, kw], -1.0, 1.0)?;
        let p = cb.scalar("pos", pos)?;
        let nv = cb.scalar("n_valid", n_valid)?;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let y = cb.op(
            Op::Attention {
                n_heads,
                n_kv_heads,
                head_dim,
                scale,
                mode: AttentionMode::Causal,
                precision: AttentionPrecision::F32,
            },
            &[q, k, v, p, nv],
        )?;
        Ok(cb.output_rows(y, n_valid as usize))
    })
}

/// One LLaMA attention block as the builder emits it after `FuseSharedInput`: q, k and
/// v sliced from one fused matrix, RoPE on q and k, both written into the caches, then
/// attention over the written caches (named `block.<kv>.<name>`; compared: the
/// attention's output on the valid rows, which every KV write feeds). A backend may run
/// this chain fused: the wgpu backend reads the slices in place and rotates k in the KV
/// write and q in the attention's query loads, with no dispatch of their own.
#[allow(clippy::too_many_arguments)]
fn block_case(
    kv: DType,
    name: &str,
    [n_heads, n_kv_heads, head_dim, rotary_dim]: [usize; 4],
    scaling: RopeScaling,
    rows: usize,
    cache_rows: usize,
    pos: i32,
    n_valid: i32,
) -> Case {
    Case::new(
        "attention",
        kv_name(kv, &format!("block.{name}")),
        ATTENTION,
        move |cb| {
            let (qw, kw) = (n_heads * head_dim, n_kv_heads * head_dim);
            let qkv = cb.input("qkv", &[rows, qw + 2 * kw], -2.0, 2.0)?;
            let k_cache = cb.state_of("k_cache", kv, &[cache_rows, kw], -2.0, 2.0)?;
            let v_cache = cb.state_of("v_cache", kv, &[cache_rows, kw], -1.0, 1.0)?;
            let p = cb.scalar("pos", pos)?;
            let nv = cb.scalar("n_valid", n_valid)?;
            let q = cb.op(Op::SliceCols { start: 0, len: qw }, &[qkv])?;
            let k = cb.op(Op::SliceCols { start: qw, len: kw }, &[qkv])?;
            let v = cb.op(
                Op::SliceCols {
                    start: qw + kw,
                    len: kw,
                },
                &[qkv],
            )?;
            let params = RopeParams {
                head_dim,
                rotary_dim,
                theta: 10000.0,
                scaling: scaling.clone(),
            };
            let q = cb.op(
                Op::Rope {
                    params: params.clone(),
                },
                &[q, p, nv],
            )?;
            let k = cb.op(Op::Rope { params }, &[k, p, nv])?;
            let k_cache = cb.op(Op::KvWrite, &[k_cache, k, p])?;
            let v_cache = cb.op(Op::KvWrite, &[v_cache, v, p])?;
            let y = cb.op(
                Op::Attention {
                    n_heads,
                    n_kv_heads,
                    head_dim,
                    scale: 1.0 / (head_dim as f32).sqrt(),
                    mode: AttentionMode::Causal,
                    precision: AttentionPrecision::F32,
                },
                &[q, k_cache, v_cache, p, nv],
            )?;
            Ok(cb.output_rows(y, n_valid as usize))
        },
    )
}

/// Attention blocks (`block_case`) over each KV cache type: decode and padded prefill
/// chunks, GQA and MHA, partial rotary dims and dynamic NTK scaling (whose frequencies
/// depend on pos + n_valid).
fn block_cases() -> Vec<Case> {
    let dynamic = RopeScaling::DynamicNtk {
        factor: 2.0,
        original_max_position: 16,
    };
    let mut v = Vec::new();
    for (kv, hd) in [(F32, 16), (F16, 16), (KV8_16, 16), (F32, 64), (KV8_64, 64)] {
        v.extend([
            block_case(
                kv,
                &format!("gqa9_3.hd{hd}.decode.pos30"),
                [9, 3, hd, hd],
                RopeScaling::None,
                1,
                40,
                30,
                1,
            ),
            block_case(
                kv,
                &format!("gqa9_3.hd{hd}.rows7.pos13.n_valid4"),
                [9, 3, hd, hd],
                RopeScaling::None,
                7,
                40,
                13,
                4,
            ),
        ]);
    }
    v.extend([
        block_case(
            F32,
            "mha4_4.hd32.rows40.pos100",
            [4, 4, 32, 32],
            RopeScaling::None,
            40,
            160,
            100,
            40,
        ),
        block_case(
            F32,
            "mha2_2.hd24.partial_rotary.rows3.pos5",
            [2, 2, 24, 8],
            RopeScaling::None,
            3,
            16,
            5,
            3,
        ),
        block_case(
            F16,
            "gqa4_2.hd16.dynamic.rows7.pos37",
            [4, 2, 16, 16],
            dynamic,
            7,
            48,
            37,
            7,
        ),
    ]);
    v
}

/// The ViT's mode: `images` sequences of `seq` rows, every query sees its own
/// sequence's keys (named `bidir.<name>`, or `bidir.i8.<name>` with integer products).
fn bidirectional_case(
    name: &str,
    precision: AttentionPrecision,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    images: usize,
    seq: usize,
) -> Case {
    bidirectional(
        name,
        precision,
        [n_heads, n_kv_heads, head_dim],
        images,
        seq,
        false,
    )
}

/// A ViT block's attention as the compiler leaves it: q, k and v column slices of one
/// fused q/k/v product (`bidir[.i8|.f16].block.<name>`), which a backend may read in
/// place (the CPU does).
fn bidirectional_block_case(name: &str, precision: AttentionPrecision, heads: [usize; 3]) -> Case {
    bidirectional(&format!("block.{name}"), precision, heads, 2, 50, true)
}

fn bidirectional(
    name: &str,
    precision: AttentionPrecision,
    [n_heads, n_kv_heads, head_dim]: [usize; 3],
    images: usize,
    seq: usize,
    fused: bool,
) -> Case {
    let (name, threshold) = match precision {
        AttentionPrecision::F32 => (format!("bidir.{name}"), ATTENTION),
        AttentionPrecision::I8 => (format!("bidir.i8.{name}"), ATTENTION_I8),
        AttentionPrecision::F16 => (format!("bidir.f16.{name}"), ATTENTION_F16),
    };
    Case::new("attention", name, threshold, move |cb| {
        let (qw, kw) = (n_heads * head_dim, n_kv_heads * head_dim);
        let rows = images * seq;
        let (q, k, v) = if fused {
            let qkv = cb.input("qkv", &[rows, qw + 2 * kw], -2.0, 2.0)?;
            let slice =
                |cb: &mut CaseBuilder, start, len| cb.op(Op::SliceCols { start, len }, &[qkv]);
            (
                slice(cb, 0, qw)?,
                slice(cb, qw, kw)?,
                slice(cb, qw + kw, kw)?,
            )
        } else {
            (
                cb.input("q", &[rows, qw], -2.0, 2.0)?,
                cb.input("k", &[rows, kw], -2.0, 2.0)?,
                cb.input("v", &[rows, kw], -1.0, 1.0)?,
            )
        };
        let y = cb.op(
            Op::Attention {
                n_heads,
                n_kv_heads,
                head_dim,
                scale: 1.0 / (head_dim as f32).sqrt(),
                mode: AttentionMode::Bidirectional { seq },
                precision,
            },
            &[q, k, v],
        )?;
        Ok(cb.output(y))
    })
}

pub(super) fn cases() -> Vec<Case> {
    let llama3 = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position: 32,
    };
    let dynamic = RopeScaling::DynamicNtk {
        factor: 2.0,
        original_max_position: 16,
    };
    let mut v = vec![
        rope_case("none.pos0", 3, 16, 16, 10000.0, RopeScaling::None, 7, 0, 7),
        rope_case(
            "none.pos37",
            3,
            16,
            16,
            10000.0,
            RopeScaling::None,
            7,
            37,
            7,
        ),
        rope_case(
            "none.decode.pos300.hd64",
            9,
            64,
            64,
            100000.0,
            RopeScaling::None,
            1,
            300,
            1,
        ),
        rope_case(
            "linear.pos37",
            3,
            16,
            16,
            10000.0,
            RopeScaling::Linear { factor: 4.0 },
            7,
            37,
            7,
        ),
        // pos + n_valid = 7 < 16: the base stays unscaled.
        rope_case(
            "dynamic.short",
            3,
            16,
            16,
            10000.0,
            dynamic.clone(),
            7,
            0,
            7,
        ),
        // pos + n_valid = 41 > 16: the NTK base grows (and depends on n_valid).
        rope_case(
            "dynamic.long.pos37.nv4",
            3,
            16,
            16,
            10000.0,
            dynamic,
            7,
            37,
            4,
        ),
        // head_dim 64 and theta 5e5 put frequencies in all three llama3 bands.
        rope_case("llama3.pos100", 2, 64, 64, 500000.0, llama3, 7, 100, 7),
        rope_case(
            "partial_rotary.8of16.pos5",
            3,
            16,
            8,
            10000.0,
            RopeScaling::None,
            7,
            5,
            7,
        ),
    ];
    v.extend(rope_sweep());
    v.extend(block_cases());
    v.extend([
        kv_write_case(F32, "prefill.7rows.pos13", 40, 48, 7, 13),
        kv_write_case(F32, "decode.last_row", 40, 48, 1, 39),
        kv_write_case(F32, "pos0.width192", 33, 192, 7, 0),
        attention_case(F32, "gqa9_3.hd16.pos0", 9, 3, 16, 7, 40, 0, 7),
        attention_case(F32, "gqa9_3.hd16.pos13", 9, 3, 16, 7, 40, 13, 7),
        attention_case(F32, "gqa9_3.hd16.pos13.n_valid4", 9, 3, 16, 7, 40, 13, 4),
        attention_case(F32, "gqa9_3.hd64.decode.pos30", 9, 3, 64, 1, 40, 30, 1),
        // Decode over several key blocks (split across threads, then merged).
        attention_case(F32, "gqa9_3.hd64.decode.pos150", 9, 3, 64, 1, 160, 150, 1),
        // Decode over more keys than one step of a kernel that reads several key
        // blocks at once (wgpu's: 4 of 64), the last step partly and its last blocks
        // wholly past the valid keys; head_dim 80 (the 2.7B shape's).
        attention_case(F32, "gqa8_2.hd80.decode.pos600", 8, 2, 80, 1, 640, 600, 1),
        attention_case(F32, "mha4_4.hd32.pos0", 4, 4, 32, 5, 24, 0, 5),
        attention_case(F32, "mha4_4.hd32.pos9.n_valid3", 4, 4, 32, 5, 24, 9, 3),
        // Larger than one tile of a blocked (flash-style) kernel: several row blocks and
        // key blocks, a causal edge inside a key block, a padded tail of rows.
        attention_case(F32, "gqa9_3.hd64.rows40.pos100", 9, 3, 64, 40, 160, 100, 40),
        attention_case(
            F32,
            "gqa6_2.hd80.rows20.pos70.n_valid17",
            6,
            2,
            80,
            20,
            100,
            70,
            17,
        ),
        // A head_dim that is no multiple of a vector width.
        attention_case(F32, "mha2_2.hd24.rows3.pos5", 2, 2, 24, 3, 16, 5, 3),
        // Head dims past 64 (96; 256, with one KV head for three query heads) and a
        // chunk of 70 rows, more than one query block, with head_dim 30.
        attention_case(F32, "mha4_4.hd96.rows5.pos130", 4, 4, 96, 5, 200, 130, 5),
        attention_case(
            F32,
            "mqa3_1.hd256.rows33.pos60.n_valid30",
            3,
            1,
            256,
            33,
            100,
            60,
            30,
        ),
        attention_case(F32, "gqa2_1.hd30.rows70.pos10", 2, 1, 30, 70, 150, 10, 70),
        // f16 caches (the w* presets' KV cache): writes round to f16; attention
        // reads f16 through every kernel shape (decode, split keys, blocks, pairs).
        kv_write_case(F16, "prefill.7rows.pos13", 40, 48, 7, 13),
        kv_write_case(F16, "decode.last_row", 40, 48, 1, 39),
        attention_case(F16, "gqa9_3.hd16.pos13.n_valid4", 9, 3, 16, 7, 40, 13, 4),
        attention_case(F16, "gqa9_3.hd64.decode.pos150", 9, 3, 64, 1, 160, 150, 1),
        attention_case(F16, "gqa8_2.hd80.decode.pos600", 8, 2, 80, 1, 640, 600, 1),
        attention_case(F16, "gqa9_3.hd64.rows40.pos100", 9, 3, 64, 40, 160, 100, 40),
        attention_case(F16, "mha2_2.hd24.rows3.pos5", 2, 2, 24, 3, 16, 5, 3),
        // int8 caches (`--kv-cache int8`, one scale per token per KV head): writes
        // quantize each head row (48 = 3 heads of 16); attention reads the int8 blocks
        // through every kernel shape. The oracle attends over the dequantized caches,
        // which every backend must read exactly, so the f32 attention threshold holds.
        kv_write_case(KV8_16, "prefill.7rows.pos13", 40, 48, 7, 13),
        kv_write_case(KV8_16, "decode.last_row", 40, 48, 1, 39),
        kv_write_case(KV8_24, "prefill.5rows.pos0.hd24", 16, 48, 5, 0),
        attention_case(KV8_16, "gqa9_3.hd16.pos13.n_valid4", 9, 3, 16, 7, 40, 13, 4),
        attention_case(
            KV8_64,
            "gqa9_3.hd64.decode.pos150",
            9,
            3,
            64,
            1,
            160,
            150,
            1,
        ),
        attention_case(
            KV8_64,
            "gqa8_4.hd64.decode.pos600",
            8,
            4,
            64,
            1,
            640,
            600,
            1,
        ),
        attention_case(
            KV8_64,
            "gqa9_3.hd64.rows40.pos100",
            9,
            3,
            64,
            40,
            160,
            100,
            40,
        ),
        attention_case(KV8_24, "mha2_2.hd24.rows3.pos5", 2, 2, 24, 3, 16, 5, 3),
        // The ViT: SigLIP's 729-token tiles are 27x27; a batch of 3 tiles in one call,
        // sequences shorter and longer than a kernel block, head_dim 32/72/80, one
        // whole so400m-sized sequence (hd 72, the 64 + 8 value tiles), GQA, and a
        // head_dim that is not a multiple of 4 (wgpu's tiled shader).
        bidirectional_case("1x7.h2.hd16", F32_ATTN, 2, 2, 16, 1, 7),
        bidirectional_case("3x50.h4.hd32", F32_ATTN, 4, 4, 32, 3, 50),
        bidirectional_case("2x129.h3.hd72", F32_ATTN, 3, 3, 72, 2, 129),
        bidirectional_case("2x81.h2.hd80", F32_ATTN, 2, 2, 80, 2, 81),
        bidirectional_case("1x729.h2.hd72", F32_ATTN, 2, 2, 72, 1, 729),
        bidirectional_case("2x33.gqa4_2.hd20", F32_ATTN, 4, 2, 20, 2, 33),
        bidirectional_case("2x9.h2.hd13", F32_ATTN, 2, 2, 13, 2, 9),
        // Integer products (the ViT's w8a8): key counts off every block size, one to
        // eight value vectors, GQA, and a head_dim with no whole 4-byte groups.
        bidirectional_case("1x7.h2.hd16", I8_ATTN, 2, 2, 16, 1, 7),
        bidirectional_case("3x50.h4.hd32", I8_ATTN, 4, 4, 32, 3, 50),
        bidirectional_case("2x129.h3.hd72", I8_ATTN, 3, 3, 72, 2, 129),
        bidirectional_case("1x729.h2.hd72", I8_ATTN, 2, 2, 72, 1, 729),
        bidirectional_case("1x40.h2.hd128", I8_ATTN, 2, 2, 128, 1, 40),
        bidirectional_case("2x33.gqa4_2.hd20", I8_ATTN, 4, 2, 20, 2, 33),
        bidirectional_case("2x9.h2.hd13", I8_ATTN, 2, 2, 13, 2, 9),
        // f16 operands (the ViT's w8a16): one to three 32-lane value vectors, keys off
        // the 64-key score step and the 32-key f16 runs, GQA.
        bidirectional_case("1x7.h2.hd16", F16_ATTN, 2, 2, 16, 1, 7),
        bidirectional_case("2x129.h3.hd72", F16_ATTN, 3, 3, 72, 2, 129),
        bidirectional_case("1x729.h2.hd72", F16_ATTN, 2, 2, 72, 1, 729),
        bidirectional_case("1x40.h2.hd128", F16_ATTN, 2, 2, 128, 1, 40),
        bidirectional_case("2x33.gqa4_2.hd20", F16_ATTN, 4, 2, 20, 2, 33),
        // An odd head dim (its pairs end in a zero dim) over an odd count of keys, and
        // the widest head the CPU's integer tiles sum in i32.
        bidirectional_case("2x9.h2.hd13", F16_ATTN, 2, 2, 13, 2, 9),
        bidirectional_case("1x20.h1.hd256", F16_ATTN, 1, 1, 256, 1, 20),
    ]);
    // A ViT block's q/k/v slices of one product feeding the attention, at each
    // precision.
    for p in [F32_ATTN, I8_ATTN, F16_ATTN] {
        v.push(bidirectional_block_case("2x50.gqa4_2.hd32", p, [4, 2, 32]));
    }
    v
}

/// Every scaling with a partial rotary dim (16 of 24) and a padded chunk at pos 300,
/// and at pos 1000, where angles of ~1000 radians need an accurate range reduction.
fn rope_sweep() -> Vec<Case> {
    let scalings = [
        ("none", RopeScaling::None),
        ("linear", RopeScaling::Linear { factor: 4.0 }),
        (
            "llama3",
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position: 64,
            },
        ),
        (
            "dynamic",
            RopeScaling::DynamicNtk {
                factor: 2.0,
                original_max_position: 16,
            },
        ),
    ];
    let mut v = Vec::new();
    for (name, scaling) in scalings {
        v.push(rope_case(
            &format!("{name}.partial_rotary.16of24.pos300.nv3"),
            2,
            24,
            16,
            10000.0,
            scaling.clone(),
            5,
            300,
            3,
        ));
        v.push(rope_case(
            &format!("{name}.pos1000.hd32"),
            4,
            32,
            32,
            10000.0,
            scaling,
            9,
            1000,
            9,
        ));
    }
    v
}
