//! `npurt bench`: llama-bench-style throughput. `ppN` = prefill of N tokens into an
//! empty session (chunked), `tgN` = N single-token decode steps; each repeated, mean
//! and standard deviation in tokens/s. The same run measures the machine's memory
//! read bandwidth, so decode can be quoted as a fraction of what the memory allows.

use crate::{Model, PendingImage, Result, RuntimeError, Session};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchRow {
    pub test: String,
    /// Host threads: CPU backend only (`None`, JSON null, for any other backend).
    pub threads: Option<usize>,
    pub precision: String,
    /// The CPU kernel path (`avx512+vnni`, ...) on the CPU backend; the device's name
    /// (e.g. the wgpu adapter) on any other.
    pub kernels: String,
    pub tok_s_mean: f64,
    pub tok_s_sd: f64,
    pub reps: usize,
}

/// Does `model` run on the CPU backend? Only then do host threads, the CPU's kernel
/// path and host memory bandwidth describe what was measured.
pub fn is_cpu(model: &Model) -> bool {
    model.backend.capabilities().name == "cpu"
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

/// Deterministic token ids in the vocabulary (benchmarks don't depend on content).
fn tokens(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + 13) % vocab) as u32).collect()
}

/// Zero repetitions would report a mean of nothing (NaN).
fn check_reps(reps: usize) -> Result<()> {
    if reps == 0 {
        return Err(RuntimeError::InvalidOption {
            option: "reps",
            reason: "must be at least 1".into(),
        });
    }
    Ok(())
}

pub fn prefill(model: &Arc<Model>, n: usize, reps: usize) -> Result<Vec<f64>> {
    check_reps(reps)?;
    let ids = tokens(n, model.config.vocab_size);
    let mut s = Session::new(model.clone())?;
    s.feed(&ids[..n.min(8)])?; // warm-up: scratch allocation, page faults
    let mut rates = Vec::new();
    for _ in 0..reps {
        s.reset();
        let t = Instant::now();
        s.feed(&ids)?;
        rates.push(n as f64 / t.elapsed().as_secs_f64());
    }
    Ok(rates)
}

/// Decode speed over `n` steps after `depth` tokens already in the KV cache (prefilled
/// once, untimed; each repetition rolls back to them).
pub fn decode(model: &Arc<Model>, n: usize, depth: usize, reps: usize) -> Result<Vec<f64>> {
    check_reps(reps)?;
    let ids = tokens(depth + n + 1, model.config.vocab_size);
    let mut s = Session::new(model.clone())?;
    s.feed(&ids[..depth + 1])?;
    let mut rates = Vec::new();
    for r in 0..=reps {
        s.truncate(depth + 1);
        let t = Instant::now();
        for &id in &ids[depth + 1..] {
            s.feed(&[id])?;
        }
        if r > 0 {
            // Repetition 0 is a warm-up.
            rates.push(n as f64 / t.elapsed().as_secs_f64());
        }
    }
    Ok(rates)
}

/// The peak the CPU's matmuls with `act` activations can reach with `threads`
/// threads, measured now by a dependency-free loop of their instruction (`duration`
/// long): the int8 dot product for i8 activations (for 16-bit ones, as
/// `i16_activation_peak` says: halved where they run as two byte planes), FMA for f32.
/// Returns the measurement and the attainable GOP/s; `None` where the CPU lacks the
/// instruction.
pub fn cpu_matmul_peak(
    act: npurt_graph::ActPrecision,
    threads: usize,
    duration: std::time::Duration,
) -> Option<(npurt_kernels::cpu::PeakReport, f64)> {
    use npurt_graph::ActPrecision as A;
    use npurt_kernels::cpu::{i16_activation_peak, measure_peak, PeakKind};
    let (kind, per_product) = match act {
        A::F32 => (PeakKind::F32Fma, 1.0),
        A::I16 => i16_activation_peak(),
        A::I8 | A::I8Row => (PeakKind::Int8Dot, 1.0),
    };
    let peak = measure_peak(kind, threads, duration)?;
    Some((peak, peak.gops / per_product))
}

/// The question of an image benchmark's prompt (any text does: its length is what
/// costs).
pub const IMAGE_QUESTION: &str = "Describe this image in detail.";

