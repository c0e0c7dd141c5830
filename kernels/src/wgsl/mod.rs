//! WGSL compute shaders of the wgpu backend, kept as real `.wgsl` files (not Rust string
//! fragments) and embedded with `include_str!`.
//!
//! Each file is one kernel family; its header comment documents its bindings and
//! defines. [`preprocess`] resolves the tiny directive set the files use:
//! `#include "file.wgsl"` (each file at most once per module), `#ifdef NAME`,
//! `#ifndef NAME`, `#else` and `#endif`. A define `NAME` is a flag for `#ifdef`; a
//! define `NAME=N` (an unsigned integer) becomes `const NAME: u32 = Nu;` at the top of
//! the module (sizes of register arrays, which WGSL needs as constants) and also counts
//! as set for `#ifdef NAME`, so code needing the constant can exist only with it. WGSL `enable`
//! directives (`enable f16;`, `enable subgroups;`) are moved to the top, ahead of those
//! constants and of any included file, since WGSL wants them before every declaration.
//! No text is substituted inside WGSL code.

/// Every shader file by name.
pub const FILES: &[(&str, &str)] = &[
    ("common.wgsl", include_str!("common.wgsl")),
    ("status.wgsl", include_str!("status.wgsl")),
    ("weights.wgsl", include_str!("weights.wgsl")),
    ("elementwise.wgsl", include_str!("elementwise.wgsl")),
    ("norm.wgsl", include_str!("norm.wgsl")),
    ("rope.wgsl", include_str!("rope.wgsl")),
    ("rope_spec.wgsl", include_str!("rope_spec.wgsl")),
    ("rope_value.wgsl", include_str!("rope_value.wgsl")),
    (
        "attention_params.wgsl",
        include_str!("attention_params.wgsl"),
    ),
    ("attention.wgsl", include_str!("attention.wgsl")),
    (
        "attention_combine.wgsl",
        include_str!("attention_combine.wgsl"),
    ),
    ("attention_split.wgsl", include_str!("attention_split.wgsl")),
    ("attention_lanes.wgsl", include_str!("attention_lanes.wgsl")),
    ("attention_i8.wgsl", include_str!("attention_i8.wgsl")),
    ("matmul.wgsl", include_str!("matmul.wgsl")),
    ("act_quant.wgsl", include_str!("act_quant.wgsl")),
    ("gather.wgsl", include_str!("gather.wgsl")),
    ("kv_write.wgsl", include_str!("kv_write.wgsl")),
    ("kv_load.wgsl", include_str!("kv_load.wgsl")),
    ("q_load.wgsl", include_str!("q_load.wgsl")),
    ("transpose.wgsl", include_str!("transpose.wgsl")),
    ("rows.wgsl", include_str!("rows.wgsl")),
    ("patch_embed.wgsl", include_str!("patch_embed.wgsl")),
    ("probe.wgsl", include_str!("probe.wgsl")),
    ("valid_rows.wgsl", include_str!("valid_rows.wgsl")),
    (
        "space_to_channel.wgsl",
        include_str!("space_to_channel.wgsl"),
    ),
];

/// Environment variable naming a directory to read shader files from instead of the
/// embedded copies (kernel development: edit a `.wgsl` file and rerun, no rebuild).
pub const SOURCE_DIR_ENV: &str = "NPURT_WGSL_DIR";

/// The source of one shader file (from `NPURT_WGSL_DIR` when set and the file is there).
pub fn source(name: &str) -> Option<std::borrow::Cow<'static, str>> {
    let embedded = FILES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)?;
    if let Some(dir) = std::env::var_os(SOURCE_DIR_ENV) {
        if let Ok(s) = std::fs::read_to_string(std::path::Path::new(&dir).join(name)) {
            return Some(s.into());
        }
    }
    Some(embedded.into())
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
pub fn preprocess<S: AsRef<str>>(file: &str, defines: &[S]) -> Result<String, PreprocessError> {
    let defines: Vec<&str> = defines.iter().map(|d| d.as_ref()).collect();
    let mut out = String::new();
    for d in &defines {
        if let Some((name, value)) = d.split_once('=') {
            let ok_name =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok_name || value.parse::<u32>().is_err() {
                return Err(PreprocessError {
                    file: file.to_string(),
                    line: 0,
                    reason: format!("bad define `{d}` (NAME=unsigned integer)"),
                });
            }
            out.push_str(&format!("const {name}: u32 = {value}u;\n"));
        }
    }
    let defines = &defines[..];
    let mut included = Vec::new();
    let mut body = String::new();
    expand(file, defines, &mut included, &mut body, 0)?;
    let (enables, rest): (Vec<&str>, Vec<&str>) = body
        .lines()
        .partition(|l| l.trim_start().starts_with("enable "));
    let mut module = String::new();
    for e in enables {
        if !module.lines().any(|l| l == e) {
            module.push_str(e);
            module.push('\n');
        }
    }
    module.push_str(&out);
    for l in rest {
        module.push_str(l);
        module.push('\n');
    }
    Ok(module)
}

