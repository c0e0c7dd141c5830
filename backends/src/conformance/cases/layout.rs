//! Data movement and lookups: gather (f32 and quantized tables), reshape, transpose,
//! select_row, slice_cols, and the ViT stem patch_embed.

use super::{EXACT, MATMUL, ROUNDING};
use crate::conformance::case::Case;
use npurt_graph::{DType, Op};
use npurt_kernels::HostTensor;

fn gather(
    name: &str,
    table: DType,
    vocab: usize,
    width: usize,
    rows: usize,
    threshold: f64,
) -> Case {
    Case::new("gather", name, threshold, move |cb| {
        let t = cb.weight("table", table, &[vocab, width], -1.0, 1.0)?;
        // The first and last table rows always appear: off-by-one row indexing shows.
        let mut ids: Vec<i32> = (0..rows).map(|_| cb.rng().below(vocab) as i32).collect();
        ids[0] = 0;
        ids[rows - 1] = vocab as i32 - 1;
        let ids = cb.input_data("ids", HostTensor::i32([rows], ids))?;
        let y = cb.op(Op::Gather, &[t, ids])?;
        Ok(cb.output(y))
    })
}

fn unary(op: Op, name: &str, shape: &'static [usize]) -> Case {
    let kind = op.kind();
    Case::new(kind, name, EXACT, move |cb| {
        let x = cb.input("x", shape, -1.0, 1.0)?;
        let y = cb.op(op.clone(), &[x])?;
        Ok(cb.output(y))
    })
}

fn select_row(name: &str, rows: usize, width: usize, index: i32) -> Case {
    Case::new("select_row", name, EXACT, move |cb| {
        let x = cb.input("x", &[rows, width], -1.0, 1.0)?;
        let i = cb.scalar("index", index)?;
        let y = cb.op(Op::SelectRow, &[x, i])?;
        Ok(cb.output(y))
    })
}

fn patch_embed(name: &str, pixels: &'static [usize], patch: usize, dim: usize) -> Case {
    Case::new("patch_embed", name, MATMUL, move |cb| {
        let x = cb.input("pixels", pixels, -1.0, 1.0)?;
        let w = cb.weight(
            "weight",
            DType::F32,
            &[dim, pixels[1] * patch * patch],
            -1.0,
            1.0,
        )?;
        let b = cb.weight("bias", DType::F32, &[dim], -1.0, 1.0)?;
        let y = cb.op(Op::PatchEmbed { patch }, &[x, w, b])?;
        Ok(cb.output(y))
    })
}

/// `images` token grids of `grid` with `channels` channels, merged `block x block`.
fn space_to_channel(
    name: &str,
    images: usize,
    grid: [usize; 2],
    block: usize,
    channels: usize,
) -> Case {
    Case::new("space_to_channel", name, EXACT, move |cb| {
        let x = cb.input("x", &[images * grid[0] * grid[1], channels], -1.0, 1.0)?;
        let y = cb.op(Op::SpaceToChannel { grid, block }, &[x])?;
        Ok(cb.output(y))
    })
}

pub(super) fn cases() -> Vec<Case> {
    vec![
        gather("f32.50x96.7ids", DType::F32, 50, 96, 7, EXACT),
        gather("f32.decode.1id", DType::F32, 50, 96, 1, EXACT),
        // Dequantizing may round differently (FMA, d*(q-8) vs d*q-8d): one ulp.
        gather("q8_0.50x64.7ids", DType::Q8_0, 50, 64, 7, ROUNDING),
        gather("q4_0.50x64.7ids", DType::Q4_0, 50, 64, 7, ROUNDING),
        gather("q4_1.50x64.7ids", DType::Q4_1, 50, 64, 7, ROUNDING),
        // The other table formats, and a row width that is no multiple of 2 or 4 (f16
        // and bf16 rows then start inside a 32-bit word; per-channel int8 rows too,
        // which the CPU's 32-column blocks decline).
        gather("f32.odd_width.37x65.11ids", DType::F32, 37, 65, 11, EXACT),
        gather("f16.37x65.11ids", DType::F16, 37, 65, 11, EXACT),
        gather("bf16.37x65.11ids", DType::BF16, 37, 65, 11, EXACT),
        gather(
            "q8_channel.37x64.11ids",
            DType::Q8Channel,
            37,
            64,
            11,
            ROUNDING,
        ),
        gather(
            "q8_channel.37x65.11ids",
            DType::Q8Channel,
            37,
            65,
            11,
            ROUNDING,
        ),
        unary(
            Op::Reshape {
                shape: vec![4, 105],
            },
            "7x60_to_4x105",
            &[7, 60],
        ),
        unary(
            Op::Reshape { shape: vec![6, 20] },
            "rank3_to_rank2",
            &[2, 3, 20],
        ),
        unary(
            Op::Reshape {
                shape: vec![7, 3, 20],
            },
            "rank2_to_rank3",
            &[7, 60],
        ),
        unary(Op::Transpose { perm: vec![1, 0] }, "rank2.7x13", &[7, 13]),
        unary(
            Op::Transpose {
                perm: vec![1, 0, 2],
            },
            "rank3.102.3x5x7",
            &[3, 5, 7],
        ),
        unary(
            Op::Transpose {
                perm: vec![2, 0, 1],
            },
            "rank3.201.3x5x7",
            &[3, 5, 7],
        ),
        unary(
            Op::Transpose {
                perm: vec![0, 2, 1],
            },
            "rank3.021.3x5x7",
            &[3, 5, 7],
        ),
        select_row("first.7x65", 7, 65, 0),
        select_row("middle.7x65", 7, 65, 3),
        select_row("last.33x200", 33, 200, 32),
        unary(
            Op::SliceCols { start: 13, len: 65 },
            "13+65_of_200",
            &[7, 200],
        ),
        unary(Op::SliceCols { start: 0, len: 1 }, "first_col", &[7, 200]),
        unary(Op::SliceCols { start: 199, len: 1 }, "last_col", &[7, 200]),
        unary(
            Op::SliceCols { start: 64, len: 32 },
            "k_of_fused_qkv",
            &[33, 128],
        ),
        patch_embed("2x3x8x12.p4.d13", &[2, 3, 8, 12], 4, 13),
        patch_embed("1x3x28x28.p14.d65", &[1, 3, 28, 28], 14, 65),
        // BlueLM-V's downsampler: 27x27 -> 14x14 (padded row and column), even grids,
        // non-square grids, a batch of tiles, odd channel counts.
        space_to_channel("2x27x27.b2.c8", 2, [27, 27], 2, 8),
        space_to_channel("1x4x6.b2.c5", 1, [4, 6], 2, 5),
        space_to_channel("3x5x3.b2.c13", 3, [5, 3], 2, 13),
        space_to_channel("1x7x7.b3.c4", 1, [7, 7], 3, 4),
    ]
}