/// What an image prompt cost, per repetition: the image's encode (submission to
/// embeddings ready: preprocessing, tower, projector) and then the prefill of the whole
/// chat prompt (template, image rows, question), whose last row's logits give the first
/// token. Time to first token is their sum when the image arrives with the question,
/// and the prefill alone when it was encoded while the question was typed (BlueLM-V's
/// scheme, `run`'s default). When the conversation's start and the image were also
/// prefilled while the question was typed
/// ([`crate::Model::render_multimodal_chat_ahead`],
/// [`Session::feed_pending_reusing`]), it is the prefill of what is left: the question
/// and the template's tail.
#[derive(Clone, Debug)]
pub struct ImagePromptBench {
    /// The image size (`WIDTHxHEIGHT`).
    pub size: String,
    pub tiles: usize,
    pub image_tokens: usize,
    /// Rows of the whole prompt: the image's and the text's.
    pub prompt_tokens: usize,
    pub encode_s: Vec<f64>,
    pub prefill_s: Vec<f64>,
    /// Rows left to prefill once the question is typed, when the prompt's start and the
    /// image were prefilled before, and the seconds that took.
    pub rows_after_typing: usize,
    pub after_typing_s: Vec<f64>,
    /// Operations (2 per multiply-add) of the encode's matmuls and attention products
    /// ([`crate::VisionEncoder::ops`]) and of the prefill's matmuls (the LLM's
    /// linears for every prompt row; its attention is not counted).
    pub encode_ops: f64,
    pub prefill_ops: f64,
}

impl ImagePromptBench {
    /// Mean seconds of the encode and of the prefill.
    pub fn means(&self) -> (f64, f64) {
        (mean_sd(&self.encode_s).0, mean_sd(&self.prefill_s).0)
    }

    /// Mean seconds of the prefill left once the question is typed, the prompt's start
    /// and the image prefilled before.
    pub fn after_typing_mean(&self) -> f64 {
        mean_sd(&self.after_typing_s).0
    }

    /// The two table rows: the encode in image tokens/s (its precision column names
    /// the vision precision), the prompt's prefill in rows/s.
    pub fn rows(&self, model: &Model, threads: usize) -> [BenchRow; 2] {
        let rate = |n: usize, secs: &[f64]| secs.iter().map(|s| n as f64 / s).collect::<Vec<_>>();
        let mut encode = row(
            model,
            format!("enc {} ({} tiles)", self.size, self.tiles),
            threads,
            &rate(self.image_tokens, &self.encode_s),
        );
        if let Some(enc) = model.vision.as_ref().and_then(|v| v.encoder()) {
            encode.precision = format!("vision {}", enc.options.precision.name);
        }
        [
            encode,
            row(
                model,
                format!("pp{} image+text", self.prompt_tokens),
                threads,
                &rate(self.prompt_tokens, &self.prefill_s),
            ),
        ]
    }

    /// GOP/s of the encode and of the prefill (means).
    pub fn gops(&self) -> (f64, f64) {
        let (enc, pre) = self.means();
        (self.encode_ops / enc / 1e9, self.prefill_ops / pre / 1e9)
    }

    /// `peaks`: the attainable GOP/s of the encode's and the prefill's matmuls where
    /// they were measured ([`cpu_matmul_peak`]).
    pub fn to_json(&self, threads: Option<usize>, peaks: [Option<f64>; 2]) -> serde_json::Value {
        let (enc, pre) = self.means();
        let (enc_gops, pre_gops) = self.gops();
        serde_json::json!({
            "image": self.size, "threads": threads, "tiles": self.tiles,
            "image_tokens": self.image_tokens, "prompt_tokens": self.prompt_tokens,
            "encode_ms": enc * 1e3, "prefill_ms": pre * 1e3,
            "ttft_ms": (enc + pre) * 1e3, "ttft_encoded_while_typing_ms": pre * 1e3,
            "ttft_prefilled_while_typing_ms": self.after_typing_mean() * 1e3,
            "rows_after_typing": self.rows_after_typing,
            "encode_gop_s": enc_gops, "prefill_matmul_gop_s": pre_gops,
            "encode_peak_gop_s": peaks[0], "prefill_peak_gop_s": peaks[1],
        })
    }
}

