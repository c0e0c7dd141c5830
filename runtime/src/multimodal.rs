//! Multimodal models the BlueLM-V way (arXiv 2411.10640, section 4): a vision encoder,
//! a projector and an LLM loaded together (on separate threads) into one model whose
//! programs share one prepared-weight cache; an image starts encoding the moment it is
//! given ([`Model::encode_image`] returns a [`PendingImage`] at once) so it is ready by
//! the time the user has typed the question; its embeddings are spliced into the prompt
//! at the image placeholder; the vision part can be released once the images are
//! encoded so the LLM stage does not carry it.

use crate::budget::MemoryBudget;
use crate::image::{self, DecodeLimits, ImagePlan, RgbImage, TilingOptions, TilingRule};
use crate::model::{invalid, LoadReport, Model, PreparedWeights};
use crate::vision::{EncodeTimings, VisionEncoder, VisionOptions};
use crate::{LoadOptions, Result, Runtime, RuntimeError};
use npurt_models::vlm::VlmConfig;
use npurt_models::{ChatMessage, ModelError, ModelSource};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

/// The next [`PendingImage::id`].
static NEXT_IMAGE_ID: AtomicU64 = AtomicU64::new(1);

/// Stands for the text of a message not typed yet
/// ([`Model::render_multimodal_chat_ahead`]): characters of Unicode's private use area,
/// which no template adds and no tokenizer sees (the prompt is cut before them).
const TEXT_NOT_TYPED: &str = "\u{E000}npurt: the text to come\u{E000}";

/// The image half of a multimodal model: the encoder (until released) and how images
/// are cut into tiles and marked in prompts.
pub struct VisionPart {
    /// The placeholder that marks an image in a prompt (never tokenized).
    pub image_token: String,
    pub tiling: TilingOptions,
    pub limits: DecodeLimits,
    /// LLM positions one tile takes (196 for SigLIP 384/14 and a 2x2 merge).
    pub tokens_per_tile: usize,
    pub description: String,
    /// The vision encoder's prepared weights (bytes), while it is loaded.
    pub weight_bytes: usize,
    encoder: RwLock<Option<Arc<VisionEncoder>>>,
}

impl VisionPart {
    /// The encoder, unless [`Model::release_vision`] dropped it.
    pub fn encoder(&self) -> Option<Arc<VisionEncoder>> {
        self.encoder.read().ok().and_then(|e| e.clone())
    }
}

/// An image's projected embeddings: the rows it takes in the LLM's context.
pub struct ImageEmbeddings {
    /// The encode that made them ([`PendingImage::id`]): a session recognises its
    /// rows by it ([`crate::Session::feed_pending_reusing`]).
    pub id: u64,
    pub plan: ImagePlan,
    /// `[plan.image_tokens, hidden]` row-major: the thumbnail's rows first, then each
    /// tile's, tiles row-major.
    pub data: Vec<f32>,
    pub hidden: usize,
    /// Decode + tiling + resize + normalisation.
    pub preprocess_ms: f64,
    pub timings: EncodeTimings,
}

impl ImageEmbeddings {
    /// Positions the image takes.
    pub fn tokens(&self) -> usize {
        self.plan.image_tokens
    }
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.hidden..(i + 1) * self.hidden]
    }
}

/// Where an image comes from.
pub enum ImageInput {
    File(PathBuf),
    /// An encoded file's bytes (PNG, JPEG, WebP), with a name for error messages.
    Bytes {
        name: String,
        bytes: Vec<u8>,
    },
    /// Already decoded RGB pixels.
    Rgb(RgbImage),
}

impl From<&Path> for ImageInput {
    fn from(p: &Path) -> Self {
        ImageInput::File(p.to_path_buf())
    }
}

