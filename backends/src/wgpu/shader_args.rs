//! Each shader's host interface as typed structs: its uniform `Params`, field for field
//! with the `.wgsl` struct of that name, and its storage buffers by the names the
//! shader gives them (`Bindings`), so lowering fills named fields rather than
//! positional lists, and binding numbers are written once, here. The tests below read
//! every shader file these describe, with naga (wgpu's own WGSL front end) for the
//! uniform's layout, and fail on any name, offset, size or binding number that differs:
//! a shader edit that moves a field cannot make the host write the wrong words.
//!
//! One module per shader file (several files share one where they share a `Params`).
//! Fields named `_pad*` are padding the uniform layout rules ask for and no shader reads.

use super::ops::BindRef;

/// The uniform's binding in every shader.
pub(crate) const PARAMS_BINDING: u32 = 0;

/// A field of a uniform struct as the host lays it out (`fields`: a nested struct's).
/// Read by the tests.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct Field {
    pub name: &'static str,
    pub offset: usize,
    pub size: usize,
    pub fields: &'static [Field],
}

/// What a uniform `Params` field may hold: plain words, or a nested struct that lists
/// its own fields.
pub(crate) trait Uniform: bytemuck::Pod {
    #[cfg_attr(not(test), allow(dead_code))]
    const FIELDS: &'static [Field] = &[];
}
impl Uniform for u32 {}
impl Uniform for f32 {}
impl<const N: usize> Uniform for [u32; N] {}

/// A shader's storage bindings, named as in the shader.
pub(crate) trait Bindings {
    /// (name, binding, required) of each.
    #[cfg_attr(not(test), allow(dead_code))]
    const SLOTS: &'static [(&'static str, u32, bool)];
    /// The bind group's entries: the uniform, then each buffer that is set.
    fn entries(&self) -> Vec<(u32, BindRef)>;
}

/// A `#[repr(C)]` uniform struct whose fields the tests can walk.
macro_rules! uniform_struct {
    ($(#[$m:meta])* struct $name:ident { $($(#[$fm:meta])* $f:ident: $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        pub(crate) struct $name {
            $($(#[$fm])* pub $f: $t),*
        }
        impl $crate::wgpu::shader_args::Uniform for $name {
            const FIELDS: &'static [$crate::wgpu::shader_args::Field] = &[$(
                $crate::wgpu::shader_args::Field {
                    name: stringify!($f),
                    offset: std::mem::offset_of!($name, $f),
                    size: std::mem::size_of::<$t>(),
                    fields: <$t as $crate::wgpu::shader_args::Uniform>::FIELDS,
                }
            ),*];
        }
    };
}

/// A shader's `Bindings`: `name: binding` per buffer every dispatch binds, then under
/// `optional` those only some entry points or defines declare. Also each binding's
/// number by name (`NUMBERS`), for the probes that bind their own buffers.
macro_rules! bindings {
    (
        $(#[$m:meta])* struct $name:ident {
            $($f:ident: $b:literal),* $(,)?
        }
        $(optional { $($of:ident: $ob:literal),* $(,)? })?
    ) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug)]
        pub(crate) struct $name {
            $(pub $f: BindRef,)*
            $($(pub $of: Option<BindRef>,)*)?
        }
        impl $crate::wgpu::shader_args::Bindings for $name {
            const SLOTS: &'static [(&'static str, u32, bool)] =
                &[$((stringify!($f), $b, true),)* $($((stringify!($of), $ob, false),)*)?];
            fn entries(&self) -> Vec<(u32, BindRef)> {
                let mut e = vec![($crate::wgpu::shader_args::PARAMS_BINDING, BindRef::Params)];
                $(e.push(($b, self.$f));)*
                $($(e.extend(self.$of.map(|r| ($ob, r)));)*)?
                e
            }
        }
        /// Each binding's number.
        #[allow(dead_code)]
        pub(crate) struct Numbers {
            $(pub $f: u32,)*
            $($(pub $of: u32,)*)?
        }
        #[allow(dead_code)]
        pub(crate) const NUMBERS: Numbers = Numbers { $($f: $b,)* $($($of: $ob,)*)? };
    };
}

uniform_struct! {
    /// rope_spec.wgsl: a RoPE's parameters, the last member of the uniform of every
    /// shader that rotates (rope, kv_write's ROPE, attention's ROPE_Q). A struct inside
    /// a uniform starts on 16 bytes, hence the alignment and the padding.
    #[repr(align(16))]
    struct RopeSpec {
        head_dim: u32,
        rotary_dim: u32,
        dynamic_ntk: u32,
        theta: f32,
        factor: f32,
        original_max_position: u32,
        _pad: [u32; 2],
    }
}

