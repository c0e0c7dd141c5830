//! The C ABI of npurt (`include/npurt.h`): load a model, open sessions, hold a chat
//! conversation or generate from a raw prompt, streaming the answer through a
//! callback. It is what an Android app (through JNI) or an iOS app (Swift imports C
//! headers) links; the Rust API (`npurt_runtime`) stays the source of truth, and this
//! layer only converts.
//!
//! Conventions every function keeps:
//! - It returns an `npurt_status`; on failure, `npurt_last_error()` gives a message
//!   naming the problem (thread-local, valid until the next call on that thread).
//! - Null pointers, strings that are not UTF-8 and options out of range are
//!   `NPURT_INVALID_ARGUMENT`, never undefined behaviour on our side.
//! - No panic crosses the boundary: one is caught and returned as `NPURT_PANIC`.
//! - Handles are opaque and owned by the caller, who frees them with the matching
//!   `_free` function. A model may be shared by sessions on any threads; a session is
//!   used by one thread at a time.

use npurt_runtime::{
    Conversation, GenerateOptions, ImageInput, LoadOptions, Model, PromptLookup, Runtime,
    RuntimeError, SamplingOptions, Session,
};
use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// `npurt_status` (include/npurt.h).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum npurt_status {
    NPURT_OK = 0,
    NPURT_INVALID_ARGUMENT = 1,
    /// The model file or directory could not be loaded (missing, truncated, lying).
    NPURT_MODEL_ERROR = 2,
    /// The prompt does not fit the context left (reset the session, or start a new one).
    NPURT_CONTEXT_OVERFLOW = 3,
    /// Any other error at run time (the backend, the memory budget, ...).
    NPURT_RUNTIME_ERROR = 4,
    /// A bug in npurt: a panic, caught at the boundary.
    NPURT_PANIC = 5,
    /// An image that could not be read, decoded or encoded (corrupt, too large).
    NPURT_IMAGE_ERROR = 6,
}
use npurt_status::*;

/// A loaded model (`npurt_model`).
pub struct NpurtModel {
    model: Arc<Model>,
}

/// A session and the conversation it holds (`npurt_session`).
pub struct NpurtSession {
    session: Session,
    conversation: Conversation,
}

/// `npurt_generate_options`: field for field as in the header.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_camel_case_types)]
pub struct npurt_generate_options {
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub repetition_penalty: f32,
    pub seed: u64,
    /// Speculative decoding by prompt lookup: most tokens drafted a step (0: off).
    pub speculate: u32,
}

/// `npurt_token_callback`: a piece of the answer (UTF-8, not NUL-terminated, `len`
/// bytes) and the caller's pointer; returning false stops generation.
#[allow(non_camel_case_types)]
pub type npurt_token_callback =
    Option<unsafe extern "C" fn(piece: *const c_char, len: usize, user: *mut c_void) -> bool>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// An error for the caller: its status and message.
struct Failure(npurt_status, String);

impl From<RuntimeError> for Failure {
    fn from(e: RuntimeError) -> Self {
        let status = match &e {
            RuntimeError::Model(_) => NPURT_MODEL_ERROR,
            RuntimeError::ContextOverflow { .. } => NPURT_CONTEXT_OVERFLOW,
            RuntimeError::InvalidOption { .. }
            | RuntimeError::TokenOutOfRange { .. }
            | RuntimeError::NotMultimodal => NPURT_INVALID_ARGUMENT,
            RuntimeError::Image(_)
            | RuntimeError::ImageTooLarge { .. }
            | RuntimeError::ImageFailed(_) => NPURT_IMAGE_ERROR,
            _ => NPURT_RUNTIME_ERROR,
        };
        Failure(status, error_chain(&e))
    }
}

/// The error and its causes, as the CLI prints them.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

fn invalid(what: impl Into<String>) -> Failure {
    Failure(NPURT_INVALID_ARGUMENT, what.into())
}

/// Runs `f` at the boundary: records a failure's message, catches a panic.
fn boundary(f: impl FnOnce() -> Result<(), Failure>) -> npurt_status {
    let (status, message) = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => return NPURT_OK,
        Ok(Err(Failure(s, m))) => (s, m),
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            (NPURT_PANIC, format!("npurt panicked (a bug): {what}"))
        }
    };
    // Messages have no NUL of their own; one that did would lose its tail.
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
    status
}

