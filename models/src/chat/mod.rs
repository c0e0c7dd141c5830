//! Chat templates (Jinja, rendered with minijinja), as HF `apply_chat_template` does.
//!
//! HF compiles chat templates in a sandboxed Jinja2 environment with `trim_blocks=True`,
//! `lstrip_blocks=True` (and Jinja2's default `keep_trailing_newline=False`), registers
//! `raise_exception(msg)`, `strftime_now(fmt)` and its own `tojson` (Python `json.dumps`
//! with `ensure_ascii=False`), and renders with `messages`, `add_generation_prompt` and
//! the tokenizer's special tokens. This module mirrors that; Python string/dict/list
//! methods (`.strip()`, `.items()`, ...) come from `minijinja_contrib::pycompat`.

#[cfg(target_os = "linux")]
mod isolated;
#[cfg(target_os = "linux")]
pub use isolated::{MAX_TEMPLATE_MEMORY_BYTES, MAX_TEMPLATE_WALL};

use std::sync::Arc;

use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, StringInput, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};

use crate::{ModelError, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

const TEMPLATE_NAME: &str = "chat_template";

/// Most template instructions one render may execute. Chat templates come inside model
/// files, so a loop that never ends (or nested loops over `range(100000)`) must stop with
/// an error, not hang. Real templates take a few hundred steps per message; the budget
/// grows with the conversation (see [`ChatTemplate::render`]).
pub const MAX_TEMPLATE_STEPS: u64 = 1_000_000;
/// Extra steps allowed per message on top of [`MAX_TEMPLATE_STEPS`].
pub const TEMPLATE_STEPS_PER_MESSAGE: u64 = 10_000;
/// Most bytes one render may write. A prompt must fit the context anyway (at most
/// [`crate::config::MAX_CONTEXT`] tokens); this stops a template whose output grows
/// without bound before it exhausts memory.
pub const MAX_TEMPLATE_OUTPUT_BYTES: usize = 16 << 20;
/// Largest width a template may ask of `indent` or `tojson(indent=...)`: both build a
/// string of that many spaces.
const MAX_TEMPLATE_WIDTH: usize = 1024;
/// Most bytes one list, map or other object may take as text, printed (`{{ x }}`) or
/// through `tojson`. Either is a single template step, so the step budget does not bound
/// it: without this, `{{ messages * 100000 }}` formats 400,000 messages (seconds, tens
/// of MB) before the output limit is reached. Real templates print or serialize at most
/// a tool list.
pub const MAX_VALUE_TEXT_BYTES: usize = 1 << 20;

/// The names [`ModelError::TemplateLimit`] gives the step and output budgets.
const STEPS_LIMIT: &str = "rendering steps";
const OUTPUT_LIMIT: &str = "output size (bytes)";

/// A compiled chat template. Construction parses the template, so a malformed one is
/// reported by [`ChatTemplate::new`], not at the first [`render`](ChatTemplate::render).
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    source: String,
    env: Environment<'static>,
    pub bos_token: String,
    pub eos_token: String,
}