/// elementwise.wgsl: `add`, `mul`, the activations and `swiglu`.
pub(crate) mod elementwise {
    use super::*;
    uniform_struct! {
        struct Params {
            n: u32,
            /// Elements of `y`, broadcast over `x` (1 without `y`).
            y_len: u32,
            /// swiglu: the output's row length.
            cols: u32,
        }
    }
    bindings! {
        struct Bindings { x: 1, out: 3 }
        optional { y: 2 }
    }
}

/// norm.wgsl: `rms_norm`, `layer_norm`, `softmax`.
pub(crate) mod norm {
    use super::*;
    uniform_struct! {
        struct Params { rows: u32, h: u32, eps: f32 }
    }
    bindings! {
        struct Bindings { x: 1, out: 4 }
        optional { weight: 2, bias: 3 }
    }
}

/// rope.wgsl.
pub(crate) mod rope {
    use super::*;
    uniform_struct! {
        struct Params {
            n: u32,
            width: u32,
            node: u32,
            in_stride: u32,
            in_offset: u32,
            _pad: [u32; 3],
            rope: RopeSpec,
        }
    }
    bindings! {
        struct Bindings { x: 1, pos_in: 2, n_valid_in: 3, inv_freq: 4, out: 5, status: 15 }
    }
}

/// kv_write.wgsl (with KV_PAIR two writes, with ROPE the first rotated).
pub(crate) mod kv_write {
    use super::*;
    uniform_struct! {
        struct Params {
            n: u32,
            width: u32,
            cache_rows: u32,
            new_rows: u32,
            node: u32,
            head_dim: u32,
            src_stride: u32,
            src_offset: u32,
            v_stride: u32,
            v_offset: u32,
            _pad: [u32; 2],
            rope: RopeSpec,
        }
    }
    bindings! {
        struct Bindings { new_rows: 1, pos_in: 2, cache: 3, status: 15 }
        optional { n_valid_in: 4, inv_freq: 5, v_rows: 6, v_cache: 7 }
    }
}

/// attention_params.wgsl: the uniform of attention.wgsl, attention_lanes.wgsl and
/// attention_i8.wgsl.
pub(crate) mod attention {
    use super::*;
    uniform_struct! {
        struct Params {
            t_rows: u32,
            n_heads: u32,
            n_kv_heads: u32,
            head_dim: u32,
            s_rows: u32,
            scale: f32,
            node: u32,
            q_stride: u32,
            q_offset: u32,
            splits: u32,
            _pad: [u32; 2],
            rope: RopeSpec,
        }
    }
    bindings! {
        /// attention.wgsl and attention_lanes.wgsl (kv_load.wgsl, q_load.wgsl); in
        /// BIDIRECTIONAL mode the "caches" are the ViT's K and V activations.
        struct Bindings { q: 1, k_cache: 2, v_cache: 3, out: 6 }
        optional { pos_in: 4, n_valid_in: 5, inv_freq: 7, status: 15 }
    }
}

/// attention_combine.wgsl (uniform: `attention::Params`): split-key attention's
/// merge of the `attention` entry's states (SPLIT_KEYS, written to its `out`).
pub(crate) mod attention_combine {
    use super::*;
    bindings! {
        struct Bindings { states: 1, pos_in: 4, n_valid_in: 5, out: 6 }
    }
}

/// attention_i8.wgsl (uniform: `attention::Params`).
pub(crate) mod attention_i8 {
    use super::*;
    bindings! {
        struct Bindings { q: 1, k: 2, v: 3, out: 6 }
    }
}

/// space_to_channel.wgsl.
pub(crate) mod space_to_channel {
    use super::*;
    uniform_struct! {
        struct Params {
            n: u32,
            channels: u32,
            grid_h: u32,
            grid_w: u32,
            block: u32,
            cells_h: u32,
            cells_w: u32,
        }
    }
    bindings! {
        struct Bindings { x: 1, out: 2 }
    }
}

/// rows.wgsl: `slice_cols`, `select_row`.
pub(crate) mod rows {
    use super::*;
    uniform_struct! {
        struct Params { n: u32, rows: u32, in_width: u32, start: u32, out_width: u32, node: u32 }
    }
    bindings! {
        struct Bindings { x: 1, out: 3 }
        optional { index_in: 2, status: 15 }
    }
}

