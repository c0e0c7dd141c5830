//! HF model directory loader: `config.json` plus safetensors weights (`model.safetensors`,
//! or the shards listed in `model.safetensors.index.json`), each file memory-mapped.
//!
//! A safetensors file is a u64 header length, a JSON header mapping tensor names to
//! `{dtype, shape, data_offsets: [begin, end]}` (relative to the data section after the
//! header), then the data. Every length and offset is untrusted and checked here before
//! any tensor is registered.

use crate::source::{check_llama_shapes, io_error, map_file, read_json};
use crate::weights::WeightEntry;
use crate::{LlamaConfig, ModelError, Result, WeightStore};
use npurt_graph::{DType, TensorFact};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

/// The safetensors reference implementation's limit on header size.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One validated tensor of a safetensors file.
#[derive(Clone, Debug, PartialEq)]
pub struct SafetensorsTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub offset: usize,
    pub len: usize,
}

/// Loads an HF LLaMA-family directory; names are already HF names.
pub fn load(dir: &Path) -> Result<(LlamaConfig, WeightStore)> {
    let cfg = LlamaConfig::from_hf_json(&read_json(&dir.join("config.json"))?)?;
    let store = load_weights(dir)?;
    check_llama_shapes(&cfg, &store)?;
    Ok((cfg, store))
}

/// The weights of an HF directory (any architecture): `model.safetensors`, or the
/// shards `model.safetensors.index.json` lists, memory-mapped and checked.
pub fn load_weights(dir: &Path) -> Result<WeightStore> {
    let mut store = WeightStore::new();
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    // `exists`, not `is_file`: a weights path that is a FIFO or a directory is reported
    // as such by `add_safetensors`, not as missing.
    if single.exists() {
        add_safetensors(&mut store, &single)?;
    } else if index.exists() {
        add_shards(&mut store, dir, &index)?;
    } else {
        let why = std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "neither model.safetensors nor model.safetensors.index.json exists",
        );
        return Err(io_error(&single, why));
    }
    Ok(store)
}

/// Maps one safetensors file and registers all its tensors.
pub fn add_safetensors(store: &mut WeightStore, path: &Path) -> Result<()> {
    let map = map_file(path)?;
    let file = path.display().to_string();
    let tensors = parse_safetensors(&map, &file)?;
    let idx = store.add_file(map);
    for t in tensors {
        if store.contains(&t.name) {
            return Err(ModelError::LyingHeader {
                file,
                field: format!("tensor `{}`", t.name),
                detail: "defined in more than one file".into(),
            });
        }
        let entry = WeightEntry {
            fact: TensorFact::new(t.dtype, t.shape),
            file: idx,
            offset: t.offset,
            len: t.len,
            unpermute: None,
        };
        store.insert(t.name, entry, &file)?;
    }
    Ok(())
}

/// Registers every shard the index names, and checks that each tensor the index lists
/// was found.
fn add_shards(store: &mut WeightStore, dir: &Path, index_path: &Path) -> Result<()> {
    let index = read_json(index_path)?;
    let file = index_path.display().to_string();
    let Some(weight_map) = index.get("weight_map").and_then(Value::as_object) else {
        return Err(ModelError::BadFormat {
            file,
            format: "safetensors index",
            detail: "no `weight_map` object".into(),
        });
    };
    let mut shards = BTreeSet::new();
    for (tensor, shard) in weight_map {
        // Shards must sit next to the index: a name with a path in it could point the
        // loader at any file on the machine.
        let plain = shard
            .as_str()
            .filter(|s| Path::new(s).file_name().is_some_and(|n| n == *s));
        let Some(shard) = plain else {
            return Err(ModelError::LyingHeader {
                file,
                field: format!("weight_map.{tensor}"),
                detail: format!("{shard} is not a plain file name"),
            });
        };
        shards.insert(shard);
    }
    for shard in shards {
        add_safetensors(store, &dir.join(shard))?;
    }
    match weight_map.keys().find(|t| !store.contains(t)) {
        Some(missing) => Err(ModelError::MissingTensor(missing.clone())),
        None => Ok(()),
    }
}