/// A required UTF-8 string argument.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string.
unsafe fn required_str<'a>(p: *const c_char, name: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return Err(invalid(format!("`{name}` is null")));
    }
    // SAFETY: non-null and NUL-terminated per the caller's contract.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|e| invalid(format!("`{name}` is not UTF-8: {e}")))
}

/// An optional UTF-8 string argument (null: none).
///
/// # Safety
/// As [`required_str`].
unsafe fn optional_str<'a>(p: *const c_char, name: &str) -> Result<Option<&'a str>, Failure> {
    if p.is_null() {
        Ok(None)
    } else {
        // SAFETY: as the caller's.
        unsafe { required_str(p, name) }.map(Some)
    }
}

/// Stores a new handle in `*out` (checked non-null by the caller); the caller owns it.
///
/// # Safety
/// `out` is non-null and writable.
unsafe fn hand_out<T>(out: *mut *mut T, value: T) {
    // SAFETY: the caller's contract.
    unsafe { *out = Box::into_raw(Box::new(value)) };
}

/// Frees a handle made by [`hand_out`] (null: nothing).
///
/// # Safety
/// `p` is null or from `hand_out`, not freed before.
unsafe fn free_handle<T>(p: *mut T) {
    if !p.is_null() {
        // SAFETY: from Box::into_raw, freed once per the contract.
        drop(unsafe { Box::from_raw(p) });
    }
}

/// The message of the last failed call on this thread ("" if none); valid until the
/// next call on this thread.
#[no_mangle]
pub extern "C" fn npurt_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The library's version, e.g. "0.1.0" (static storage).
#[no_mangle]
pub extern "C" fn npurt_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// Loads a model: a `.gguf` file or an HF / BlueLM-V directory. `backend` ("cpu",
/// "wgpu"), `precision` ("w4a16", "w4a8", "w8a16", "w8a8", "f32") may be null for the
/// defaults, `threads` and `ctx` 0.
///
/// # Safety
/// Strings are null or NUL-terminated; `out` is null or points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn npurt_model_load(
    path: *const c_char,
    backend: *const c_char,
    precision: *const c_char,
    threads: u32,
    ctx: u32,
    out: *mut *mut NpurtModel,
) -> npurt_status {
    boundary(|| {
        if out.is_null() {
            return Err(invalid("`out` is null"));
        }
        // SAFETY: the caller's contract.
        let path = unsafe { required_str(path, "path") }?;
        let backend = unsafe { optional_str(backend, "backend") }?.unwrap_or("cpu");
        let precision = unsafe { optional_str(precision, "precision") }?.unwrap_or("w4a16");
        let precision = npurt_graph::PrecisionPolicy::by_name(precision).ok_or_else(|| {
            invalid(format!(
                "unknown precision `{precision}` (known: {})",
                npurt_graph::PrecisionPolicy::names().join(", ")
            ))
        })?;
        let opts = LoadOptions {
            backend: backend.into(),
            threads: (threads > 0).then_some(threads as usize),
            ctx: (ctx > 0).then_some(ctx as usize),
            precision,
            ..Default::default()
        };
        let model = Runtime::new().load(path.as_ref(), opts)?;
        // SAFETY: checked non-null above.
        unsafe { hand_out(out, NpurtModel { model }) };
        Ok(())
    })
}

/// Frees a model (null: nothing). Sessions opened on it keep it alive until freed.
///
/// # Safety
/// `model` is null or a handle from `npurt_model_load`, not freed before.
#[no_mangle]
pub unsafe extern "C" fn npurt_model_free(model: *mut NpurtModel) {
    // SAFETY: the caller's contract.
    unsafe { free_handle(model) }
}

/// Opens a session on `model`, with `system` (null: none) as the system message of its
/// conversation.
///
/// # Safety
/// `model` is null or a live handle; `system` is null or NUL-terminated; `out` is null
/// or writable.
#[no_mangle]
pub unsafe extern "C" fn npurt_session_new(
    model: *const NpurtModel,
    system: *const c_char,
    out: *mut *mut NpurtSession,
) -> npurt_status {
    boundary(|| {
        if model.is_null() || out.is_null() {
            return Err(invalid("`model` or `out` is null"));
        }
        // SAFETY: a live handle per the contract.
        let model = unsafe { &*model }.model.clone();
        let system = unsafe { optional_str(system, "system") }?;
        let session = NpurtSession {
            session: Session::new(model)?,
            conversation: Conversation::new(system),
        };
        // SAFETY: checked non-null above.
        unsafe { hand_out(out, session) };
        Ok(())
    })
}