/// transpose.wgsl (up to `ops::MAX_TRANSPOSE_RANK` dims).
pub(crate) mod transpose {
    use super::*;
    uniform_struct! {
        struct Params {
            n: u32,
            rank: u32,
            _pad: [u32; 2],
            out_shape: [u32; 8],
            in_stride: [u32; 8],
        }
    }
    bindings! {
        struct Bindings { x: 1, out: 3 }
    }
}

/// patch_embed.wgsl.
pub(crate) mod patch_embed {
    use super::*;
    uniform_struct! {
        struct Params {
            n: u32,
            channels_out: u32,
            channels_in: u32,
            height: u32,
            width: u32,
            patch_size: u32,
            grid_h: u32,
            grid_w: u32,
        }
    }
    bindings! {
        struct Bindings { pixels: 1, weight: 2, bias: 3, out: 4 }
    }
}

/// gather.wgsl.
pub(crate) mod gather {
    use super::*;
    uniform_struct! {
        struct Params {
            tokens: u32,
            width: u32,
            vocab: u32,
            row_begin: u32,
            row_count: u32,
            w_soff: u32,
            node: u32,
        }
    }
    bindings! {
        struct Bindings { ids: 1, w: 2, out: 3, status: 15 }
    }
}

/// matmul.wgsl: every entry point (`lanes`, `gemv`, `gemm`, `gemm_dot4`, `gemm_coop`).
pub(crate) mod matmul {
    use super::*;
    uniform_struct! {
        struct Params {
            m: u32,
            k: u32,
            n: u32,
            n_base: u32,
            ldo: u32,
            lda: u32,
            a_k0: u32,
            w_soff: u32,
            w_ld: u32,
            up_row: u32,
            accumulate: u32,
            /// NORM: the fused rms_norm's eps.
            eps: f32,
        }
    }
    bindings! {
        /// `a` (f32 activations) or `aq` (gemm_dot4's quantized blocks), and each
        /// epilogue's and the NORM prologue's operand where it has one.
        struct Bindings { w: 2, out: 3 }
        optional { a: 1, bias: 4, residual: 5, aq: 6, norm_w: 7 }
    }
}

/// act_quant.wgsl.
pub(crate) mod act_quant {
    use super::*;
    uniform_struct! {
        struct Params { m: u32, k: u32, lda: u32 }
    }
    bindings! {
        struct Bindings { a: 1, aq: 3 }
    }
}

/// probe.wgsl (`probe::Probe::time` binds its buffers by `NUMBERS`).
pub(crate) mod probe {
    use super::*;
    uniform_struct! {
        struct Params { words: u32, iters: u32, decay: f32 }
    }
    bindings! {
        /// Only its `NUMBERS` are used (and checked by the tests).
        #[allow(dead_code)]
        struct Bindings { dst: 1 }
        optional { src: 2 }
    }
}