/// An image being encoded on a worker thread. Its plan (grid, tiles, token count) is
/// known at once from the header; [`PendingImage::wait`] returns the embeddings,
/// blocking only for what is left of the encode.
pub struct PendingImage {
    id: u64,
    plan: ImagePlan,
    submitted: Instant,
    finished: Arc<OnceLock<Instant>>,
    worker: Mutex<Option<std::thread::JoinHandle<Result<Arc<ImageEmbeddings>>>>>,
    result: OnceLock<std::result::Result<Arc<ImageEmbeddings>, String>>,
}

impl PendingImage {
    /// Unique in the process: this encode's rows in a session's positions are the same
    /// image's rows exactly when their ids match (two encodes of one picture are two
    /// images).
    pub fn id(&self) -> u64 {
        self.id
    }
    pub fn plan(&self) -> &ImagePlan {
        &self.plan
    }
    /// When `encode_image` was called.
    pub fn submitted_at(&self) -> Instant {
        self.submitted
    }
    /// When the encode finished (successfully or not), if it has.
    pub fn finished_at(&self) -> Option<Instant> {
        self.finished.get().copied()
    }
    pub fn is_ready(&self) -> bool {
        self.finished.get().is_some()
    }

    /// The embeddings, waiting for the encode to finish. The first call after a failed
    /// encode returns its typed error; later calls return [`RuntimeError::ImageFailed`]
    /// with its text.
    pub fn wait(&self) -> Result<Arc<ImageEmbeddings>> {
        let handle = self
            .worker
            .lock()
            .map_err(|_| invalid("image", "a previous wait panicked"))?
            .take();
        if let Some(h) = handle {
            let r = h.join().unwrap_or_else(|_| {
                Err(RuntimeError::ImageFailed(
                    "the image encoder thread panicked".into(),
                ))
            });
            let stored = match &r {
                Ok(e) => Ok(e.clone()),
                Err(e) => Err(e.to_string()),
            };
            let _ = self.result.set(stored);
            return r;
        }
        match self.result.get() {
            Some(Ok(e)) => Ok(e.clone()),
            Some(Err(msg)) => Err(RuntimeError::ImageFailed(msg.clone())),
            None => Err(RuntimeError::ImageFailed(
                "the encode was lost (a concurrent wait panicked)".into(),
            )),
        }
    }
}

impl Runtime {
    /// Loads a BlueLM-V model directory: the vision tower + projector and the LLM are
    /// read and compiled on two threads into one shared weight cache.
    pub fn load_multimodal(
        &self,
        dir: &Path,
        opts: LoadOptions,
        vision_opts: VisionOptions,
    ) -> Result<Arc<Model>> {
        let t0 = Instant::now();
        let vlm = VlmConfig::load(dir)?;
        let backends = self.backends(&opts.backend, opts.threads)?;
        let prepared = Arc::new(PreparedWeights::default());
        let budget = MemoryBudget::new(opts.mem_budget);
        let vision_opts = VisionOptions {
            budget: Some(budget.clone()),
            backend: opts.backend.clone(),
            threads: opts.threads,
            feature: vlm.vision_feature,
            projector_ln_eps: vlm.projector_ln_eps,
            // A session reads the projected tokens only.
            tower_features: false,
            ..vision_opts
        };
        let (llm, vision) = std::thread::scope(|s| {
            let llm = s.spawn(|| -> Result<(Model, f64)> {
                let t = Instant::now();
                let source = ModelSource::open(&vlm.llm)?;
                let m = Model::compile_llm(
                    source,
                    backends.clone(),
                    opts.clone(),
                    prepared.clone(),
                    budget.clone(),
                    true,
                )?;
                Ok((m, t.elapsed().as_secs_f64() * 1e3))
            });
            let vision = s.spawn(|| {
                VisionEncoder::load_into(
                    self,
                    &vlm.vision,
                    Some(&vlm.projector),
                    vision_opts.clone(),
                    backends.clone(),
                    &prepared,
                )
            });
            (
                joined(llm.join(), "the LLM"),
                joined(vision.join(), "the vision tower"),
            )
        });
        let (mut model, llm_ms) = llm?;
        let encoder = vision?;
        let part = check_parts(&vlm, &model, &encoder)?;
        model.description = format!(
            "BlueLM-V {}: {} + {}",
            dir.display(),
            part.description,
            model.description
        );
        model.load_report = LoadReport {
            llm_ms,
            vision_ms: encoder.load_ms,
            wall_ms: t0.elapsed().as_secs_f64() * 1e3,
        };
        model.load_ms = model.load_report.wall_ms;
        *part
            .encoder
            .write()
            .map_err(|_| invalid("vision", "poisoned"))? = Some(Arc::new(encoder));
        model.vision = Some(part);
        log::info!(
            "loaded {} in {:.0} ms (LLM {:.0} ms, vision {:.0} ms, in parallel)",
            model.description,
            model.load_report.wall_ms,
            llm_ms,
            model.load_report.vision_ms
        );
        Ok(Arc::new(model))
    }
}