impl ChatTemplate {
    pub fn new(
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self> {
        let source = source.into();
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(bounded_methods);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_filter("indent", bounded_indent);
        env.add_filter("replace", bounded_replace);
        env.set_formatter(bounded_formatter);
        env.add_template_owned(TEMPLATE_NAME, source.clone())
            .map_err(|e| template_err("parsing the template", &e))?;
        Ok(ChatTemplate {
            source,
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// The Jinja source this template was built from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`.
    ///
    /// Rendering runs on a budget: at most [`MAX_TEMPLATE_STEPS`] (plus
    /// [`TEMPLATE_STEPS_PER_MESSAGE`] per message) instructions and
    /// [`MAX_TEMPLATE_OUTPUT_BYTES`] of output; on Linux also in a child process of its
    /// own, with at most `MAX_TEMPLATE_MEMORY_BYTES` of memory and `MAX_TEMPLATE_WALL`
    /// of time (see `isolated.rs`: string concatenation is unbounded inside minijinja).
    /// Past any of them it stops with [`ModelError::TemplateLimit`].
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        #[cfg(target_os = "linux")]
        return isolated::run(|| self.render_in_process(messages, add_generation_prompt));
        #[cfg(not(target_os = "linux"))]
        return self.render_in_process(messages, add_generation_prompt);
    }

    /// The render itself, with the step and output budgets.
    fn render_in_process(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let steps = MAX_TEMPLATE_STEPS
            .saturating_add(TEMPLATE_STEPS_PER_MESSAGE.saturating_mul(messages.len() as u64));
        // Fuel is a setting of the environment, so each render sets it on its own copy
        // (cheap: the environment holds Arcs) and `render` can stay `&self`.
        let mut env = self.env.clone();
        env.set_fuel(Some(steps));
        let tmpl = env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| template_err("loading the template", &e))?;
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| Value::from_object(MessageObject::from(m)))
            .collect();
        let mut out = BoundedOutput {
            buf: Vec::new(),
            limit: MAX_TEMPLATE_OUTPUT_BYTES,
            exceeded: false,
        };
        let rendered = tmpl.render_captured_to(
            minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
            },
            &mut out,
        );
        match rendered {
            Ok(_) => String::from_utf8(out.buf)
                .map_err(|e| ModelError::ChatTemplate(format!("rendering: {e}"))),
            Err(_) if out.exceeded => Err(ModelError::TemplateLimit {
                limit: OUTPUT_LIMIT,
                max: MAX_TEMPLATE_OUTPUT_BYTES as u64,
            }),
            Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(ModelError::TemplateLimit {
                limit: STEPS_LIMIT,
                max: steps,
            }),
            Err(e) => Err(template_err("rendering", &e)),
        }
    }
}

/// Where a render writes: fails the write (which aborts rendering) once the output
/// would pass `limit` bytes, so an unbounded template stops at the limit rather than
/// after filling memory.
struct BoundedOutput {
    buf: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl std::io::Write for BoundedOutput {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.limit {
            self.exceeded = true;
            return Err(std::io::Error::other("chat template output limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Refuses a width above [`MAX_TEMPLATE_WIDTH`]: the string of spaces it asks for is
/// allocated whole, before any output limit could apply.
fn check_width(what: &str, width: usize) -> std::result::Result<(), Error> {
    if width > MAX_TEMPLATE_WIDTH {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("{what}: width {width} is above the limit of {MAX_TEMPLATE_WIDTH}"),
        ));
    }
    Ok(())
}

/// A `fmt::Write` sink that fails past `limit` bytes (so formatting stops there).
struct BoundedText {
    buf: String,
    limit: usize,
}

impl std::fmt::Write for BoundedText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.buf.len().saturating_add(s.len()) > self.limit {
            return Err(std::fmt::Error);
        }
        self.buf.push_str(s);
        Ok(())
    }
}

fn value_too_long(what: &str) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("{what}: the value is longer than {MAX_VALUE_TEXT_BYTES} bytes as text"),
    )
}

/// minijinja's formatter, but an object (a list, a map, an iterable such as
/// `messages * n`) is first formatted into a bounded buffer, and refused past
/// [`MAX_VALUE_TEXT_BYTES`]. Strings and numbers print as before: their size is already
/// bounded by the output limit.
fn bounded_formatter(
    out: &mut minijinja::Output,
    state: &minijinja::State,
    value: &Value,
) -> std::result::Result<(), Error> {
    if value.as_object().is_some() {
        use std::fmt::Write;
        let mut probe = BoundedText {
            buf: String::new(),
            limit: MAX_VALUE_TEXT_BYTES,
        };
        if write!(probe, "{value}").is_err() {
            return Err(value_too_long("printing"));
        }
    }
    minijinja::escape_formatter(out, state, value)
}

