//! `WeightStore`: the tensors of a checkpoint, memory-mapped, under HF Llama names.
//!
//! Loaders (GGUF, safetensors directories) only *describe* tensors: file, byte range,
//! stored dtype and shape, and a row permutation if the format reorders rows. Nothing
//! is copied until a consumer asks for a tensor in the dtype it wants, and then it is
//! converted straight out of the mapping. Every entry's range was checked against its
//! file's length when the loader created it.

use crate::{ModelError, Result};
use memmap2::Mmap;
use npurt_graph::{DType, TensorFact};
use npurt_kernels::{quant, HostTensor};
use std::collections::BTreeMap;
use std::sync::Arc;

/// GGUF (llama.cpp's converter) stores q/k projection rows permuted so that RoPE can
/// rotate adjacent pairs; HF dim `d` of a head is GGUF row `2*(d % (hd/2)) + d / (hd/2)`.
/// Undoing it at load lets one rotate_half RoPE serve every format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnpermuteRope {
    pub head_dim: usize,
}

impl UnpermuteRope {
    /// Source row (in the file) of output row `r`.
    pub fn source_row(&self, r: usize) -> usize {
        let (head, d) = (r / self.head_dim, r % self.head_dim);
        let half = self.head_dim / 2;
        head * self.head_dim + 2 * (d % half) + d / half
    }
}

#[derive(Clone, Debug)]
pub struct WeightEntry {
    /// Stored dtype and row-major shape (`[rows, cols]` for matrices).
    pub fact: TensorFact,
    pub file: usize,
    pub offset: usize,
    pub len: usize,
    pub unpermute: Option<UnpermuteRope>,
}

#[derive(Default)]
pub struct WeightStore {
    files: Vec<Arc<Mmap>>,
    entries: BTreeMap<String, WeightEntry>,
}

