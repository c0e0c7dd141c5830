//! `npurt encode-image`: an image (or a pixel tensor) through the vision program,
//! with per-stage times, throughput and peak RSS.

use super::anyhow_lite::{self, msg};
use clap::Args;
use npurt_graph::PrecisionPolicy;
use npurt_models::siglip::VisionFeature;
use npurt_runtime::{image, stats, Runtime, VisionEncoder, VisionOptions};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct EncodeImageArgs {
    /// An HF SigLIP vision directory (config.json + safetensors), or a BlueLM-V model
    /// directory (its vision tower and projector, feature layer and tiling are used).
    #[arg(long, conflicts_with = "synthetic")]
    model: Option<PathBuf>,
    /// Instead of --model: a tower of real shapes with seeded random weights
    /// (`so400m`: SigLIP-so400m + a projector into a 2560-wide LLM), for speed runs.
    #[arg(long, value_parser = ["so400m"])]
    synthetic: Option<String>,
    /// Width of the LLM the synthetic projector feeds (BlueLM-V-3B: 2560).
    #[arg(long, default_value_t = 2560)]
    llm_hidden: usize,
    /// Projector weights (`mm_projector.{ln,fc1,fc2}`) to apply after the tower.
    #[arg(long)]
    projector: Option<PathBuf>,
    /// The image (PNG, JPEG, WebP): decoded, tiled and normalised as the model expects.
    #[arg(long, conflicts_with_all = ["pixels", "image_size"])]
    image: Option<PathBuf>,
    /// Instead of --image: a generated WIDTHxHEIGHT test pattern (e.g. 768x1536, the
    /// paper's 9-tile example) through the same tiling and preprocessing.
    #[arg(long, conflicts_with = "pixels")]
    image_size: Option<String>,
    /// Read tensor `pixel_values` [B, 3, H, W] (normalised) from this safetensors file.
    #[arg(long)]
    pixels: Option<PathBuf>,
    /// Tiling rule: relaxed (BlueLM-V-3B) or llava-next.
    #[arg(long, default_value = "relaxed")]
    rule: String,
    /// Relaxed rule threshold.
    #[arg(long, default_value_t = 0.1)]
    alpha: f64,
    /// Most local tiles (the thumbnail comes on top).
    #[arg(long, default_value_t = 9)]
    max_tiles: u32,
    /// Write `last_hidden_state` [B, tokens, hidden] (and `projected`) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Tiles per compiled execution.
    #[arg(long, default_value_t = npurt_runtime::vision::DEFAULT_BATCH)]
    batch: usize,
    /// Precision preset: f32 (reference), w8a16 (default: INT8 weights, 16-bit
    /// activations), w8a8.
    #[arg(long, default_value = "w8a16")]
    precision: String,
    /// The attention's products, overriding the preset's: f32, f16 (f16 operands: the
    /// w8a16 default) or i8 (integer Q K^T and P V: the w8a8 default).
    #[arg(long, value_parser = ["f32", "f16", "i8"])]
    attention: Option<String>,
    /// The tower's output: last (post-layernorm) or second-last (no post-layernorm).
    #[arg(long, default_value = "last")]
    feature: String,
    /// Backend name (see `npurt backends`).
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Worker threads, 1 to 1024 (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Run the stages one after another (the default pipelines the Conv2D of batch
    /// i+1 against the encoder blocks of batch i).
    #[arg(long)]
    no_pipeline: bool,
    /// Threads of the pipelined Conv2D's own CPU backend.
    #[arg(long, default_value_t = 1)]
    embed_threads: usize,
    /// Print one JSON object instead of the report (and no progress on stderr).
    #[arg(long)]
    json: bool,
}

/// Tiles to encode, and how they were made.
struct Tiles {
    pixels: Vec<f32>,
    count: usize,
    grid: Option<[usize; 2]>,
    preprocess_ms: f64,
}

fn read_pixels(path: &std::path::Path, enc: &VisionEncoder) -> anyhow_lite::Result<Tiles> {
    let t0 = Instant::now();
    let bytes = std::fs::read(path).map_err(|e| msg(format!("reading {}: {e}", path.display())))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| msg(format!("{}: not a safetensors file: {e}", path.display())))?;
    let t = st
        .tensor("pixel_values")
        .map_err(|_| msg(format!("{}: no tensor `pixel_values`", path.display())))?;
    let (c, s) = (enc.config.num_channels, enc.config.image_size);
    let shape = t.shape();
    if t.dtype() != safetensors::Dtype::F32
        || shape.len() != 4
        || shape[1..] != [c, s, s]
        || shape[0] == 0
    {
        return Err(msg(format!(
            "{}: `pixel_values` is {:?} {:?}; the encoder takes f32 [B, {c}, {s}, {s}] with B >= 1",
            path.display(),
            t.dtype(),
            shape
        )));
    }
    let pixels = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Tiles {
        pixels,
        count: shape[0],
        grid: None,
        preprocess_ms: t0.elapsed().as_secs_f64() * 1e3,
    })
}