/// valid_rows.wgsl: a chunk's row-wise grids sized to its valid rows.
pub(crate) mod valid_rows {
    use super::*;
    uniform_struct! {
        struct Params { grids: u32, rows: u32 }
    }
    uniform_struct! {
        /// One entry of the `grids` table (the shader's `RowGrid`): how a dispatch's
        /// grid covers the rows (ops.rs `RowGrid`) and its whole grid.
        struct GridEntry { kind: u32, a: u32, b: u32, _pad: u32, whole: [u32; 4] }
    }
    /// `GridEntry::kind` of a `RowGrid::Flat` and of a `RowGrid::Axis` (the shader's
    /// FLAT and AXIS).
    pub(crate) const FLAT: u32 = 1;
    pub(crate) const AXIS: u32 = 2;
    bindings! {
        /// Only its `NUMBERS` are used (the executable binds the scratch's grid
        /// buffer, which no `BindRef` names).
        #[allow(dead_code)]
        struct Bindings { n_valid_in: 1, grids: 2, out: 3 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use npurt_kernels::wgsl;

    /// The uniform `Params` of `file` built with `defines`, as naga lays it out.
    fn wgsl_params(file: &str, defines: &[&str]) -> (naga::Module, naga::Handle<naga::Type>) {
        let src = wgsl::preprocess(file, defines).unwrap();
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{file}: {}", e.emit_to_string(&src)));
        let ty = module
            .global_variables
            .iter()
            .find(|(_, g)| g.name.as_deref() == Some("params"))
            .map(|(_, g)| g.ty)
            .unwrap_or_else(|| panic!("{file}: no `params`"));
        (module, ty)
    }

    /// Every member of the WGSL struct `ty` has a host field of its name at its offset
    /// and size, recursively; every host field but padding is in the WGSL struct; the
    /// host struct covers the WGSL one.
    fn same_layout(
        file: &str,
        module: &naga::Module,
        ty: naga::Handle<naga::Type>,
        host: &[Field],
        host_size: usize,
    ) {
        let naga::TypeInner::Struct { members, span } = &module.types[ty].inner else {
            panic!("{file}: params is not a struct");
        };
        let gctx = module.to_ctx();
        for m in members {
            let name = m.name.as_deref().unwrap_or("?");
            let f = host
                .iter()
                .find(|f| f.name == name)
                .unwrap_or_else(|| panic!("{file}: member `{name}` has no host field"));
            let size = module.types[m.ty].inner.size(gctx) as usize;
            // A nested struct may carry trailing padding on the host (RopeSpec's).
            let host_size = if f.fields.is_empty() {
                f.size
            } else {
                f.size.min(size)
            };
            assert_eq!(
                (f.offset, host_size),
                (m.offset as usize, size),
                "{file}: `{name}` (offset, size) on the host vs in the shader"
            );
            if !f.fields.is_empty() {
                same_layout(file, module, m.ty, f.fields, f.size);
            }
        }
        for f in host.iter().filter(|f| !f.name.starts_with("_pad")) {
            assert!(
                members.iter().any(|m| m.name.as_deref() == Some(f.name)),
                "{file}: host field `{}` is not in the shader",
                f.name
            );
        }
        assert!(
            host_size >= *span as usize,
            "{file}: host struct smaller than the shader's"
        );
    }

    fn check_params<P: Uniform>(file: &str, defines: &[&str]) {
        let (module, ty) = wgsl_params(file, defines);
        same_layout(file, &module, ty, P::FIELDS, std::mem::size_of::<P>());
    }

    /// valid_rows.wgsl's `RowGrid` (the element of its `grids` table) as the host's
    /// `GridEntry`, and its kinds as the host's.
    #[test]
    fn the_row_grid_table_matches_its_shader() {
        let src = wgsl::preprocess("valid_rows.wgsl", &[] as &[&str]).unwrap();
        let module = naga::front::wgsl::parse_str(&src).unwrap();
        let ty = module
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some("RowGrid"))
            .map(|(h, _)| h)
            .expect("RowGrid");
        same_layout(
            "valid_rows.wgsl",
            &module,
            ty,
            valid_rows::GridEntry::FIELDS,
            std::mem::size_of::<valid_rows::GridEntry>(),
        );
        for (name, host) in [("FLAT", valid_rows::FLAT), ("AXIS", valid_rows::AXIS)] {
            assert!(
                src.contains(&format!("const {name}: u32 = {host}u;")),
                "valid_rows.wgsl's {name} is not {host}"
            );
        }
    }

    /// `@binding(N) var<...> name` of `file` and the files it includes, under every
    /// condition (a textual scan: each `#ifdef` branch counts).
    fn declared_bindings(file: &str, out: &mut Vec<(String, u32)>, seen: &mut Vec<String>) {
        if seen.iter().any(|s| s == file) {
            return;
        }
        seen.push(file.to_string());
        let src = wgsl::source(file).unwrap_or_else(|| panic!("no shader {file}"));
        for line in src.lines() {
            let line = line.trim();
            if let Some(inc) = line.strip_prefix("#include ") {
                declared_bindings(inc.trim_matches('"'), out, seen);
            } else if let Some(rest) = line.strip_prefix("@group(0) @binding(") {
                let (n, decl) = rest.split_once(')').expect("binding number");
                let name = decl
                    .split('>')
                    .nth(1)
                    .and_then(|s| s.split(':').next())
                    .map(str::trim)
                    .unwrap_or_else(|| panic!("{file}: `{line}`"));
                let n: u32 = n.parse().expect("binding number");
                if !out.iter().any(|(m, b)| m == name && *b == n) {
                    out.push((name.to_string(), n));
                }
            }
        }
    }

    /// Every binding the files declare is a host slot of that name and number; every
    /// required slot is declared in each file, every optional one in some file.
    fn check_bindings<B: Bindings>(files: &[&str]) {
        let mut any = Vec::new();
        for file in files {
            let mut decl = Vec::new();
            declared_bindings(file, &mut decl, &mut Vec::new());
            for (name, n) in &decl {
                if name == "params" {
                    assert_eq!(*n, PARAMS_BINDING, "{file}");
                    continue;
                }
                assert!(
                    B::SLOTS.iter().any(|(s, b, _)| s == name && b == n),
                    "{file}: `{name}` at binding {n} is not a host slot"
                );
            }
            for (s, b, required) in B::SLOTS {
                let here = decl.iter().any(|(m, n)| m == s && n == b);
                assert!(
                    here || !required,
                    "{file}: required `{s}` ({b}) not declared"
                );
                if here {
                    any.push(*s);
                }
            }
        }
        for (s, _, _) in B::SLOTS {
            assert!(any.contains(s), "{files:?}: no file declares `{s}`");
        }
    }

    #[test]
    fn params_match_the_shaders() {
        check_params::<elementwise::Params>("elementwise.wgsl", &[]);
        check_params::<norm::Params>("norm.wgsl", &[]);
        check_params::<rope::Params>("rope.wgsl", &[]);
        check_params::<kv_write::Params>("kv_write.wgsl", &["ROPE", "KV_PAIR"]);
        for file in [
            "attention.wgsl",
            "attention_lanes.wgsl",
            "attention_i8.wgsl",
            "attention_combine.wgsl",
        ] {
            check_params::<attention::Params>(file, &["HEAD_DIM=64", "ROPE_Q"]);
        }
        check_params::<space_to_channel::Params>("space_to_channel.wgsl", &[]);
        check_params::<rows::Params>("rows.wgsl", &[]);
        check_params::<transpose::Params>("transpose.wgsl", &[]);
        check_params::<patch_embed::Params>("patch_embed.wgsl", &[]);
        check_params::<gather::Params>("gather.wgsl", &["W_F32"]);
        check_params::<matmul::Params>("matmul.wgsl", &["W_F32", "NORM"]);
        check_params::<act_quant::Params>("act_quant.wgsl", &[]);
        check_params::<probe::Params>("probe.wgsl", &[]);
        check_params::<valid_rows::Params>("valid_rows.wgsl", &[]);
    }

    #[test]
    fn bindings_match_the_shaders() {
        check_bindings::<elementwise::Bindings>(&["elementwise.wgsl"]);
        check_bindings::<norm::Bindings>(&["norm.wgsl"]);
        check_bindings::<rope::Bindings>(&["rope.wgsl"]);
        check_bindings::<kv_write::Bindings>(&["kv_write.wgsl"]);
        check_bindings::<attention::Bindings>(&["attention.wgsl", "attention_lanes.wgsl"]);
        check_bindings::<attention_i8::Bindings>(&["attention_i8.wgsl"]);
        check_bindings::<attention_combine::Bindings>(&["attention_combine.wgsl"]);
        check_bindings::<space_to_channel::Bindings>(&["space_to_channel.wgsl"]);
        check_bindings::<rows::Bindings>(&["rows.wgsl"]);
        check_bindings::<transpose::Bindings>(&["transpose.wgsl"]);
        check_bindings::<patch_embed::Bindings>(&["patch_embed.wgsl"]);
        check_bindings::<gather::Bindings>(&["gather.wgsl"]);
        check_bindings::<matmul::Bindings>(&["matmul.wgsl"]);
        check_bindings::<act_quant::Bindings>(&["act_quant.wgsl"]);
        check_bindings::<probe::Bindings>(&["probe.wgsl"]);
        check_bindings::<valid_rows::Bindings>(&["valid_rows.wgsl"]);
    }

    /// The checks can fail: a field out of place, a binding renumbered.
    #[test]
    #[should_panic(expected = "`width` (offset, size)")]
    fn a_moved_field_fails_the_check() {
        uniform_struct! {
            struct Swapped { n: u32, node: u32, width: u32, in_stride: u32, in_offset: u32, _pad: [u32; 3], rope: RopeSpec }
        }
        check_params::<Swapped>("rope.wgsl", &[]);
    }

    #[test]
    #[should_panic(expected = "`out` at binding 3 is not a host slot")]
    fn a_renumbered_binding_fails_the_check() {
        bindings! {
            struct Renumbered { x: 1, out: 4 }
        }
        check_bindings::<Renumbered>(&["transpose.wgsl"]);
    }
}