/// A loader thread's result; a panic becomes a typed error naming the part.
fn joined<T>(r: std::thread::Result<Result<T>>, what: &str) -> Result<T> {
    r.unwrap_or_else(|_| {
        Err(RuntimeError::ImageFailed(format!(
            "loading {what} panicked"
        )))
    })
}

/// The parts of a BlueLM-V directory must fit each other: the projector's output is the
/// LLM's hidden size, its input the downsampled width (checked when the projector is
/// read), the tile the tower's input size.
fn check_parts(vlm: &VlmConfig, llm: &Model, enc: &VisionEncoder) -> Result<VisionPart> {
    let bad = |field: &str, reason: String| {
        RuntimeError::Model(ModelError::BadConfig {
            field: field.into(),
            reason,
        })
    };
    let pc = enc
        .projector_config
        .as_ref()
        .ok_or_else(|| bad("projector", "the vision part has no projector".into()))?;
    if pc.llm_hidden != llm.config.hidden_size {
        return Err(bad(
            "projector",
            format!(
                "{} projects to width {} but the LLM {} has hidden size {}",
                vlm.projector.display(),
                pc.llm_hidden,
                vlm.llm.display(),
                llm.config.hidden_size
            ),
        ));
    }
    let vc = &enc.config;
    if vlm.tiling.tile as usize != vc.image_size {
        return Err(bad(
            "tiling.tile",
            format!(
                "{} but the vision tower {} takes {}x{} images",
                vlm.tiling.tile,
                vlm.vision.display(),
                vc.image_size,
                vc.image_size
            ),
        ));
    }
    let tiling = TilingOptions {
        rule: TilingRule::parse(&vlm.tiling.rule)
            .ok_or_else(|| bad("tiling.rule", vlm.tiling.rule.clone()))?,
        alpha: vlm.tiling.alpha,
        max_tiles: vlm.tiling.max_tiles,
        tile: vlm.tiling.tile,
        patch: vc.patch_size as u32,
        merge: pc.merge as u32,
    };
    tiling.validate()?;
    debug_assert_eq!(tiling.tokens_per_tile(), pc.tokens_per_tile());
    Ok(VisionPart {
        image_token: vlm.image_token.clone(),
        tiling,
        limits: DecodeLimits::default(),
        tokens_per_tile: pc.tokens_per_tile(),
        description: enc.description.clone(),
        weight_bytes: enc.weight_bytes,
        encoder: RwLock::new(None),
    })
}

impl Model {
    fn vision_part(&self) -> Result<&VisionPart> {
        self.vision.as_ref().ok_or(RuntimeError::NotMultimodal)
    }