/// Encodes a generated `size` image ([`crate::image::test_pattern`]) and prefills a
/// one-turn chat prompt with it and [`IMAGE_QUESTION`] (as is if the model has no chat
/// template) into an empty session, `reps` times, on a BlueLM-V model
/// (`RuntimeError::NotMultimodal` otherwise; an image the context cannot hold is
/// `ImageTooLarge` before any encode).
pub fn image_prompt(model: &Arc<Model>, size: &str, reps: usize) -> Result<ImagePromptBench> {
    check_reps(reps)?;
    let img = crate::image::test_pattern(size)?;
    // The prompt: the question with the placeholder before it, in the chat template
    // (as is where the model has none).
    let token = &model
        .vision
        .as_ref()
        .ok_or(RuntimeError::NotMultimodal)?
        .image_token;
    let content = crate::multimodal::attach_placeholders(IMAGE_QUESTION, token, 1)?;
    let text = match model.render_chat(&[npurt_models::ChatMessage::new("user", &content)]) {
        Err(RuntimeError::NoChatTemplate) => content,
        text => text?,
    };
    // The prompt's start, as a frontend prefills it while the question is typed: up to
    // the question (the placeholder line alone without a template).
    let ahead = |pending: &PendingImage| {
        let turn = [(
            npurt_models::ChatMessage::new("user", IMAGE_QUESTION),
            vec![pending],
        )];
        match model.render_multimodal_chat_ahead(&turn) {
            Err(RuntimeError::NoChatTemplate) => {
                crate::multimodal::attach_placeholders("", token, 1)
            }
            text => text.map(|(text, _)| text),
        }
    };
    // The LLM's matmul work per prompt row: a chunk graph's over its rows.
    let chunk = &model.graph(crate::GraphKind::PrefillEmbeds).graph;
    let rows = npurt_graph::rows::ValidRows::of(chunk).map_or(model.options.chunk, |v| v.rows);
    let per_row = MatmulWork::of(chunk).ops / rows as f64;
    let mut s = Session::new(model.clone())?;
    s.feed(&tokens(8, model.config.vocab_size))?; // warm-up, as `prefill`'s
    let mut out = None;
    for _ in 0..reps {
        let t = Instant::now();
        let pending = model.encode_image(crate::ImageInput::Rgb(img.clone()))?;
        pending.wait()?;
        let encode = t.elapsed().as_secs_f64();
        let parts = model.split_prompt(&text, &[&pending])?;
        s.reset();
        let t = Instant::now();
        let fed = s.feed_pending(&parts)?;
        let prefill = t.elapsed().as_secs_f64();
        // Again with the start prefilled before the question came: the session keeps
        // the start it holds, and what is left is timed.
        s.feed_pending_reusing(&model.split_prompt(&ahead(&pending)?, &[&pending])?)?;
        let t = Instant::now();
        let after = s.feed_pending_reusing(&parts)?;
        let after_typing = t.elapsed().as_secs_f64();
        let plan = pending.plan();
        let encoder = model.vision.as_ref().and_then(|v| v.encoder());
        let b = out.get_or_insert_with(|| ImagePromptBench {
            size: size.to_string(),
            tiles: plan.tiles,
            image_tokens: plan.image_tokens,
            prompt_tokens: fed,
            encode_s: Vec::new(),
            prefill_s: Vec::new(),
            rows_after_typing: after.fed,
            after_typing_s: Vec::new(),
            encode_ops: encoder.map_or(0.0, |e| e.ops(plan.tiles)),
            prefill_ops: per_row * fed as f64,
        });
        b.encode_s.push(encode);
        b.prefill_s.push(prefill);
        b.after_typing_s.push(after_typing);
    }
    Ok(out.expect("reps >= 1"))
}

pub fn row(model: &Model, test: String, threads: usize, rates: &[f64]) -> BenchRow {
    let (m, sd) = mean_sd(rates);
    let cpu = is_cpu(model);
    BenchRow {
        test,
        threads: cpu.then_some(threads),
        precision: format!(
            "{} ({} kv)",
            model.options.precision.name, model.options.precision.kv_cache
        ),
        kernels: model.backend.capabilities().kernels.clone(),
        tok_s_mean: m,
        tok_s_sd: sd,
        reps: rates.len(),
    }
}