/// minijinja's `indent` filter with its width bounded (see [`check_width`]).
fn bounded_indent(
    value: StringInput<'_>,
    width: Option<usize>,
    first: Option<bool>,
    blank: Option<bool>,
    kwargs: Kwargs,
) -> std::result::Result<Value, Error> {
    let w = match width {
        Some(w) => Some(w),
        None => kwargs.peek::<Option<usize>>("width")?,
    };
    check_width("indent", w.unwrap_or(0))?;
    minijinja::filters::indent(value, width, first, blank, kwargs)
}

/// Refuses a `replace` whose result would be longer than a render may write: it is one
/// template step however long its result, so a loop of `replace('x', 'xx')` doubles a
/// string per step (the memory cap would stop it, after about 0.6 s).
fn check_replace(
    value: &str,
    from: &str,
    to: &str,
    count: Option<usize>,
) -> std::result::Result<(), Error> {
    let found = if from.is_empty() {
        value.chars().count() + 1
    } else {
        value.matches(from).count()
    };
    let n = count.map_or(found, |c| c.min(found));
    let len = (value.len() - n * from.len()).checked_add(n.saturating_mul(to.len()));
    match len {
        Some(len) if len <= MAX_TEMPLATE_OUTPUT_BYTES => Ok(()),
        _ => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("replace: the result would be above the output limit of {MAX_TEMPLATE_OUTPUT_BYTES} bytes"),
        )),
    }
}

fn bounded_replace(
    state: &minijinja::State,
    value: StringInput<'_>,
    from: StringInput<'_>,
    to: StringInput<'_>,
) -> std::result::Result<Value, Error> {
    check_replace(value.as_str(), from.as_str(), to.as_str(), None)?;
    minijinja::filters::replace(state, value, from, to)
}

/// Python's string, dict and list methods (`minijinja_contrib::pycompat`), with
/// `str.replace` bounded as the filter is.
fn bounded_methods(
    state: &minijinja::State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, Error> {
    if let (Some(s), "replace") = (value.as_str(), method) {
        if let (Some(from), Some(to)) = (
            args.first().and_then(|v| v.as_str()),
            args.get(1).and_then(|v| v.as_str()),
        ) {
            let count = args
                .get(2)
                .and_then(|c| c.as_i64())
                .and_then(|c| usize::try_from(c).ok());
            check_replace(s, from, to, count)?;
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

fn template_err(what: &str, e: &Error) -> ModelError {
    let mut msg = format!("{what}: {e}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    ModelError::ChatTemplate(msg)
}

/// A message as the template sees it: a dict with `role` and `content`, iterated in that
/// order (so `message | tojson` and `message.items()` match Python's insertion order).
#[derive(Debug)]
struct MessageObject {
    role: Value,
    content: Value,
}

impl From<&ChatMessage> for MessageObject {
    fn from(m: &ChatMessage) -> Self {
        MessageObject {
            role: Value::from(m.role.as_str()),
            content: Value::from(m.content.as_str()),
        }
    }
}

impl Object for MessageObject {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "role" => Some(self.role.clone()),
            "content" => Some(self.content.clone()),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["role", "content"])
    }
}

/// HF's `raise_exception(message)`: aborts rendering with the template's message.
fn raise_exception(msg: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// HF's `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
/// (minijinja's built-in escapes `<`, `>`, `&` and `'` for HTML, which would change prompts.)
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let indent_arg: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;

    let indent = match indent_arg {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                let n = i64::try_from(v.clone()).map_err(|_| {
                    Error::new(
                        ErrorKind::InvalidOperation,
                        format!("tojson: bad indent {v}"),
                    )
                })?;
                let n = n.max(0) as usize;
                check_width("tojson", n)?;
                Some(" ".repeat(n))
            }
        },
    };
    let (item_sep, key_sep) = match separators {
        Some(s) if s.len() == 2 => (s[0].clone(), s[1].clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair",
            ))
        }
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let opts = JsonOpts {
        ensure_ascii: ensure_ascii.unwrap_or(false),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(&mut out, value, &opts, 0)?;
    Ok(Value::from(out))
}

struct JsonOpts {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn write_json(
    out: &mut String,
    v: &Value,
    o: &JsonOpts,
    depth: usize,
) -> std::result::Result<(), Error> {
    if depth > 256 {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: value nested too deeply",
        ));
    }
    // Checked at every value, so a list of millions stops at the bound, not after.
    if out.len() > MAX_VALUE_TEXT_BYTES {
        return Err(value_too_long("tojson"));
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(ind) = &o.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Ok(i) = i128::try_from(v.clone()) {
                out.push_str(&i.to_string());
            } else {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                out.push_str(&python_float(f));
            }
        }
        ValueKind::String => write_json_str(out, v.as_str().unwrap_or_default(), o.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            // Iterated, not collected: `messages * 10000000` is an iterable of
            // millions, of which only what fits the text bound is ever formed.
            let mut items = v.try_iter()?.peekable();
            if items.peek().is_none() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, depth + 1);
                write_json(out, &item, o, depth + 1)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries: Vec<(String, Value)> = Vec::new();
            for key in v.try_iter()? {
                let val = v.get_item(&key)?;
                let key = match key.kind() {
                    ValueKind::String => key.as_str().unwrap_or_default().to_string(),
                    ValueKind::None | ValueKind::Undefined => "null".to_string(),
                    ValueKind::Bool => (if key.is_true() { "true" } else { "false" }).to_string(),
                    _ => key.to_string(),
                };
                entries.push((key, val));
            }
            if o.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (key, val)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, depth + 1);
                write_json_str(out, key, o.ensure_ascii);
                out.push_str(&o.key_sep);
                write_json(out, val, o, depth + 1)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => write_json_str(out, &v.to_string(), o.ensure_ascii),
    }
    Ok(())
}

