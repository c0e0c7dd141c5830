//! WGSL compute shaders of the wgpu backend, kept as real `.wgsl` files (not Rust string
//! fragments) and embedded with `include_str!`.
//!
//! Each file is one kernel family; its header comment documents its bindings and
//! defines. [`preprocess`] resolves the tiny directive set the files use:
//! `#include "file.wgsl"` (each file at most once per module), `#ifdef NAME`,
//! `#ifndef NAME`, `#else` and `#endif`. Defines are plain names; anything with a value
//! is a WGSL `const` in the files or a uniform parameter, so no text is substituted
//! inside WGSL code.

/// Every shader file by name.
pub const FILES: &[(&str, &str)] = &[
    ("common.wgsl", include_str!("common.wgsl")),
    ("status.wgsl", include_str!("status.wgsl")),
    ("weights.wgsl", include_str!("weights.wgsl")),
    ("elementwise.wgsl", include_str!("elementwise.wgsl")),
    ("norm.wgsl", include_str!("norm.wgsl")),
    ("rope.wgsl", include_str!("rope.wgsl")),
    ("attention.wgsl", include_str!("attention.wgsl")),
    ("matmul.wgsl", include_str!("matmul.wgsl")),
    ("gather.wgsl", include_str!("gather.wgsl")),
    ("kv_write.wgsl", include_str!("kv_write.wgsl")),
    ("transpose.wgsl", include_str!("transpose.wgsl")),
    ("rows.wgsl", include_str!("rows.wgsl")),
    ("patch_embed.wgsl", include_str!("patch_embed.wgsl")),
];

/// The source of one shader file.
pub fn source(name: &str) -> Option<&'static str> {
    FILES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// Why a shader could not be assembled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {reason}")]
pub struct PreprocessError {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

/// Assembles `file` with `defines` set: includes inlined, conditional blocks resolved.
pub fn preprocess(file: &str, defines: &[&str]) -> Result<String, PreprocessError> {
    let mut out = String::new();
    let mut included = Vec::new();
    expand(file, defines, &mut included, &mut out, 0)?;
    Ok(out)
}

fn expand(file: &str, defines: &[&str], included: &mut Vec<String>, out: &mut String, depth: usize) -> Result<(), PreprocessError> {
    let err = |line: usize, reason: String| PreprocessError { file: file.to_string(), line, reason };
    if depth > 8 {
        return Err(err(0, "includes nested too deeply".into()));
    }
    let src = source(file).ok_or_else(|| err(0, "no such shader file".into()))?;
    included.push(file.to_string());
    // Stack of (this block is active, an enclosing block is active).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let active = |stack: &[(bool, bool)]| stack.last().map(|&(a, p)| a && p).unwrap_or(true);
    for (i, line) in src.lines().enumerate() {
        let n = i + 1;
        let t = line.trim();
        if let Some(name) = t.strip_prefix("#ifdef ").or_else(|| t.strip_prefix("#ifndef ")) {
            let set = defines.contains(&name.trim());
            let on = if t.starts_with("#ifdef") { set } else { !set };
            let parent = active(&stack);
            stack.push((on, parent));
        } else if t == "#else" {
            let top = stack.last_mut().ok_or_else(|| err(n, "#else without #ifdef".into()))?;
            top.0 = !top.0;
        } else if t == "#endif" {
            stack.pop().ok_or_else(|| err(n, "#endif without #ifdef".into()))?;
        } else if let Some(rest) = t.strip_prefix("#include ") {
            if active(&stack) {
                let name = rest.trim().trim_matches('"');
                if !included.iter().any(|f| f == name) {
                    expand(name, defines, included, out, depth + 1)?;
                }
            }
        } else if t.starts_with('#') {
            return Err(err(n, format!("unknown directive `{t}`")));
        } else if active(&stack) {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !stack.is_empty() {
        return Err(err(src.lines().count(), "unterminated #ifdef".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn includes_once_and_resolves_conditionals() {
        let s = preprocess("matmul.wgsl", &["W_Q4_0", "HAS_BIAS"]).unwrap();
        assert_eq!(s.matches("fn silu(").count(), 1, "common.wgsl inlined once");
        assert!(s.contains("var<storage, read> bias"));
        assert!(!s.contains("var<storage, read> residual"));
        assert!(s.contains("q4_quad(blk"));
        assert!(!s.contains('#'), "no directive survives");
    }

    #[test]
    fn every_file_preprocesses() {
        for (name, _) in FILES {
            preprocess(name, &["W_F32"]).unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(preprocess("nope.wgsl", &[]).is_err());
    }
}