/// Frees a session (null: nothing).
///
/// # Safety
/// `session` is null or a handle from `npurt_session_new`, not freed before.
#[no_mangle]
pub unsafe extern "C" fn npurt_session_free(session: *mut NpurtSession) {
    // SAFETY: the caller's contract.
    unsafe { free_handle(session) }
}

/// Forgets the conversation and the KV cache (the system message stays).
///
/// # Safety
/// `session` is null or a live handle not used by another thread meanwhile.
#[no_mangle]
pub unsafe extern "C" fn npurt_session_reset(session: *mut NpurtSession) -> npurt_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let s = unsafe { session.as_mut() }.ok_or_else(|| invalid("`session` is null"))?;
        s.session.reset();
        s.conversation.reset();
        Ok(())
    })
}

/// Positions of the context the session uses, and the context's size.
///
/// # Safety
/// `session` is null or a live handle; the out pointers are null or writable.
#[no_mangle]
pub unsafe extern "C" fn npurt_session_context(
    session: *const NpurtSession,
    used: *mut u32,
    size: *mut u32,
) -> npurt_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let s = unsafe { session.as_ref() }.ok_or_else(|| invalid("`session` is null"))?;
        // SAFETY: null or writable.
        unsafe {
            if let Some(u) = used.as_mut() {
                *u = s.session.len() as u32;
            }
            if let Some(z) = size.as_mut() {
                *z = s.session.model().ctx as u32;
            }
        }
        Ok(())
    })
}

/// The defaults: 128 tokens, greedy, no top-k / top-p / penalty, seed 0, no drafts.
///
/// # Safety
/// `opts` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn npurt_generate_options_default(opts: *mut npurt_generate_options) {
    let d = GenerateOptions::default();
    // SAFETY: null or writable.
    if let Some(o) = unsafe { opts.as_mut() } {
        *o = npurt_generate_options {
            max_tokens: d.max_tokens as u32,
            temperature: d.sampling.temperature,
            top_k: d.sampling.top_k as u32,
            top_p: d.sampling.top_p,
            repetition_penalty: d.sampling.repetition_penalty,
            seed: d.sampling.seed,
            speculate: 0,
        };
    }
}

/// The Rust options for `opts` (null: the defaults); invalid values are refused here,
/// before anything is fed, naming the option.
///
/// # Safety
/// `opts` is null or points to an `npurt_generate_options`.
unsafe fn generate_options(
    opts: *const npurt_generate_options,
) -> Result<GenerateOptions, Failure> {
    let mut g = GenerateOptions::default();
    // SAFETY: the caller's contract.
    if let Some(o) = unsafe { opts.as_ref() } {
        g.max_tokens = o.max_tokens as usize;
        g.sampling = SamplingOptions {
            temperature: o.temperature,
            top_k: o.top_k as usize,
            top_p: o.top_p,
            repetition_penalty: o.repetition_penalty,
            seed: o.seed,
        };
        g.speculation = (o.speculate > 0).then(|| PromptLookup {
            max_draft: o.speculate as usize,
            ..Default::default()
        });
    }
    g.sampling.validate()?;
    if let Some(l) = &g.speculation {
        l.validate()?;
    }
    Ok(g)
}

/// The arguments `npurt_chat` and `npurt_generate` check first: the session, its
/// text (named `name` in errors) and the options.
///
/// # Safety
/// As those functions'.
unsafe fn turn_args<'a>(
    session: *mut NpurtSession,
    text: *const c_char,
    name: &str,
    opts: *const npurt_generate_options,
) -> Result<(&'a mut NpurtSession, &'a str, GenerateOptions), Failure> {
    // SAFETY: the caller's contract.
    let s = unsafe { session.as_mut() }.ok_or_else(|| invalid("`session` is null"))?;
    let text = unsafe { required_str(text, name) }?;
    let opts = unsafe { generate_options(opts) }?;
    Ok((s, text, opts))
}