/// Python's `float.__repr__` for the common cases (`1.0`, `0.5`, `1e+20`, `NaN`).
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        // Shortest round-trip digits, Python exponent style (`1e+20`, `1.5e-05`).
        let s = format!("{f:e}");
        let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        return format!("{mant}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    let s = format!("{f}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// HF's `strftime_now(format)`: the current time formatted with C `strftime` codes.
/// The clock is read as UTC (Python uses local time; on-device that is usually UTC too).
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime_utc(&format, secs)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Formats `secs` since the Unix epoch (UTC). Supports the codes chat templates use:
/// `%Y %y %m %d %e %H %I %M %S %p %b %B %h %a %A %j %F %T %D %%`, and glibc's `%-d`-style
/// unpadded numbers. Unknown codes are copied through.
fn strftime_utc(format: &str, secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (hour, minute, second) = (sod / 3600, (sod % 3600) / 60, sod % 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let day = doy_mar - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(month - 1) as usize] + day + i64::from(leap && month > 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday.
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let unpadded = chars.peek() == Some(&'-');
        if unpadded {
            chars.next();
        }
        let num = |v: i64, width: usize| {
            if unpadded {
                v.to_string()
            } else {
                format!("{v:0width$}")
            }
        };
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&num(year.rem_euclid(100), 2)),
            Some('m') => out.push_str(&num(month, 2)),
            Some('d') => out.push_str(&num(day, 2)),
            Some('e') => out.push_str(&if unpadded {
                day.to_string()
            } else {
                format!("{day:2}")
            }),
            Some('H') => out.push_str(&num(hour, 2)),
            Some('I') => out.push_str(&num(hour12, 2)),
            Some('M') => out.push_str(&num(minute, 2)),
            Some('S') => out.push_str(&num(second, 2)),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('b') | Some('h') => out.push_str(&MONTHS[(month - 1) as usize][..3]),
            Some('B') => out.push_str(MONTHS[(month - 1) as usize]),
            Some('a') => out.push_str(&WEEKDAYS[weekday][..3]),
            Some('A') => out.push_str(WEEKDAYS[weekday]),
            Some('j') => out.push_str(&num(yday, 3)),
            Some('F') => out.push_str(&format!("{year}-{month:02}-{day:02}")),
            Some('T') => out.push_str(&format!("{hour:02}:{minute:02}:{second:02}")),
            Some('D') => out.push_str(&format!("{month:02}/{day:02}/{:02}", year.rem_euclid(100))),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                if unpadded {
                    out.push('-');
                }
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn smollm2_template_renders() {
        let t = ChatTemplate::new(SMOLLM2, "<|im_start|>", "<|im_end|>").unwrap();
        let out = t.render(&[ChatMessage::new("user", "Hi")], true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let out = t
            .render(
                &[
                    ChatMessage::new("system", "S"),
                    ChatMessage::new("user", "U"),
                ],
                false,
            )
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
        );
    }

    #[test]
    fn bad_template_fails_at_construction() {
        let e = ChatTemplate::new("{% for m in messages %}{{ m.content }}", "", "").unwrap_err();
        assert!(matches!(e, ModelError::ChatTemplate(_)), "{e}");
        assert!(e.to_string().contains("parsing"), "{e}");
    }

    #[test]
    fn hf_environment_semantics() {
        // trim_blocks + lstrip_blocks, like HF's ImmutableSandboxedEnvironment.
        let src = "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content.strip() }}]\n    {% endif %}\n{% endfor %}\n";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        assert_eq!(
            t.render(&[ChatMessage::new("user", "  hi  ")], false)
                .unwrap(),
            "[hi]\n"
        );
        // bos/eos are in the context; raise_exception aborts with the template's message.
        let t = ChatTemplate::new(
            "{{ bos_token }}{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ eos_token }}",
            "<s>",
            "</s>",
        )
        .unwrap();
        assert_eq!(
            t.render(&[ChatMessage::new("user", "x")], false).unwrap(),
            "<s></s>"
        );
        let e = t
            .render(&[ChatMessage::new("assistant", "x")], false)
            .unwrap_err();
        assert!(e.to_string().contains("first must be user"), "{e}");
    }

    #[test]
    fn endless_templates_stop_at_the_step_limit() {
        // 10^10 iterations: without a step budget this renders for hours.
        let t = ChatTemplate::new(
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let e = t
            .render(&[ChatMessage::new("user", "x")], true)
            .unwrap_err();
        assert!(
            matches!(e, ModelError::TemplateLimit { limit, max }
                if limit.contains("steps") && max == MAX_TEMPLATE_STEPS + TEMPLATE_STEPS_PER_MESSAGE),
            "{e}"
        );
        assert!(e.to_string().contains("rendering steps limit"), "{e}");
    }

    #[test]
    fn growing_output_stops_at_the_size_limit() {
        // 10 MB per iteration x 1000 iterations: few steps, but 10 GB of output.
        let t = ChatTemplate::new(
            "{% for i in range(1000) %}{{ 'x' * 10000000 }}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let e = t.render(&[], false).unwrap_err();
        assert!(
            matches!(e, ModelError::TemplateLimit { limit, max }
                if limit.contains("output") && max == MAX_TEMPLATE_OUTPUT_BYTES as u64),
            "{e}"
        );
    }

    /// Templates whose strings or lists double: each is a few dozen steps, far inside
    /// the step budget, and 2^40 to 2^64 bytes unbounded. Each must stop at the
    /// render's memory cap (in its own process: this test's process does not grow).
    #[cfg(target_os = "linux")]
    #[test]
    fn doubling_templates_stop_at_the_memory_limit() {
        let doubled_40_times = format!(
            "{{% set a = 'x' %}}{}{{{{ a | length }}}}",
            "{% set a = a ~ a %}".repeat(40)
        );
        for src in [
            "{% set ns = namespace(a='x') %}{% for i in range(64) %}{% set ns.a = ns.a ~ ns.a %}{% endfor %}{{ ns.a | length }}",
            "{% set ns = namespace(a='x') %}{% for i in range(64) %}{% set ns.a = ns.a + ns.a %}{% endfor %}{{ ns.a | length }}",
            "{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l | length }}",
            "{% macro d(s, n) %}{% if n > 0 %}{{ d(s ~ s, n - 1) }}{% else %}{{ s | length }}{% endif %}{% endmacro %}{{ d('x', 60) }}",
            &doubled_40_times,
        ] {
            let t = ChatTemplate::new(src, "", "").unwrap();
            let start = std::time::Instant::now();
            let e = t.render(&[ChatMessage::new("user", "x")], true).unwrap_err();
            assert!(
                matches!(e, ModelError::TemplateLimit { limit, max }
                    if limit.contains("memory") && max == MAX_TEMPLATE_MEMORY_BYTES),
                "{src}: {e}"
            );
            assert!(start.elapsed() < MAX_TEMPLATE_WALL, "{src}: {:?}", start.elapsed());
        }
        // `replace` (filter or method) refuses a result above the output limit first.
        for src in [
            "{% set ns = namespace(a='x') %}{% for i in range(64) %}{% set ns.a = ns.a | replace('x', 'xx') %}{% endfor %}",
            "{% set ns = namespace(a='x') %}{% for i in range(64) %}{% set ns.a = ns.a.replace('x', 'xx') %}{% endfor %}",
            "{{ ('x' * 1000) | replace('', 'abcdefghijklmnopqrstuvwxyz' * 1000) }}",
        ] {
            let t = ChatTemplate::new(src, "", "").unwrap();
            let e = t.render(&[], false).unwrap_err();
            assert!(e.to_string().contains("replace: the result would be above the output limit"), "{src}: {e}");
        }
        // The same constructs a few times over render as they should.
        let t = ChatTemplate::new(
            "{% set ns = namespace(a='x') %}{% for i in range(10) %}{% set ns.a = ns.a ~ ns.a %}{% endfor %}{{ ns.a | length }}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "1024");
        let t = ChatTemplate::new(
            "{{ 'a-b-c' | replace('-', '+') }} {{ 'a-b-c'.replace('-', '', 1) }}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "a+b+c ab-c");
    }

    #[test]
    fn huge_widths_are_refused_before_allocating() {
        for src in [
            "{{ messages[0].content | indent(1000000000000) }}",
            "{{ messages[0].content | indent(width=1000000000000) }}",
            "{{ messages[0] | tojson(indent=1000000000000) }}",
        ] {
            let t = ChatTemplate::new(src, "", "").unwrap();
            let e = t
                .render(&[ChatMessage::new("user", "a\nb")], false)
                .unwrap_err();
            assert!(
                matches!(e, ModelError::ChatTemplate(_)) && e.to_string().contains("limit of 1024"),
                "{src}: {e}"
            );
        }
        // Ordinary widths still work.
        let t =
            ChatTemplate::new("{{ messages[0].content | indent(2, first=true) }}", "", "").unwrap();
        assert_eq!(
            t.render(&[ChatMessage::new("user", "a\nb")], false)
                .unwrap(),
            "  a\n  b"
        );
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let t = ChatTemplate::new("{{ messages[0] | tojson }}|{{ messages[0] | tojson(indent=2) }}|{{ {'b': [1, 2.5, none, true], 'a': '<é>'} | tojson(sort_keys=true) }}", "", "").unwrap();
        let out = t
            .render(&[ChatMessage::new("user", "a \"q\" <b>\n")], false)
            .unwrap();
        assert_eq!(
            out,
            "{\"role\": \"user\", \"content\": \"a \\\"q\\\" <b>\\n\"}|{\n  \"role\": \"user\",\n  \"content\": \"a \\\"q\\\" <b>\\n\"\n}|{\"a\": \"<é>\", \"b\": [1, 2.5, null, true]}"
        );
    }

    #[test]
    fn strftime_formats_utc() {
        // 2024-07-26 13:05:09 UTC, a Friday, day 208.
        let t = 1_722_000_000 - 1_722_000_000 % 86_400 + 13 * 3600 + 5 * 60 + 9;
        assert_eq!(strftime_utc("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(
            strftime_utc("%A %B %-d, %Y %H:%M:%S %j %%", t),
            "Friday July 26, 2024 13:05:09 208 %"
        );
        assert_eq!(strftime_utc("%F %T %I%p", 0), "1970-01-01 00:00:00 12AM");
        assert_eq!(strftime_utc("%Y-%m-%d", 951_782_400), "2000-02-29");
    }
}