/// A device's measured limits as JSON (`npurt bench --json`, `machine[].device_limits`).
pub fn limits_json(l: &npurt_backends::DeviceLimits) -> serde_json::Value {
    serde_json::json!({
        "timed_by": l.timed_by,
        "copy_gb_s": l.copy_gb_s,
        "peaks": l.peaks.iter().map(|p| serde_json::json!({
            "arithmetic": p.arithmetic, "ops_per_s": p.ops_per_s})).collect::<Vec<_>>(),
    })
}

/// Memory read bandwidth in GB/s on `threads` threads (a 512 MiB buffer summed;
/// best of 3), the ceiling for bandwidth-bound decode.
pub fn read_bandwidth_gb_s(threads: usize) -> f64 {
    use rayon::prelude::*;
    let n = 128 << 20; // u32s = 512 MiB
    let buf: Vec<u32> = (0..n as u32).collect();
    let pool = match rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
    {
        Ok(p) => p,
        Err(_) => return 0.0,
    };
    let mut best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let s: u64 = pool.install(|| {
            buf.par_chunks(1 << 16)
                .map(|c| c.iter().map(|&x| x as u64).sum::<u64>())
                .sum()
        });
        let gbs = (n * 4) as f64 / t.elapsed().as_secs_f64() / 1e9;
        std::hint::black_box(s);
        best = best.max(gbs);
    }
    best
}

/// `npurt bench --profile`: one prefill chunk and one decode step, profiled per node.
pub struct BenchProfile {
    /// Rows of the profiled prefill chunk (the model's chunk size).
    pub prefill_rows: usize,
    /// Tokens in the KV cache before the profiled decode step.
    pub decode_depth: usize,
    pub prefill: npurt_backends::Profile,
    pub decode: npurt_backends::Profile,
    /// The work of each graph's matmuls, to state their rates.
    pub prefill_matmuls: MatmulWork,
    pub decode_matmuls: MatmulWork,
    /// The device's measured limits (`Backend::measure_limits`), when the caller has
    /// them: the matmuls' rate is then also a fraction of the f32 FMA peak (the
    /// arithmetic the wgpu matmul kernels compute in) and of the f16 matrix peak where
    /// those kernels use it, and the decode step's weight reads a fraction of the copy
    /// bandwidth.
    pub limits: Option<npurt_backends::DeviceLimits>,
}

/// What a graph's matmuls do: their operations (2 per multiply-add, a GLU's gate and
/// up both) and the bytes of their weights (each read at least once per run).
#[derive(Clone, Copy, Debug, Default)]
pub struct MatmulWork {
    pub ops: f64,
    pub weight_bytes: f64,
}

impl MatmulWork {
    pub fn of(g: &npurt_graph::Graph) -> MatmulWork {
        let mut w = MatmulWork::default();
        for id in g.ids() {
            let n = g.node(id);
            let npurt_graph::Op::MatMul { transpose_b, .. } = n.op else {
                continue;
            };
            let (a, b) = (g.fact(n.inputs[0]), g.fact(n.inputs[1]));
            let (m, k) = (a.shape[0], a.shape[1]);
            let cols = if transpose_b { b.shape[0] } else { b.shape[1] };
            w.ops += 2.0 * (m * k * cols) as f64;
            w.weight_bytes += b.bytes().unwrap_or(0) as f64;
        }
        w
    }
}