/// Parses and validates a safetensors file's header against the file's bytes.
pub fn parse_safetensors(bytes: &[u8], file: &str) -> Result<Vec<SafetensorsTensor>> {
    let len = bytes.len() as u64;
    let lying = |field: &str, detail: String| ModelError::LyingHeader {
        file: file.into(),
        field: field.into(),
        detail,
    };
    let Some(prefix) = bytes.first_chunk::<8>() else {
        return Err(ModelError::Truncated {
            file: file.into(),
            what: "header length".into(),
            offset: 0,
            needed: 8,
            len,
        });
    };
    let header_len = u64::from_le_bytes(*prefix);
    if header_len > MAX_HEADER_BYTES {
        return Err(lying(
            "header length",
            format!("{header_len} bytes is more than the {MAX_HEADER_BYTES}-byte limit"),
        ));
    }
    let data_start = 8 + header_len; // cannot overflow: header_len <= 100 MB
    let Some(header) = bytes.get(8..data_start as usize) else {
        return Err(ModelError::Truncated {
            file: file.into(),
            what: "JSON header".into(),
            offset: 8,
            needed: header_len,
            len,
        });
    };
    let json: serde_json::Map<String, Value> =
        serde_json::from_slice(header).map_err(|e| ModelError::BadFormat {
            file: file.into(),
            format: "safetensors",
            detail: format!("header is not a JSON object: {e}"),
        })?;
    let data_len = len - data_start;
    let mut tensors = Vec::with_capacity(json.len());
    for (name, info) in &json {
        if name != "__metadata__" {
            tensors.push(tensor_entry(name, info, data_start, data_len, file)?);
        }
    }
    tensors.sort_by_key(|t| t.offset);
    for pair in tensors.windows(2) {
        if let [a, b] = pair {
            // Both ranges lie inside the file: no overflow.
            if a.offset + a.len > b.offset {
                return Err(lying(
                    &format!("tensor `{}` data_offsets", b.name),
                    format!("overlaps tensor `{}`", a.name),
                ));
            }
        }
    }
    Ok(tensors)
}