fn expand(
    file: &str,
    defines: &[&str],
    included: &mut Vec<String>,
    out: &mut String,
    depth: usize,
) -> Result<(), PreprocessError> {
    let err = |line: usize, reason: String| PreprocessError {
        file: file.to_string(),
        line,
        reason,
    };
    if depth > 8 {
        return Err(err(0, "includes nested too deeply".into()));
    }
    let src = source(file).ok_or_else(|| err(0, "no such shader file".into()))?;
    let src: &str = &src;
    included.push(file.to_string());
    // Stack of (this block is active, an enclosing block is active).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let active = |stack: &[(bool, bool)]| stack.last().map(|&(a, p)| a && p).unwrap_or(true);
    for (i, line) in src.lines().enumerate() {
        let n = i + 1;
        let t = line.trim();
        if let Some(name) = t
            .strip_prefix("#ifdef ")
            .or_else(|| t.strip_prefix("#ifndef "))
        {
            let name = name.trim();
            let set = defines
                .iter()
                .any(|d| d.split_once('=').map_or(*d, |(n, _)| n) == name);
            let on = if t.starts_with("#ifdef") { set } else { !set };
            let parent = active(&stack);
            stack.push((on, parent));
        } else if t == "#else" {
            let top = stack
                .last_mut()
                .ok_or_else(|| err(n, "#else without #ifdef".into()))?;
            top.0 = !top.0;
        } else if t == "#endif" {
            stack
                .pop()
                .ok_or_else(|| err(n, "#endif without #ifdef".into()))?;
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
        let s = preprocess("matmul.wgsl", &["W_Q4_0", "W_BLOCKS", "HAS_BIAS"]).unwrap();
        assert_eq!(s.matches("fn silu(").count(), 1, "common.wgsl inlined once");
        assert!(s.contains("var<storage, read> bias"));
        assert!(!s.contains("var<storage, read> residual"));
        assert!(s.contains("q4_quad(blk"));
        assert!(!s.contains('#'), "no directive survives");
    }

    #[test]
    fn every_file_preprocesses() {
        for (name, _) in FILES {
            preprocess(name, &["W_F32", "HEAD_DIM=64"]).unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(preprocess::<&str>("nope.wgsl", &[]).is_err());
        assert!(preprocess("attention_lanes.wgsl", &["HEAD_DIM=x"]).is_err());
        assert!(preprocess("attention_lanes.wgsl", &["HEAD_DIM=64"])
            .unwrap()
            .starts_with("const HEAD_DIM: u32 = 64u;"));
        // The ViT's mode has no positions to bind.
        for file in ["attention.wgsl", "attention_lanes.wgsl"] {
            let causal = preprocess(file, &["HEAD_DIM=72"]).unwrap();
            let bidir = preprocess(file, &["HEAD_DIM=72", "BIDIRECTIONAL"]).unwrap();
            assert!(
                causal.contains("pos_in") && !bidir.contains("pos_in"),
                "{file}"
            );
        }
    }

    #[test]
    fn enable_directives_lead_the_module() {
        let s = preprocess("probe.wgsl", &["F16", "X=3"]).unwrap();
        assert!(
            s.starts_with("enable f16;\nconst X: u32 = 3u;\n"),
            "{}",
            &s[..60]
        );
        assert_eq!(s.matches("enable f16;").count(), 1);
        assert!(!preprocess::<&str>("probe.wgsl", &[])
            .unwrap()
            .contains("enable"));
    }

    /// Parses, validates and writes `file` as SPIR-V with naga (wgpu's shader
    /// compiler), every capability allowed.
    fn naga_compiles(file: &str, defines: &[&str], entry: &str) {
        let src = preprocess(file, defines).unwrap();
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{defines:?}: {}", e.emit_to_string(&src)));
        let info = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{defines:?}: {}", e.emit_to_string(&src)));
        let entry = naga::back::spv::PipelineOptions {
            shader_stage: naga::ShaderStage::Compute,
            entry_point: entry.into(),
        };
        naga::back::spv::write_vec(
            &module,
            &info,
            &naga::back::spv::Options::default(),
            Some(&entry),
        )
        .unwrap_or_else(|e| panic!("{defines:?}: {e}"));
    }

    /// The cooperative-matrix GEMM and its peak probe run only on adapters with
    /// matrix units, which no CI machine has: naga must still accept the GEMM for
    /// every weight format, with and without the rms_norm prologue and a GLU, and the
    /// probe, and write them as SPIR-V.
    #[test]
    fn cooperative_matrix_shaders_compile() {
        naga_compiles("probe.wgsl", &["COOP"], "coop_f16");
        let formats: [&[&str]; 6] = [
            &["W_F32"],
            &["W_F16", "W_HALF"],
            &["W_Q4_0", "W_BLOCKS", "W_OFFSET"],
            &["W_Q4_1", "W_BLOCKS", "W_OFFSET"],
            &["W_Q8_0", "W_BLOCKS"],
            &["W_Q8_CHANNEL"],
        ];
        let extras: [&[&str]; 3] = [&[], &["NORM", "HAS_RESIDUAL"], &["GLU", "GLU_SILU"]];
        for format in formats {
            for extra in extras {
                let defines: Vec<&str> = ["COOP"]
                    .iter()
                    .chain(format)
                    .chain(extra)
                    .copied()
                    .collect();
                naga_compiles("matmul.wgsl", &defines, "gemm_coop");
            }
        }
    }
}