/// Profiles one full prefill chunk into an empty session and then one decode step
/// with `depth` tokens in the KV cache (at least the chunk's: `npurt bench -d`'s
/// deepest, where attention's share of a step is largest), each after an unprofiled
/// warm-up of the same graph (scratch, pipelines).
pub fn profile(model: &Arc<Model>, depth: usize) -> Result<BenchProfile> {
    let rows = model.graph(crate::GraphKind::Prefill).rows;
    let depth = depth.max(rows.max(2));
    let ids = tokens(depth + 1, model.config.vocab_size);
    let mut s = Session::new(model.clone())?;
    // Warm-up: both graphs once.
    s.feed(&ids[..rows.max(2)])?;
    s.feed(&ids[rows..rows + 1])?;
    s.reset();
    let prefill = s.feed_profiled(&ids[..rows.max(2)])?;
    s.feed(&ids[rows.max(2)..depth])?;
    let decode = s.feed_profiled(&ids[depth..depth + 1])?;
    Ok(BenchProfile {
        prefill_rows: rows,
        decode_depth: depth,
        prefill,
        decode,
        prefill_matmuls: MatmulWork::of(&model.graph(crate::GraphKind::Prefill).graph),
        decode_matmuls: MatmulWork::of(&model.graph(crate::GraphKind::Decode).graph),
        limits: None,
    })
}

fn profile_json(p: &npurt_backends::Profile) -> serde_json::Value {
    let source = |s: npurt_backends::TimeSource| match s {
        npurt_backends::TimeSource::Gpu => "gpu",
        npurt_backends::TimeSource::Host => "host",
    };
    serde_json::json!({
        "method": p.method,
        "nodes_ms": p.nodes_ms(),
        "nodes": p.nodes.iter().map(|n| serde_json::json!({
            "node": n.node, "op": n.op, "ms": n.ms, "source": source(n.source)
        })).collect::<Vec<_>>(),
        "by_kind": p.by_kind().iter().map(|k| serde_json::json!({
            "op": k.op, "ms": k.ms, "count": k.count
        })).collect::<Vec<_>>(),
        "host": {
            "record_ms": p.host.record_ms, "submit_ms": p.host.submit_ms,
            "wait_ms": p.host.wait_ms, "readback_ms": p.host.readback_ms,
            "compute_ms": p.host.compute_ms, "total_ms": p.host.total_ms,
        },
    })
}

/// The matmuls of one profile: time, rates and the measured limits to quote them
/// against.
struct MatmulRate {
    ms: f64,
    /// Operations per second.
    rate: f64,
    /// Weight bytes read per second.
    weight_rate: f64,
    f32_peak: Option<f64>,
    matrix_peak: Option<f64>,
    /// Bytes per second (read + write) of the device's copy shader.
    copy_bandwidth: Option<f64>,
}