/// One header entry: `{dtype, shape, data_offsets}`, checked against the data section.
fn tensor_entry(
    name: &str,
    info: &Value,
    data_start: u64,
    data_len: u64,
    file: &str,
) -> Result<SafetensorsTensor> {
    let lying = |what: &str, detail: String| ModelError::LyingHeader {
        file: file.into(),
        field: format!("tensor `{name}` {what}"),
        detail,
    };
    let dtype_name = info
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| lying("dtype", "missing or not a string".into()))?;
    let dtype = match dtype_name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        // Integer tensors are no weights, but golden and auxiliary files hold them.
        "I32" => DType::I32,
        "I16" => DType::I16,
        "I8" => DType::I8,
        other => {
            return Err(ModelError::UnsupportedDType {
                tensor: name.into(),
                dtype: other.into(),
            })
        }
    };
    let shape: Option<Vec<usize>> = info
        .get("shape")
        .and_then(Value::as_array)
        .and_then(|dims| {
            dims.iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect()
        });
    let shape = shape.ok_or_else(|| {
        lying(
            "shape",
            "missing or not a list of non-negative integers".into(),
        )
    })?;
    let offsets = info
        .get("data_offsets")
        .and_then(Value::as_array)
        .map(|o| o.iter().map(Value::as_u64).collect::<Vec<_>>());
    let (begin, end) = match offsets.as_deref() {
        Some([Some(b), Some(e)]) if b <= e => (*b, *e),
        _ => {
            return Err(lying(
                "data_offsets",
                "not a pair [begin, end] of integers with begin <= end".into(),
            ))
        }
    };
    if end > data_len {
        let what = format!("tensor `{name}`");
        return Err(ModelError::Truncated {
            file: file.into(),
            what,
            offset: data_start.saturating_add(begin),
            needed: end - begin,
            len: data_start + data_len,
        });
    }
    let fact = TensorFact::new(dtype, shape);
    match fact.bytes() {
        Some(n) if n as u64 == end - begin => {}
        Some(n) => {
            return Err(lying(
                "data_offsets",
                format!("{} bytes, but {fact} needs {n}", end - begin),
            ))
        }
        None => return Err(lying("shape", format!("{fact} overflows"))),
    }
    // Inside the file, which is mapped: fits usize.
    Ok(SafetensorsTensor {
        name: name.into(),
        dtype,
        shape: fact.shape,
        offset: (data_start + begin) as usize,
        len: (end - begin) as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgmlType;
    use crate::testfiles::{
        pattern_bytes, pattern_value, safetensors_bytes, safetensors_f32, safetensors_raw,
        temp_path, write_json, TinyLlama,
    };
    use serde_json::json;

    #[test]
    fn tiny_dir_loads_with_exact_values() {
        let tiny = TinyLlama::default();
        let dir = temp_path("tiny_hf");
        tiny.write_hf_dir(&dir).unwrap();
        let (cfg, store) = load(&dir).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(
            (cfg.hidden_size, cfg.num_hidden_layers, cfg.head_dim),
            (32, 2, 16)
        );
        assert!(cfg.tie_word_embeddings && !store.contains("lm_head.weight"));
        let q = store
            .to_f32("model.layers.1.self_attn.q_proj.weight")
            .unwrap();
        assert_eq!(q.shape(), [32, 32]);
        let q = q.as_f32().unwrap();
        assert_eq!(
            q[5 * 32 + 7],
            pattern_value(GgmlType::F32, 5, 7),
            "safetensors rows are not permuted"
        );
    }

    #[test]
    fn f16_and_bf16_tensors_convert() {
        for (ty, name) in [(GgmlType::F16, "F16"), (GgmlType::BF16, "BF16")] {
            let bytes =
                safetensors_bytes(&[("x".into(), name, vec![2, 3], pattern_bytes(ty, 2, 3))]);
            let t = parse_safetensors(&bytes, "x.safetensors").unwrap();
            assert_eq!(t[0].shape, [2, 3]);
            assert_eq!(t[0].len, 12);
        }
    }

    #[test]
    fn sharded_dir_loads_and_refuses_paths_in_shard_names() {
        let tiny = TinyLlama::default();
        let dir = temp_path("tiny_hf_sharded");
        tiny.write_hf_dir(&dir).unwrap();
        std::fs::remove_file(dir.join("model.safetensors")).unwrap();
        let tensors = tiny.hf_tensors();
        let (a, b) = tensors.split_at(tensors.len() / 2);
        std::fs::write(
            dir.join("model-00001-of-00002.safetensors"),
            safetensors_f32(a),
        )
        .unwrap();
        std::fs::write(
            dir.join("model-00002-of-00002.safetensors"),
            safetensors_f32(b),
        )
        .unwrap();
        let mut weight_map = serde_json::Map::new();
        for (name, _) in a {
            weight_map.insert(name.clone(), json!("model-00001-of-00002.safetensors"));
        }
        for (name, _) in b {
            weight_map.insert(name.clone(), json!("model-00002-of-00002.safetensors"));
        }
        let index = dir.join("model.safetensors.index.json");
        write_json(
            &index,
            &json!({"metadata": {}, "weight_map": weight_map.clone()}),
        )
        .unwrap();
        let (_, store) = load(&dir).unwrap();
        assert_eq!(store.names().count(), tensors.len());

        weight_map.insert(
            "model.norm.weight".into(),
            json!("../model-00002-of-00002.safetensors"),
        );
        write_json(&index, &json!({"weight_map": weight_map})).unwrap();
        let err = load(&dir).err().expect("shard path refused");
        assert!(
            matches!(&err, ModelError::LyingHeader { field, .. } if field.contains("model.norm.weight")),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn lying_offsets_and_overlaps_name_the_tensor() {
        let header = json!({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}});
        let err = parse_safetensors(&safetensors_raw(&header, &[0; 16]), "x").unwrap_err();
        assert!(
            matches!(&err, ModelError::LyingHeader { field, .. } if field.contains("`a`")),
            "{err}"
        );

        let header = json!({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}});
        let err = parse_safetensors(&safetensors_raw(&header, &[0; 12]), "x").unwrap_err();
        assert!(err.to_string().contains("overlaps"), "{err}");

        let header = json!({"a": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}});
        let err = parse_safetensors(&safetensors_raw(&header, &[0; 8]), "x").unwrap_err();
        assert!(
            matches!(&err, ModelError::UnsupportedDType { tensor, dtype } if tensor == "a" && dtype == "I64"),
            "{err}"
        );

        let header = json!({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}});
        let err = parse_safetensors(&safetensors_raw(&header, &[0; 8]), "x").unwrap_err();
        assert!(
            matches!(&err, ModelError::Truncated { what, .. } if what.contains("`a`")),
            "{err}"
        );
    }
}