    /// Plans an image from its header alone (no pixel is decoded) with this model's
    /// tiling, and checks that it fits the context.
    pub fn plan_image(&self, input: &ImageInput) -> Result<ImagePlan> {
        let part = self.vision_part()?;
        let (w, h) = match input {
            ImageInput::File(p) => {
                let hd = image::read_header(p, &part.limits)?;
                (hd.width, hd.height)
            }
            ImageInput::Bytes { name, bytes } => {
                let hd = image::header_from_bytes(bytes, name, &part.limits)?;
                (hd.width, hd.height)
            }
            ImageInput::Rgb(img) => (img.width(), img.height()),
        };
        let plan = image::plan(w, h, &part.tiling)?;
        if plan.image_tokens > self.ctx {
            return Err(RuntimeError::ImageTooLarge {
                image_tokens: plan.image_tokens,
                tiles: plan.tiles,
                ctx: self.ctx,
            });
        }
        Ok(plan)
    }

    /// Starts encoding an image on a worker thread and returns at once. The header is
    /// read (and the image planned and checked against the context) before returning,
    /// so a bad or oversized image fails here, before any encoding.
    pub fn encode_image(self: &Arc<Self>, input: ImageInput) -> Result<PendingImage> {
        let plan = self.plan_image(&input)?;
        let part = self.vision_part()?;
        let encoder = part.encoder().ok_or(RuntimeError::VisionReleased)?;
        let (tiling, limits) = (part.tiling, part.limits);
        // The decoded image, its tiles and its embeddings, held until the encode ends.
        let s = tiling.tile as u64;
        let image_bytes = u64::from(plan.width) * u64::from(plan.height) * 3
            + plan.tiles as u64 * 3 * s * s * 4
            + (plan.image_tokens * self.config.hidden_size * 4) as u64;
        let reservation = self.budget.reserve(
            format!(
                "an image of {}x{} ({} tiles)",
                plan.width, plan.height, plan.tiles
            ),
            image_bytes,
        )?;
        let finished = Arc::new(OnceLock::new());
        let done = finished.clone();
        let want = plan.clone();
        let id = NEXT_IMAGE_ID.fetch_add(1, Ordering::Relaxed);
        let worker = std::thread::Builder::new()
            .name("npurt-encode-image".into())
            .spawn(move || {
                let _held = reservation;
                let r = encode_now(&encoder, input, &tiling, &limits, want, id);
                let _ = done.set(Instant::now());
                r
            })
            .map_err(|e| {
                RuntimeError::ImageFailed(format!("cannot start the encoder thread: {e}"))
            })?;
        Ok(PendingImage {
            id,
            plan,
            submitted: Instant::now(),
            finished,
            worker: Mutex::new(Some(worker)),
            result: OnceLock::new(),
        })
    }

    /// Releases the vision encoder and projector (their weights and buffers are freed
    /// once no encode in flight still holds them): the LLM stage runs without them.
    /// Later [`Model::encode_image`] calls fail with [`RuntimeError::VisionReleased`].
    pub fn release_vision(&self) {
        if let Some(part) = &self.vision {
            let enc = part.encoder.write().ok().and_then(|mut e| e.take());
            if let Some(enc) = enc {
                self.prepared.evict(enc.all_stages().map(|s| &s.graph));
            }
        }
    }