/// Generates after what the session holds, streaming through `callback` (may be
/// null), and returns the answer in `*out_text` (if not null; free it with
/// `npurt_string_free`).
///
/// # Safety
/// As the public functions that call it.
unsafe fn generate_into(
    session: &mut Session,
    ids: &[u32],
    opts: &GenerateOptions,
    callback: npurt_token_callback,
    user: *mut c_void,
    out_text: *mut *mut c_char,
) -> Result<String, Failure> {
    let g = session.generate(ids, opts, |piece, _| match callback {
        // SAFETY: the caller's callback, given a pointer and length into `piece`,
        // which outlives the call.
        Some(cb) => unsafe { cb(piece.as_ptr() as *const c_char, piece.len(), user) },
        None => true,
    })?;
    if !out_text.is_null() {
        let c = CString::new(g.text.replace('\0', " ")).unwrap_or_default();
        // SAFETY: checked non-null; the caller frees it with npurt_string_free.
        unsafe { *out_text = c.into_raw() };
    }
    Ok(g.text)
}

/// Attaches an image (a PNG, JPEG or WebP file) to the next chat message, on a model
/// with a vision part (a BlueLM-V directory). Its encoding starts at once, and the
/// conversation up to it is prefilled while the message is still being typed, so the
/// answer starts soon after `npurt_chat` is called.
///
/// # Safety
/// `session` is null or a live handle used by no other thread meanwhile; `path` is
/// null or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn npurt_session_attach_image(
    session: *mut NpurtSession,
    path: *const c_char,
) -> npurt_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let s = unsafe { session.as_mut() }.ok_or_else(|| invalid("`session` is null"))?;
        let path = unsafe { required_str(path, "path") }?;
        let model = s.session.model().clone();
        let pending = model.encode_image(ImageInput::File(path.into()))?;
        s.conversation.attach(pending);
        let fed = s
            .conversation
            .prompt(&model, "", true)
            .and_then(|parts| s.session.feed_pending_reusing(&parts));
        if let Err(e) = fed {
            s.conversation.detach_last();
            return Err(e.into());
        }
        Ok(())
    })
}

/// One chat turn: `message` from the user (with the images attached since the last
/// turn) joins the session's conversation, which is rendered with the model's chat
/// template; only what the session does not hold yet is fed (earlier turns are
/// reused), and the answer is generated, streamed and added to the conversation. When
/// the conversation and an answer of `max_tokens` outgrow the context, its oldest
/// exchanges are dropped first.
///
/// # Safety
/// `session` is null or a live handle used by no other thread meanwhile; `message` is
/// null or NUL-terminated; `opts` is null or an `npurt_generate_options`; `callback`
/// is null or safe to call with `user`; `out_text` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn npurt_chat(
    session: *mut NpurtSession,
    message: *const c_char,
    opts: *const npurt_generate_options,
    callback: npurt_token_callback,
    user: *mut c_void,
    out_text: *mut *mut c_char,
) -> npurt_status {
    boundary(|| {
        // SAFETY: the caller's contract (all pointers below).
        let (s, message, opts) = unsafe { turn_args(session, message, "message", opts) }?;
        let model = s.session.model().clone();
        let NpurtSession {
            session,
            conversation,
        } = s;
        conversation.fit(&model, message, opts.max_tokens, |parts| {
            session.feed_pending_reusing(parts)
        })?;
        let text = unsafe { generate_into(session, &[], &opts, callback, user, out_text) }?;
        conversation.push_exchange(message, &text);
        Ok(())
    })
}

/// Generates from a raw prompt (no chat template), after what the session holds.
///
/// # Safety
/// As `npurt_chat`, with `prompt` for `message`.
#[no_mangle]
pub unsafe extern "C" fn npurt_generate(
    session: *mut NpurtSession,
    prompt: *const c_char,
    opts: *const npurt_generate_options,
    callback: npurt_token_callback,
    user: *mut c_void,
    out_text: *mut *mut c_char,
) -> npurt_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (s, prompt, opts) = unsafe { turn_args(session, prompt, "prompt", opts) }?;
        let ids = s.session.model().encode(prompt)?;
        unsafe { generate_into(&mut s.session, &ids, &opts, callback, user, out_text) }?;
        Ok(())
    })
}

/// Frees a string returned by npurt (null: nothing).
///
/// # Safety
/// `s` is null or a string from `npurt_chat` / `npurt_generate`, not freed before.
#[no_mangle]
pub unsafe extern "C" fn npurt_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: from CString::into_raw, freed once per the contract.
        drop(unsafe { CString::from_raw(s) });
    }
}
