//! `npurt run`: a prompt (raw or chat, with a system message and images) through a
//! session, streamed or as one JSON object. With images, the BlueLM-V order of work:
//! the images start encoding as soon as the model is loaded, the prompt is read (typed,
//! with `--chat -`) and the text before the first image is prefilled while they encode;
//! then the vision part is released (unless `--keep-vision`) and the rest is prefilled.
//! With `--chat -` the conversation's start and the images are prefilled while the
//! message is typed, so only the message and the template's tail are left after it.

use super::anyhow_lite::{self, msg};
use npurt_models::ChatMessage;
use npurt_runtime::multimodal::attach_placeholders;
use npurt_runtime::{stats, GenerateOptions, ImageInput, Model, PendingImage, PromptPart, Session};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// What `run` was asked to answer.
pub struct PromptArgs {
    /// Raw text fed as is (image placeholders in it, or the images go first).
    pub prompt: Option<String>,
    /// A user message for the chat template (`-`: read it from stdin).
    pub chat: Option<String>,
    pub system: Option<String>,
    pub images: Vec<PathBuf>,
    /// Keep the vision encoder loaded after the images are encoded.
    pub keep_vision: bool,
    /// Write the logits of the prompt's last N positions to this file.
    pub logits_out: Option<(PathBuf, usize)>,
    pub json: bool,
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn run(model: Arc<Model>, a: PromptArgs, gen: GenerateOptions) -> anyhow_lite::Result<()> {
    if a.system.is_some() && a.chat.is_none() {
        return Err(msg(
            "--system needs --chat (a raw --prompt has no roles)".into()
        ));
    }
    // Encoding starts before the prompt exists (the user is still typing).
    let t_submit = Instant::now();
    let pending = a
        .images
        .iter()
        .map(|p| model.encode_image(ImageInput::File(p.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&PendingImage> = pending.iter().collect();

    // `--chat -` with images: the message is read on a thread while this one prefills
    // the conversation's start and the images (`render_multimodal_chat_ahead`).
    let typed = match &a.chat {
        Some(c) if c == "-" && !refs.is_empty() && a.logits_out.is_none() => {
            Some(std::thread::spawn(read_stdin))
        }
        _ => None,
    };
    let turns_with = |user: String| {
        let mut turns = Vec::new();
        if let Some(sys) = &a.system {
            turns.push((ChatMessage::new("system", sys), vec![]));
        }
        turns.push((ChatMessage::new("user", user), refs.clone()));
        turns
    };
    let mut session = Session::new(model.clone())?;
    let mut ahead_ms = None;
    let mut typed_message = None;
    if let Some(reader) = typed {
        let t = Instant::now();
        let (start, images) = model.render_multimodal_chat_ahead(&turns_with(String::new()))?;
        session.feed_pending(&model.split_prompt(&start, &images)?)?;
        ahead_ms = Some(ms(t.elapsed()));
        typed_message = Some(
            reader
                .join()
                .map_err(|_| msg("the thread reading stdin panicked".into()))??,
        );
    }

    let (text, order) = match (&a.prompt, &a.chat) {
        (Some(p), _) => {
            let text = if refs.is_empty() {
                p.clone()
            } else {
                let token = &model
                    .vision
                    .as_ref()
                    .expect("encode_image checked")
                    .image_token;
                attach_placeholders(p, token, refs.len())?
            };
            (text, refs.clone())
        }
        (None, Some(c)) => {
            let user = match (&typed_message, c.as_str()) {
                (Some((m, _)), _) => m.clone(),
                (None, "-") => read_stdin()?.0,
                (None, _) => c.clone(),
            };
            let turns = turns_with(user);
            if refs.is_empty() {
                let msgs: Vec<ChatMessage> = turns.into_iter().map(|(m, _)| m).collect();
                (model.render_chat(&msgs)?, vec![])
            } else {
                model.render_multimodal_chat(&turns)?
            }
        }
        (None, None) => return Err(msg("give --prompt TEXT or --chat TEXT".into())),
    };
    // When the prompt was there: read (or typed) in full.
    let t_prompt = typed_message.map_or_else(Instant::now, |(_, at)| at);

    let mut dropped = 0;
    let parts: Vec<PromptPart<&PendingImage>> = if order.is_empty() {
        let fitted =
            session.fit_prompt(&model.encode(&text)?, gen.prompt_overflow, gen.max_tokens)?;
        dropped = fitted.dropped;
        vec![PromptPart::Text(fitted.ids)]
    } else {
        model.split_prompt(&text, &order)?
    };
    let prompt_tokens: usize = parts.iter().map(PromptPart::positions).sum();
    let t_prefill = Instant::now();
    // The text before the first image is prefilled while the images encode (all of
    // the prompt at once when its last logits are written; none of it here when the
    // session holds the prompt's start already).
    let first_image = if a.logits_out.is_some() || ahead_ms.is_some() {
        0
    } else {
        parts
            .iter()
            .position(|p| matches!(p, PromptPart::Image(_)))
            .unwrap_or(parts.len())
    };
    for p in &parts[..first_image] {
        if let PromptPart::Text(ids) = p {
            session.feed(ids)?;
        }
    }
    let t_wait = Instant::now();
    let images = pending
        .iter()
        .map(PendingImage::wait)
        .collect::<Result<Vec<_>, _>>()?;
    // What the prompt waited for the images is not prefill time.
    let image_wait = t_wait.elapsed();
    let t_ready = pending
        .iter()
        .filter_map(PendingImage::finished_at)
        .max()
        .unwrap_or(t_submit);
    let vision_peak = stats::peak_rss_bytes().unwrap_or(0);
    let released = !images.is_empty() && !a.keep_vision;
    if released {
        model.release_vision();
        stats::reset_peak_rss();
    }
    let mut reused = 0;
    match &a.logits_out {
        // The start is in the session: only what follows it is fed.
        None if ahead_ms.is_some() => reused = session.feed_pending_reusing(&parts)?.reused,
        None => {
            session.feed_pending(&parts[first_image..])?;
        }
        Some((path, n)) => {
            let ready = npurt_runtime::multimodal::wait_parts(&parts)?;
            let rows = session.feed_prompt_last_logits(&ready, *n)?;
            super::write_logits(path, &rows, model.config.vocab_size)?;
        }
    }
    let prefill_ms = ms(t_prefill.elapsed().saturating_sub(image_wait));
    // The first token's logits are those of the prompt's last row: ready now.
    let first_token_ms = ms(t_prompt.elapsed());

    let mut stdout = std::io::stdout();
    let g = session.generate(&[], &gen, |piece, _| {
        if !a.json {
            print!("{piece}");
            let _ = stdout.flush();
        }
        true
    })?;
    let llm_peak = stats::peak_rss_bytes().unwrap_or(0);
    let peak = vision_peak.max(llm_peak);
    let decode_tok_s = g.decode_tok_s();
    // The rate of what was prefilled after the prompt came (not the start fed ahead).
    let prefill_tok_s = (prompt_tokens - reused) as f64 / (prefill_ms / 1e3);
    let lr = model.load_report;

    // Image figures: the encode's wall time, how much of it ran beside the caller
    // (reading the prompt, prefilling the text before the image), and how long the
    // image was ready before the prompt was (negative: the prompt waited for it).
    let encode_ms = ms(t_ready.saturating_duration_since(t_submit));
    let hidden_ms = ms(t_ready.min(t_wait).saturating_duration_since(t_submit));
    let ready_before_prompt_ms = if t_prompt >= t_ready {
        ms(t_prompt - t_ready)
    } else {
        -ms(t_ready - t_prompt)
    };
    let stage =
        |f: fn(&npurt_runtime::ImageEmbeddings) -> f64| images.iter().map(|e| f(e)).sum::<f64>();
    let grids: Vec<[u32; 2]> = images.iter().map(|e| e.plan.grid).collect();
    let tiles: usize = images.iter().map(|e| e.plan.tiles).sum();
    let image_tokens: usize = images.iter().map(|e| e.tokens()).sum();

    if a.json {
        let mut v = serde_json::json!({
            "text": g.text, "tokens": g.tokens.len(), "stop": format!("{:?}", g.stop),
            "prompt_tokens": prompt_tokens, "prompt_dropped": dropped, "load_ms": model.load_ms,
            "load": {"llm_ms": lr.llm_ms, "vision_ms": lr.vision_ms, "wall_ms": lr.wall_ms},
            "prefill_ms": prefill_ms, "prefill_tok_s": prefill_tok_s, "decode_tok_s": decode_tok_s,
            "first_token_ms": first_token_ms,
            "peak_rss_bytes": peak, "speculation": g.speculation.to_json(),
        });
        if !images.is_empty() {
            let extra = serde_json::json!({
                "images": images.len(),
                "grid": if grids.len() == 1 { serde_json::json!(grids[0]) } else { serde_json::json!(grids) },
                "tiles": tiles, "image_tokens": image_tokens,
                "encode_ms": encode_ms, "hidden_ms": hidden_ms, "image_wait_ms": ms(image_wait),
                "image_ready_before_prompt_ms": ready_before_prompt_ms,
                "preprocess_ms": stage(|e| e.preprocess_ms),
                "conv_ms": stage(|e| e.timings.conv_ms),
                "blocks_ms": stage(|e| e.timings.blocks_ms),
                "project_ms": stage(|e| e.timings.project_ms),
                "vision_released": released,
                "prefilled_while_typing": reused, "prefilled_while_typing_ms": ahead_ms,
                "vision_stage_peak_rss_bytes": vision_peak,
                "llm_stage_peak_rss_bytes": llm_peak,
            });
            let (o, e) = (
                v.as_object_mut().expect("object"),
                extra.as_object().expect("object"),
            );
            o.extend(e.clone());
        }
        println!("{v}");
    } else {
        println!();
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        if !images.is_empty() {
            // The JSON's signed figure, in words: a prompt that came first waited.
            let ready = if ready_before_prompt_ms >= 0.0 {
                format!("{ready_before_prompt_ms:.0} ms before the prompt")
            } else {
                format!("{:.0} ms after the prompt", -ready_before_prompt_ms)
            };
            let ahead = match ahead_ms {
                Some(t) => format!(" | {reused} positions (the conversation's start and the images) prefilled in {t:.0} ms while the message was typed"),
                None => String::new(),
            };
            println!(
                "[images: {} ({tiles} tiles, {image_tokens} tokens) | encode {encode_ms:.0} ms, {hidden_ms:.0} ms of it hidden behind the prompt | ready {ready}, the prompt waited {:.0} ms{ahead} | vision {}]",
                images.len(),
                ms(image_wait),
                if released { "released after encoding" } else { "kept" }
            );
        }
        let load = if lr.vision_ms > 0.0 {
            format!(
                "load {:.0} ms (LLM {:.0}, vision {:.0}, in parallel)",
                lr.wall_ms, lr.llm_ms, lr.vision_ms
            )
        } else {
            format!("load {:.0} ms", lr.wall_ms)
        };
        println!(
            "[{load} | prefill {}{prompt_tokens} tok at {prefill_tok_s:.1} tok/s | first token {first_token_ms:.0} ms after the prompt | decode {} tok at {decode_tok_s:.1} tok/s{} | peak RSS {:.1} MiB | {} | stop: {:?}]",
            match reused {
                0 => String::new(),
                r => format!("{} of ", prompt_tokens - r),
            },
            g.tokens.len(),
            g.speculation.describe(),
            mib(peak),
            model.backend.capabilities().device,
            g.stop
        );
    }
    Ok(())
}

/// The chat message from stdin (its trailing newlines cut) and when it was there.
fn read_stdin() -> anyhow_lite::Result<(String, Instant)> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .map_err(|e| msg(format!("reading the chat message from stdin: {e}")))?;
    Ok((s.trim_end_matches('\n').to_string(), Instant::now()))
}