    /// Renders a conversation whose messages may carry images. Each image goes where its
    /// message's placeholders are (in order); a message with images and no placeholder
    /// gets them before its text. Returns the rendered prompt and the images in the
    /// order their placeholders appear in it.
    pub fn render_multimodal_chat<'a>(
        &self,
        turns: &[(ChatMessage, Vec<&'a PendingImage>)],
    ) -> Result<(String, Vec<&'a PendingImage>)> {
        let token = &self.vision_part()?.image_token;
        let mut messages = Vec::with_capacity(turns.len());
        let mut order = Vec::new();
        for (m, imgs) in turns {
            let content = attach_placeholders(&m.content, token, imgs.len())?;
            messages.push(ChatMessage::new(&m.role, content));
            order.extend(imgs.iter().copied());
        }
        Ok((self.render_chat(&messages)?, order))
    }

    /// The start of a conversation's prompt before the user has typed its last message:
    /// `turns` rendered as [`Model::render_multimodal_chat`] renders them, cut where the
    /// last message's text begins (that text, typed or not, is left out; its images'
    /// placeholders come before it, so the start holds them). A frontend feeds it as
    /// soon as the images are encoded, while the user types, and the whole prompt with
    /// [`crate::Session::feed_pending_reusing`] once the text is there: only the text
    /// and the template's tail are left to prefill. A template that does not render a
    /// message's text as written is [`RuntimeError::InvalidOption`].
    pub fn render_multimodal_chat_ahead<'a>(
        &self,
        turns: &[(ChatMessage, Vec<&'a PendingImage>)],
    ) -> Result<(String, Vec<&'a PendingImage>)> {
        let mut turns = turns.to_vec();
        let (last, _) = turns
            .last_mut()
            .ok_or_else(|| invalid("messages", "no message to render"))?;
        last.content = TEXT_NOT_TYPED.to_string();
        let (text, images) = self.render_multimodal_chat(&turns)?;
        Ok((start_before_text(&text)?.to_string(), images))
    }

    /// Splits a rendered prompt at the image placeholder and tokenizes each side on its
    /// own (the placeholder is never tokenized), pairing the k-th placeholder with
    /// `images[k]`.
    pub fn split_prompt<I: Clone>(&self, text: &str, images: &[I]) -> Result<Vec<PromptPart<I>>> {
        let token = &self.vision_part()?.image_token;
        let pieces: Vec<&str> = text.split(token.as_str()).collect();
        let placeholders = pieces.len() - 1;
        if placeholders != images.len() {
            return Err(placeholder_mismatch(placeholders, images.len(), token));
        }
        let mut parts = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            if !piece.is_empty() {
                parts.push(PromptPart::Text(self.encode(piece)?));
            }
            if let Some(img) = images.get(i) {
                parts.push(PromptPart::Image(img.clone()));
            }
        }
        Ok(parts)
    }
}

/// What a prompt rendered with [`TEXT_NOT_TYPED`] as its last message holds before
/// that message's text: an error unless the text is there once, as written.
fn start_before_text(rendered: &str) -> Result<&str> {
    match rendered.split_once(TEXT_NOT_TYPED) {
        Some((start, rest)) if !rest.contains(TEXT_NOT_TYPED) => Ok(start),
        _ => Err(invalid(
            "chat template",
            "does not render the last message's text once and as written, so the prompt cannot be started before it",
        )),
    }
}

/// A prompt as the LLM sees it: runs of token ids and images (`I` is a
/// [`PendingImage`] reference before waiting, `Arc<ImageEmbeddings>` after).
#[derive(Clone)]
pub enum PromptPart<I> {
    Text(Vec<u32>),
    Image(I),
}

impl PromptPart<&PendingImage> {
    /// The context positions this part takes: its tokens, or its image's rows.
    pub fn positions(&self) -> usize {
        match self {
            PromptPart::Text(ids) => ids.len(),
            PromptPart::Image(img) => img.plan().image_tokens,
        }
    }
}

/// `parts` with every image waited for (only what is left of each encode).
pub fn wait_parts(
    parts: &[PromptPart<&PendingImage>],
) -> Result<Vec<PromptPart<Arc<ImageEmbeddings>>>> {
    parts
        .iter()
        .map(|p| {
            Ok(match p {
                PromptPart::Text(ids) => PromptPart::Text(ids.clone()),
                PromptPart::Image(img) => PromptPart::Image(img.wait()?),
            })
        })
        .collect()
}

/// `content` with `n` images: as is when it has exactly `n` placeholders, with `n`
/// placeholder lines before it when it has none.
pub fn attach_placeholders(content: &str, token: &str, n: usize) -> Result<String> {
    let have = content.matches(token).count();
    match (have, n) {
        (h, n) if h == n => Ok(content.to_string()),
        (0, n) => Ok(format!("{}{content}", format!("{token}\n").repeat(n))),
        (h, n) => Err(placeholder_mismatch(h, n, token)),
    }
}

fn placeholder_mismatch(placeholders: usize, images: usize, token: &str) -> RuntimeError {
    if placeholders > images {
        RuntimeError::PlaceholderWithoutImage {
            placeholder: token.to_string(),
            placeholders,
            images,
        }
    } else {
        RuntimeError::MoreImagesThanPlaceholders {
            placeholder: token.to_string(),
            placeholders,
            images,
        }
    }
}

/// Decode, preprocess, encode and project one image (the worker's job).
fn encode_now(
    encoder: &VisionEncoder,
    input: ImageInput,
    tiling: &TilingOptions,
    limits: &DecodeLimits,
    want: ImagePlan,
    id: u64,
) -> Result<Arc<ImageEmbeddings>> {
    let t0 = Instant::now();
    let img = match input {
        ImageInput::File(p) => image::decode_file(&p, limits)?,
        ImageInput::Bytes { name, bytes } => image::decode_bytes(&bytes, &name, limits)?,
        ImageInput::Rgb(img) => img,
    };
    let plan = image::plan(img.width(), img.height(), tiling)?;
    if plan != want {
        // The header promised another size than the pixels have (a lying file).
        return Err(RuntimeError::ImageFailed(format!(
            "the decoded image is {}x{} but its header said {}x{}",
            plan.width, plan.height, want.width, want.height
        )));
    }
    let pixels = image::preprocess(&img, &plan)?;
    drop(img);
    let preprocess_ms = t0.elapsed().as_secs_f64() * 1e3;
    let out = encoder.encode(&pixels.data, pixels.tiles)?;
    let hidden = encoder
        .projector_config
        .as_ref()
        .map(|p| p.llm_hidden)
        .ok_or_else(|| invalid("vision", "the encoder has no projector"))?;
    let data = out
        .projected
        .ok_or_else(|| invalid("vision", "the encoder returned no projected tokens"))?;
    if data.len() != plan.image_tokens * hidden {
        return Err(invalid(
            "vision",
            format!(
                "{} projected values for {} image tokens of width {hidden}",
                data.len(),
                plan.image_tokens
            ),
        ));
    }
    Ok(Arc::new(ImageEmbeddings {
        id,
        plan,
        data,
        hidden,
        preprocess_ms,
        timings: out.timings,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start before the message's text, only where a template writes the text
    /// once and unchanged.
    #[test]
    fn a_prompt_starts_before_the_text_written_once() {
        let t = TEXT_NOT_TYPED;
        assert_eq!(
            start_before_text(&format!("<s>user\n<image>\n{t}</s>")).unwrap(),
            "<s>user\n<image>\n"
        );
        for bad in [
            format!("{t}{t}"),
            "user: TEXT".to_string(),
            t.to_uppercase().replace('\u{E000}', ""),
        ] {
            assert!(
                matches!(
                    start_before_text(&bad),
                    Err(RuntimeError::InvalidOption { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn placeholders_attach_before_text_or_must_match() {
        assert_eq!(attach_placeholders("hi", "<image>", 0).unwrap(), "hi");
        assert_eq!(
            attach_placeholders("hi", "<image>", 2).unwrap(),
            "<image>\n<image>\nhi"
        );
        assert_eq!(
            attach_placeholders("a <image> b", "<image>", 1).unwrap(),
            "a <image> b"
        );
        assert!(matches!(
            attach_placeholders("a <image> b <image>", "<image>", 1),
            Err(RuntimeError::PlaceholderWithoutImage {
                placeholders: 2,
                images: 1,
                ..
            })
        ));
        assert!(matches!(
            attach_placeholders("<image>", "<image>", 3),
            Err(RuntimeError::MoreImagesThanPlaceholders {
                placeholders: 1,
                images: 3,
                ..
            })
        ));
        assert!(matches!(
            attach_placeholders("<image> twice <image>", "<image>", 0),
            Err(RuntimeError::PlaceholderWithoutImage { .. })
        ));
    }
}