/// The image's tiles as the encoder takes them (tile side and patch from its config).
fn image_tiles(a: &EncodeImageArgs, enc: &VisionEncoder) -> anyhow_lite::Result<Tiles> {
    let t0 = Instant::now();
    let opts = image::TilingOptions {
        rule: image::TilingRule::parse(&a.rule).ok_or_else(|| {
            msg(format!(
                "unknown tiling rule `{}` (relaxed, llava-next)",
                a.rule
            ))
        })?,
        alpha: a.alpha,
        max_tiles: a.max_tiles,
        tile: enc.config.image_size as u32,
        patch: enc.config.patch_size as u32,
        merge: enc.options.merge as u32,
    };
    let (plan, px) = match (&a.image, &a.image_size) {
        (Some(path), _) => image::load_pixel_tiles(path, &opts, &image::DecodeLimits::default())?,
        (None, Some(size)) => {
            let img = image::test_pattern(size)?;
            let plan = image::plan(img.width(), img.height(), &opts)?;
            let px = image::preprocess(&img, &plan)?;
            (plan, px)
        }
        (None, None) => unreachable!("callers check"),
    };
    Ok(Tiles {
        count: px.tiles,
        pixels: px.data,
        grid: Some([plan.grid[0] as usize, plan.grid[1] as usize]),
        preprocess_ms: t0.elapsed().as_secs_f64() * 1e3,
    })
}