impl WeightStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a mapped file; returns its index for `insert`.
    pub fn add_file(&mut self, map: Arc<Mmap>) -> usize {
        self.files.push(map);
        self.files.len() - 1
    }

    /// Registers a tensor. The loader must have checked that `offset + len` lies in the
    /// file and that `len` matches the fact; this re-checks both (cheap) so that no
    /// later read can go out of bounds.
    pub fn insert(&mut self, name: String, entry: WeightEntry, file_name: &str) -> Result<()> {
        let file_len = self.files.get(entry.file).map(|m| m.len()).unwrap_or(0);
        let end = entry.offset.checked_add(entry.len);
        if end.is_none_or(|e| e > file_len) {
            return Err(ModelError::Truncated {
                file: file_name.into(),
                what: format!("tensor `{name}`"),
                offset: entry.offset as u64,
                needed: entry.len as u64,
                len: file_len as u64,
            });
        }
        if entry.fact.bytes() != Some(entry.len) {
            return Err(ModelError::LyingHeader {
                file: file_name.into(),
                field: format!("tensor `{name}` size"),
                detail: format!("{} bytes for {}", entry.len, entry.fact),
            });
        }
        if let Some(u) = entry.unpermute {
            if entry.fact.rank() != 2
                || u.head_dim == 0
                || u.head_dim % 2 != 0
                || entry.fact.shape[0] % u.head_dim != 0
            {
                return Err(ModelError::ShapeMismatch {
                    tensor: name,
                    expected: vec![u.head_dim],
                    found: entry.fact.shape.clone(),
                });
            }
        }
        self.entries.insert(name, entry);
        Ok(())
    }

    /// Renames every tensor `prefix + name` to `name` (SigLIP checkpoints from
    /// `SiglipModel` or transformers 4 carry a `vision_model.` prefix).
    pub fn strip_prefix(&mut self, prefix: &str) {
        let names: Vec<String> = self
            .entries
            .keys()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect();
        for n in names {
            let e = self.entries.remove(&n).expect("listed above");
            self.entries.insert(n[prefix.len()..].to_string(), e);
        }
    }

    /// Replaces tensor `name` by an f32 copy zero-padded at the end of each dimension
    /// to `shape` (which must be at least as large in every dimension). The compiler
    /// pads a ViT's MLP width to whole 32-value blocks so INT8 block formats apply;
    /// zero rows and columns add nothing to any product, so the padding is exact.
    pub fn pad_f32(&mut self, name: &str, shape: &[usize]) -> Result<()> {
        let src = self.to_f32(name)?;
        let old = src.shape().to_vec();
        if old.len() != shape.len() || old.iter().zip(shape).any(|(o, n)| o > n) {
            return Err(ModelError::ShapeMismatch {
                tensor: name.into(),
                expected: shape.to_vec(),
                found: old,
            });
        }
        let vals = src.into_f32().expect("to_f32 gives f32");
        let (rows, cols) = match old.as_slice() {
            [n] => (1, *n),
            [r, c] => (*r, *c),
            _ => {
                return Err(ModelError::ShapeMismatch {
                    tensor: name.into(),
                    expected: shape.to_vec(),
                    found: old,
                })
            }
        };
        let new_cols = *shape.last().expect("rank checked");
        self.add_f32_in_memory(&[(name.to_string(), shape.to_vec())], |_, out| {
            out.fill(0.0);
            for r in 0..rows {
                out[r * new_cols..r * new_cols + cols]
                    .copy_from_slice(&vals[r * cols..(r + 1) * cols]);
            }
        })
    }

    /// A store of f32 tensors made in memory (seeded random weights of a real model's
    /// shapes, for benches): `fill` writes each tensor.
    pub fn synthetic_f32(
        shapes: &[(String, Vec<usize>)],
        fill: impl FnMut(&str, &mut [f32]),
    ) -> Result<WeightStore> {
        let mut store = WeightStore::new();
        store.add_f32_in_memory(shapes, fill)?;
        Ok(store)
    }

    /// Registers f32 tensors held in one anonymous mapping, `fill` writing each; a
    /// name already in the store now refers to the new tensor.
    fn add_f32_in_memory(
        &mut self,
        shapes: &[(String, Vec<usize>)],
        mut fill: impl FnMut(&str, &mut [f32]),
    ) -> Result<()> {
        let elems: Vec<usize> = shapes.iter().map(|(_, s)| s.iter().product()).collect();
        let total = elems.iter().sum::<usize>() * 4;
        let io = |e| ModelError::Io {
            path: "<in-memory weights>".into(),
            source: e,
        };
        let mut map = memmap2::MmapMut::map_anon(total.max(1)).map_err(io)?;
        let mut offset = 0;
        let mut at = Vec::with_capacity(shapes.len());
        for ((name, _), n) in shapes.iter().zip(&elems) {
            let bytes = &mut map[offset..offset + n * 4];
            let vals: &mut [f32] = bytemuck::cast_slice_mut(bytes);
            fill(name, vals);
            at.push(offset);
            offset += n * 4;
        }
        let file = self.add_file(Arc::new(map.make_read_only().map_err(io)?));
        for (((name, shape), n), offset) in shapes.iter().zip(&elems).zip(at) {
            let entry = WeightEntry {
                fact: TensorFact::f32(shape.clone()),
                file,
                offset,
                len: n * 4,
                unpermute: None,
            };
            self.insert(name.clone(), entry, "<in-memory weights>")?;
        }
        Ok(())
    }

    /// Every tensor's stored dtype by name (what the quantize pass imports losslessly).
    pub fn stored_dtypes(&self) -> std::collections::HashMap<String, DType> {
        self.entries
            .iter()
            .map(|(n, e)| (n.clone(), e.fact.dtype))
            .collect()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn entry(&self, name: &str) -> Result<&WeightEntry> {
        self.entries
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor(name.into()))
    }

    pub fn fact(&self, name: &str) -> Result<&TensorFact> {
        Ok(&self.entry(name)?.fact)
    }

    /// The stored bytes exactly as in the file (row permutation not applied).
    pub fn raw(&self, name: &str) -> Result<&[u8]> {
        let e = self.entry(name)?;
        Ok(&self.files[e.file][e.offset..e.offset + e.len])
    }

    /// Checks a tensor's shape against what the config implies.
    pub fn expect_shape(&self, name: &str, shape: &[usize]) -> Result<()> {
        let f = self.fact(name)?;
        if f.shape != shape {
            return Err(ModelError::ShapeMismatch {
                tensor: name.into(),
                expected: shape.to_vec(),
                found: f.shape.clone(),
            });
        }
        Ok(())
    }

    /// Dequantizes/converts a tensor to f32 (applying the row permutation), straight
    /// from the mapping.
    pub fn to_f32(&self, name: &str) -> Result<HostTensor> {
        let e = self.entry(name)?;
        let raw = self.raw(name)?;
        let n = e.fact.elems().expect("validated at insert");
        // An empty tensor's other dimensions are unchecked (`[0, 2^63]` has 0 bytes,
        // which is all insert can check): it has no rows to size or permute.
        if n == 0 {
            return Ok(HostTensor::f32(e.fact.shape.clone(), Vec::new()));
        }
        let mut out = vec![0f32; n];
        let row_len = e.fact.last_dim();
        let ok = match e.unpermute {
            None => quant::dequantize(e.fact.dtype, raw, &mut out),
            // A row of whole blocks (`None` otherwise: the dtype's error below).
            Some(u) => e
                .fact
                .dtype
                .storage_bytes(row_len)
                .is_some_and(|row_bytes| {
                    out.chunks_exact_mut(row_len).enumerate().all(|(r, dst)| {
                        let s = u.source_row(r) * row_bytes;
                        quant::dequantize(e.fact.dtype, &raw[s..s + row_bytes], dst)
                    })
                }),
        };
        if !ok {
            return Err(ModelError::UnsupportedDType {
                tensor: name.into(),
                dtype: e.fact.dtype.to_string(),
            });
        }
        Ok(HostTensor::f32(e.fact.shape.clone(), out))
    }

    /// Stored bytes of one checkpoint tensor with the row permutation applied.
    fn rows_in_order(&self, name: &str) -> Result<Vec<u8>> {
        let e = self.entry(name)?;
        let raw = self.raw(name)?;
        let Some(u) = e.unpermute else {
            return Ok(raw.to_vec());
        };
        let row_bytes = e
            .fact
            .dtype
            .storage_bytes(e.fact.last_dim())
            .ok_or_else(|| ModelError::UnsupportedDType {
                tensor: name.into(),
                dtype: e.fact.dtype.to_string(),
            })?;
        let mut out = Vec::with_capacity(raw.len());
        for r in 0..e.fact.shape[0] {
            let s = u.source_row(r) * row_bytes;
            out.extend_from_slice(&raw[s..s + row_bytes]);
        }
        Ok(out)
    }

    /// The tensor a compiled graph's weight node wants: the rows of `parts` (or of
    /// `name` alone) concatenated, in `fact.dtype`. Parts already stored in that block
    /// format are copied (lossless import: no f32 copy is made); others go through f32
    /// and `quantize` (round to nearest).
    pub fn materialize(
        &self,
        name: &str,
        parts: &[String],
        fact: &TensorFact,
    ) -> Result<HostTensor> {
        let single = [name.to_string()];
        let parts = if parts.is_empty() { &single[..] } else { parts };
        let target = fact.dtype;
        let mut rows = 0;
        // Rows may be reshaped (a conv weight `[D, C, p, p]` is read as `[D, C*p*p]`):
        // what must agree is the element count of a row.
        let row_elems = |s: &[usize]| s.iter().skip(1).product::<usize>();
        for p in parts {
            let f = self.fact(p)?;
            if f.rank() == 0 || row_elems(&f.shape) != row_elems(&fact.shape) {
                return Err(ModelError::ShapeMismatch {
                    tensor: p.clone(),
                    expected: fact.shape[1..].to_vec(),
                    found: f.shape.clone(),
                });
            }
            rows += f.shape.first().copied().unwrap_or(1);
        }
        if fact.shape.first() != Some(&rows) {
            return Err(ModelError::ShapeMismatch {
                tensor: name.into(),
                expected: fact.shape.clone(),
                found: vec![rows],
            });
        }
        let unsupported = || ModelError::UnsupportedDType {
            tensor: name.into(),
            dtype: target.to_string(),
        };
        if target == DType::F32 {
            let mut v = Vec::with_capacity(fact.elems().unwrap_or(0));
            for p in parts {
                v.extend(self.to_f32(p)?.into_f32().expect("to_f32 gives f32"));
            }
            return Ok(HostTensor::f32(fact.shape.clone(), v));
        }
        let lossless = target != DType::Q8Channel
            && parts.iter().all(|p| {
                self.fact(p)
                    .map(|f| f.dtype == target && f.shape[1..] == fact.shape[1..])
                    .unwrap_or(false)
            });
        let bytes = if lossless {
            let mut b = Vec::with_capacity(fact.bytes().unwrap_or(0));
            for p in parts {
                b.extend(self.rows_in_order(p)?);
            }
            b
        } else {
            let mut v = Vec::with_capacity(fact.elems().unwrap_or(0));
            for p in parts {
                v.extend(self.to_f32(p)?.into_f32().expect("to_f32 gives f32"));
            }
            quant::quantize(target, &v, fact.last_dim()).ok_or_else(unsupported)?
        };
        HostTensor::bytes(fact.clone(), bytes).ok_or_else(unsupported)
    }

    /// Total stored bytes per dtype (for `inspect` and load logs).
    pub fn bytes_by_dtype(&self) -> BTreeMap<DType, usize> {
        let mut m = BTreeMap::new();
        for e in self.entries.values() {
            *m.entry(e.fact.dtype).or_insert(0) += e.len;
        }
        m
    }
}