impl BenchProfile {
    /// `{"prefill": {...}, "decode": {...}}`: each with `method`, `nodes` (node, op,
    /// ms, source), `by_kind` (op, ms, count), `nodes_ms` and `host`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "prefill_rows": self.prefill_rows,
            "decode_depth": self.decode_depth,
            "prefill": self.json_of(&self.prefill, self.prefill_matmuls),
            "decode": self.json_of(&self.decode, self.decode_matmuls),
        })
    }

    /// The matmuls' milliseconds, operations per second and fractions of the measured
    /// peaks (when the limits are known) in one profile.
    fn matmul_rate(&self, p: &npurt_backends::Profile, work: MatmulWork) -> MatmulRate {
        let ms: f64 = p
            .nodes
            .iter()
            .filter(|n| n.op == "matmul")
            .map(|n| n.ms)
            .sum();
        let per_s = |x: f64| if ms > 0.0 { x / (ms * 1e-3) } else { 0.0 };
        let peak = |name| self.limits.as_ref().and_then(|l| l.peak(name));
        MatmulRate {
            ms,
            rate: per_s(work.ops),
            weight_rate: per_s(work.weight_bytes),
            f32_peak: peak("f32 fma"),
            // Measured only where the device's GEMM runs on matrix units (the wgpu
            // `coop` variant).
            matrix_peak: peak("f16 matrix"),
            copy_bandwidth: self.limits.as_ref().map(|l| l.copy_gb_s * 1e9),
        }
    }

    fn json_of(&self, p: &npurt_backends::Profile, work: MatmulWork) -> serde_json::Value {
        let mut j = profile_json(p);
        let r = self.matmul_rate(p, work);
        j["matmul"] = serde_json::json!({
            "ops": work.ops, "ms": r.ms, "ops_per_s": r.rate,
            "fraction_of_f32_fma_peak": r.f32_peak.map(|p| r.rate / p),
            "fraction_of_f16_matrix_peak": r.matrix_peak.map(|p| r.rate / p),
            "weight_bytes": work.weight_bytes, "weight_bytes_per_s": r.weight_rate,
            "fraction_of_copy_bandwidth": r.copy_bandwidth.map(|b| r.weight_rate / b),
        });
        j
    }

    /// The matmuls' rate; `by_bytes` (decode, bound by reading the weights): also
    /// their weight reads against the copy bandwidth.
    fn matmul_line(&self, p: &npurt_backends::Profile, work: MatmulWork, by_bytes: bool) -> String {
        let r = self.matmul_rate(p, work);
        let mut s = format!(
            "matmuls: {:.3} GOP in {:.3} ms = {:.3} TOP/s",
            work.ops / 1e9,
            r.ms,
            r.rate / 1e12
        );
        if let Some(peak) = r.f32_peak {
            s.push_str(&format!(
                " = {:.1}% of the measured f32 FMA peak ({:.2} TOP/s)",
                100.0 * r.rate / peak,
                peak / 1e12
            ));
        }
        if let Some(peak) = r.matrix_peak {
            // gemm_coop multiplies each operand's two f16 parts: 3 matrix products for
            // every multiply-add counted here.
            s.push_str(&format!(
                ", {:.1}% of the measured f16 matrix peak ({:.2} TOP/s; the coop GEMM runs 3 matrix products per product)",
                100.0 * r.rate / peak,
                peak / 1e12
            ));
        }
        if by_bytes {
            s.push_str(&format!(
                "\nmatmul weights: {:.1} MB read in {:.3} ms = {:.1} GB/s",
                work.weight_bytes / 1e6,
                r.ms,
                r.weight_rate / 1e9
            ));
            if let Some(b) = r.copy_bandwidth {
                s.push_str(&format!(
                    " = {:.1}% of the measured copy bandwidth ({:.1} GB/s, read + write)",
                    100.0 * r.weight_rate / b,
                    b / 1e9
                ));
            }
        }
        s
    }

    /// Both profiles as Markdown tables (per op kind, then the `top` slowest nodes).
    pub fn format(&self, top: usize) -> String {
        format!(
            "{}{}\n\n{}{}\n",
            format_profile(
                &format!("prefill chunk ({} rows)", self.prefill_rows),
                &self.prefill,
                top
            ),
            self.matmul_line(&self.prefill, self.prefill_matmuls, false),
            format_profile(
                &format!(
                    "decode step (1 row, {} tokens in the KV cache)",
                    self.decode_depth
                ),
                &self.decode,
                top
            ),
            self.matmul_line(&self.decode, self.decode_matmuls, true),
        )
    }
}

/// One profile as text: a header naming the time source, the per-op-kind table, the
/// `top` slowest nodes, and the host's share of an ordinary run.
pub fn format_profile(title: &str, p: &npurt_backends::Profile, top: usize) -> String {
    use std::fmt::Write;
    let total = p.nodes_ms();
    let share = |ms: f64| if total > 0.0 { 100.0 * ms / total } else { 0.0 };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "profile: {title}: {} nodes, {total:.3} ms; time source: {}; measured by {}",
        p.nodes.len(),
        p.sources(),
        p.method
    );
    let _ = writeln!(s, "\n| op kind | ms | share | nodes |\n|---|---|---|---|");
    for k in p.by_kind() {
        let _ = writeln!(
            s,
            "| {} | {:.3} | {:.1}% | {} |",
            k.op,
            k.ms,
            share(k.ms),
            k.count
        );
    }
    let _ = writeln!(
        s,
        "\n| slowest nodes | op kind | ms | share |\n|---|---|---|---|"
    );
    for n in p.slowest(top) {
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | {:.1}% |",
            n.node,
            n.op,
            n.ms,
            share(n.ms)
        );
    }
    let h = &p.host;
    let _ = writeln!(
        s,
        "\nhost share of an ordinary run ({:.3} ms): record {:.3} ms, submit {:.3} ms, wait {:.3} ms, read back {:.3} ms, compute on the host {:.3} ms",
        h.total_ms, h.record_ms, h.submit_ms, h.wait_ms, h.readback_ms, h.compute_ms
    );
    s
}