fn write_out(
    path: &std::path::Path,
    tensors: &[(&str, Vec<usize>, &[f32])],
) -> anyhow_lite::Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                .map(|v| (name.to_string(), v))
                .map_err(|e| msg(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize_to_file(views, &None, path)
        .map_err(|e| msg(format!("writing {}: {e}", path.display())))
}

pub fn run(mut a: EncodeImageArgs) -> anyhow_lite::Result<()> {
    let mut precision = PrecisionPolicy::by_name(&a.precision).ok_or_else(|| {
        msg(format!(
            "unknown precision `{}` (known: {})",
            a.precision,
            PrecisionPolicy::names().join(", ")
        ))
    })?;
    match a.attention.as_deref() {
        Some("i8") => precision.attention = npurt_graph::AttentionPrecision::I8,
        Some("f16") => precision.attention = npurt_graph::AttentionPrecision::F16,
        Some(_) => precision.attention = npurt_graph::AttentionPrecision::F32,
        None => {}
    }
    let feature = VisionFeature::parse(&a.feature).ok_or_else(|| {
        msg(format!(
            "unknown feature `{}` (last, second-last)",
            a.feature
        ))
    })?;
    let mut opts = VisionOptions {
        backend: a.backend.clone(),
        threads: a.threads,
        batch: a.batch,
        precision,
        feature,
        pipeline: !a.no_pipeline,
        embed_threads: a.embed_threads,
        // Written by --out; not held otherwise.
        tower_features: a.out.is_some(),
        ..VisionOptions::default()
    };
    let rt = Runtime::new();
    // Progress on stderr: compiling and encoding a full-size tower takes many seconds.
    let progress = |line: String| {
        if !a.json {
            eprintln!("{line}");
        }
    };
    progress(match (&a.model, &a.synthetic) {
        (Some(dir), _) => format!("loading {} on {}...", dir.display(), a.backend),
        _ => format!("building the synthetic tower on {}...", a.backend),
    });
    let enc = match (&a.model, &a.synthetic) {
        (Some(dir), None) if npurt_models::vlm::is_vlm_dir(dir) => {
            let v = npurt_models::vlm::VlmConfig::load(dir)?;
            opts.feature = v.vision_feature;
            opts.projector_ln_eps = v.projector_ln_eps;
            (a.rule, a.alpha, a.max_tiles) = (v.tiling.rule, v.tiling.alpha, v.tiling.max_tiles);
            VisionEncoder::load(&rt, &v.vision, Some(&v.projector), opts)?
        }
        (Some(dir), None) => VisionEncoder::load(&rt, dir, a.projector.as_deref(), opts)?,
        (None, Some(_)) => VisionEncoder::synthetic_so400m(&rt, a.llm_hidden, opts)?,
        _ => return Err(msg("give --model DIR or --synthetic so400m".into())),
    };
    let tiles = match &a.pixels {
        Some(p) => read_pixels(p, &enc)?,
        None if a.image.is_some() || a.image_size.is_some() => image_tiles(&a, &enc)?,
        None => {
            return Err(msg(
                "give --image PATH, --image-size WxH or --pixels FILE".into()
            ))
        }
    };
    progress(format!(
        "loaded in {:.1} s; encoding {} tile(s)...",
        enc.load_ms / 1e3,
        tiles.count
    ));
    let out = enc.encode(&tiles.pixels, tiles.count)?;
    let t = out.timings;
    let embed_device = enc
        .embed_backends
        .first()
        .map(|b| b.capabilities().device.clone());
    let per_tile = enc.tokens_per_tile();
    let image_tokens = per_tile * tiles.count;
    let rss = stats::peak_rss_bytes().unwrap_or(0);
    let macs = enc.config.encoder_macs_per_tile(enc.options.feature) * tiles.count as u64;
    let blocks_gops = 2.0 * macs as f64 / (t.blocks_ms * 1e6);
    let total_ms = tiles.preprocess_ms + t.total_ms;
    // The instruction the encoder's matmuls use, measured now on as many threads (a CPU
    // instruction peak says nothing about another backend's device).
    let threads = a.threads.unwrap_or_else(super::default_threads);
    let measured = (a.backend == "cpu")
        .then(|| enc.matmul_peak(threads, Duration::from_millis(150)))
        .flatten();
    let (peak, attainable) = (measured.map(|m| m.0), measured.map(|m| m.1));
    if let Some(path) = &a.out {
        let (n, d) = (enc.config.tokens(), enc.config.hidden_size);
        let mut tensors = vec![(
            "last_hidden_state",
            vec![tiles.count, n, d],
            &out.features[..],
        )];
        if let (Some(p), Some(pc)) = (&out.projected, &enc.projector_config) {
            tensors.push((
                "projected",
                vec![tiles.count * per_tile, pc.llm_hidden],
                &p[..],
            ));
        }
        write_out(path, &tensors)?;
    }
    if a.json {
        let v = serde_json::json!({
            "model": enc.description, "synthetic": enc.synthetic,
            "precision": a.precision, "attention": enc.options.precision.attention.name(),
            "backend": a.backend, "threads": a.threads,
            "batch": a.batch, "grid": tiles.grid, "tiles": tiles.count,
            "tokens_per_tile": per_tile, "image_tokens": image_tokens,
            "load_ms": enc.load_ms, "preprocess_ms": tiles.preprocess_ms,
            "conv_ms": t.conv_ms, "blocks_ms": t.blocks_ms, "project_ms": t.project_ms,
            "total_ms": total_ms, "pipelined": t.pipelined, "encode_ms": t.total_ms,
            "sequential_ms": t.sequential_ms, "hidden_ms": t.hidden_ms,
            "embed_backend": embed_device, "encoder_gop": 2.0 * macs as f64 / 1e9,
            "blocks_gop_s": blocks_gops, "peak_rss_bytes": rss,
            "weights_bytes": enc.weight_bytes, "arena_bytes": enc.arena_bytes,
            "floor_bytes": enc.weight_bytes as u64 + enc.arena_bytes,
            "peak_instruction": peak.map(|p| p.instruction), "peak_gop_s": peak.map(|p| p.gops),
            "attainable_peak_gop_s": attainable,
            "blocks_fraction_of_peak": attainable.map(|p| blocks_gops / p),
        });
        println!("{v}");
    } else {
        if enc.synthetic {
            println!(
                "SYNTHETIC: {} — speed only, the outputs mean nothing",
                enc.description
            );
        } else {
            println!("{}", enc.description);
        }
        if let Some([c, r]) = tiles.grid {
            println!("grid {c}x{r} + thumbnail");
        }
        println!(
            "{} tiles x {} tokens = {image_tokens} image tokens | batch {} | {} ({} attention) | {}",
            tiles.count, per_tile, a.batch, a.precision, enc.options.precision.attention.name(), a.backend
        );
        println!(
            "decode+preprocess {:.1} ms | conv {:.1} ms | encoder blocks {:.1} ms ({blocks_gops:.1} GOP/s) | downsampler+projector {:.1} ms | total {total_ms:.1} ms | peak RSS {:.1} MiB",
            tiles.preprocess_ms,
            t.conv_ms,
            t.blocks_ms,
            t.project_ms,
            rss as f64 / (1 << 20) as f64
        );
        if t.pipelined {
            println!(
                "pipelined (conv on {}): encode {:.1} ms vs {:.1} ms of stage time, {:.1} ms hidden by the overlap",
                embed_device.as_deref().unwrap_or("?"),
                t.total_ms,
                t.sequential_ms,
                t.hidden_ms
            );
        } else {
            println!(
                "sequential: encode {:.1} ms ({:.1} ms of stage time)",
                t.total_ms, t.sequential_ms
            );
        }
        if let (Some(p), Some(att)) = (peak, attainable) {
            println!(
                "encoder blocks at {:.0}% of the measured peak: {} x {threads} thread(s) = {:.0} GOP/s{}",
                100.0 * blocks_gops / att,
                p.instruction,
                p.gops,
                if att < p.gops {
                    format!(", halved for 16-bit activations = {att:.0} GOP/s")
                } else {
                    String::new()
                }
            );
        }
    }
    Ok(())
}
