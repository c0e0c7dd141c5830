//! `WeightStore`: the tensors of a checkpoint, memory-mapped, under HF Llama names.
//!
//! Loaders (GGUF, safetensors directories) only *describe* tensors: file, byte range,
//! stored dtype and shape, and a row permutation if the format reorders rows. Nothing
//! is copied until a consumer asks for a tensor in the dtype it wants, and then it is
//! converted straight out of the mapping. Every entry's range was checked against its
//! file's length when the loader created it.
//!
//! A tensor can also be *generated*: an f32 tensor whose values a function writes when
//! a consumer asks for it (seeded random weights for speed runs, a zero-padded view of
//! a stored tensor). It has no bytes of its own until then, so a model of random
//! weights peaks at its prepared weights, not at an f32 copy of all of them.

use crate::{ModelError, Result};
use memmap2::Mmap;
use npurt_graph::{DType, SeededRng, TensorFact};
use npurt_kernels::{quant, HostData, HostTensor, MappedF32};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Dequantizes/converts the stored tensor `e` of `map` into `out` (its f32 elements),
/// applying the row permutation.
fn read_f32(map: &[u8], e: &WeightEntry, name: &str, out: &mut [f32]) -> Result<()> {
    let raw = &map[e.offset..e.offset + e.len];
    let row_len = e.fact.last_dim();
    let ok = match e.unpermute {
        None => quant::dequantize(e.fact.dtype, raw, out),
        // A row of whole blocks (`None` otherwise, e.g. an empty tensor whose other
        // dimension is absurd: the dtype's error below).
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
    Ok(())
}

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

/// Writes a generated tensor's values (its f32 elements, row-major).
pub type Generator = Arc<dyn Fn(&mut [f32]) -> Result<()> + Send + Sync>;

/// The `file` of a generated tensor's entry: it has no bytes in any mapping.
const GENERATED: usize = usize::MAX;

#[derive(Default)]
pub struct WeightStore {
    files: Vec<Arc<Mmap>>,
    entries: BTreeMap<String, WeightEntry>,
    generated: BTreeMap<String, Generator>,
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

    /// Registers (or replaces) an f32 tensor of `shape` whose values `generate` writes
    /// each time a consumer asks for it.
    pub fn insert_generated(&mut self, name: String, shape: Vec<usize>, generate: Generator) {
        let fact = TensorFact::f32(shape);
        let len = fact.bytes().unwrap_or(0);
        let entry = WeightEntry {
            fact,
            file: GENERATED,
            offset: 0,
            len,
            unpermute: None,
        };
        self.entries.insert(name.clone(), entry);
        self.generated.insert(name, generate);
    }

    /// Drops the resident pages of tensors `names` (whole pages inside each tensor's
    /// bytes) once a backend holds its own prepared copy: a loaded model then keeps
    /// each weight once, in the backend's layout, instead of the repacked copy plus the
    /// file's pages (which the OS counts in the process's RSS until memory runs short).
    /// Reading a released tensor again is correct, the pages fault back in from the
    /// file. Generated tensors have no pages. Best effort: a refused advice changes
    /// nothing.
    pub fn release<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        const PAGE: usize = 4096;
        for name in names {
            let Some(e) = self.entries.get(name) else {
                continue;
            };
            let Some(map) = self.files.get(e.file) else {
                continue;
            };
            let start = e.offset.next_multiple_of(PAGE);
            let end = (e.offset + e.len) / PAGE * PAGE;
            if end <= start {
                continue;
            }
            #[cfg(unix)]
            // SAFETY: a read-only mapping of a file this store never writes: dropping
            // its pages loses nothing, later reads fault them back in from the file.
            // The range lies inside the mapping (checked at `insert`).
            if let Err(err) = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            } {
                log::debug!("could not release the pages of `{name}`: {err}");
            }
            #[cfg(not(unix))]
            let _ = (map, start, end);
        }
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
                || !entry.fact.shape[0].is_multiple_of(u.head_dim)
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
            if let Some(g) = self.generated.remove(&n) {
                self.generated.insert(n[prefix.len()..].to_string(), g);
            }
        }
    }

    /// Replaces tensor `name` by an f32 copy zero-padded at the end of each dimension
    /// to `shape` (which must be at least as large in every dimension). The compiler
    /// pads a ViT's MLP width to whole 32-value blocks so INT8 block formats apply;
    /// zero rows and columns add nothing to any product, so the padding is exact.
    pub fn pad_f32(&mut self, name: &str, shape: &[usize]) -> Result<()> {
        let old = self.fact(name)?.shape.clone();
        let dims = match (old.as_slice(), shape) {
            ([c], [nc]) if c <= nc => Some((1, *c, *nc)),
            ([r, c], [nr, nc]) if r <= nr && c <= nc => Some((*r, *c, *nc)),
            _ => None,
        };
        let Some((rows, cols, new_cols)) = dims else {
            return Err(ModelError::ShapeMismatch {
                tensor: name.into(),
                expected: shape.to_vec(),
                found: old,
            });
        };
        // The padded tensor reads the original (from its mapping, or its generator)
        // when asked for, and replaces it under the same name.
        let orig_entry = self.entry(name)?.clone();
        let read_original: Generator = match self.generated.get(name) {
            Some(g) => g.clone(),
            None => {
                let map = self.files[orig_entry.file].clone();
                let tensor = name.to_string();
                Arc::new(move |out: &mut [f32]| read_f32(&map, &orig_entry, &tensor, out))
            }
        };
        let generate: Generator = Arc::new(move |out: &mut [f32]| {
            let mut vals = vec![0f32; rows * cols];
            read_original(&mut vals)?;
            out.fill(0.0);
            for r in 0..rows {
                out[r * new_cols..r * new_cols + cols]
                    .copy_from_slice(&vals[r * cols..(r + 1) * cols]);
            }
            Ok(())
        });
        self.insert_generated(name.to_string(), shape.to_vec(), generate);
        Ok(())
    }

    /// A store of generated f32 tensors (seeded random weights of a real model's
    /// shapes, for speed runs): `fill(name, values)` writes a tensor each time it is
    /// asked for, so it must give the same values every time (seed by name).
    pub fn synthetic_f32(
        shapes: &[(String, Vec<usize>)],
        fill: impl Fn(&str, &mut [f32]) + Send + Sync + 'static,
    ) -> Result<WeightStore> {
        let fill = Arc::new(fill);
        let mut store = WeightStore::new();
        for (name, shape) in shapes {
            let (fill, tensor) = (fill.clone(), name.clone());
            let generate: Generator = Arc::new(move |out: &mut [f32]| {
                fill(&tensor, out);
                Ok(())
            });
            store.insert_generated(name.clone(), shape.clone(), generate);
        }
        Ok(store)
    }

    /// The seeded stream a synthetic tensor's values come from: the seed and the tensor's
    /// name (FNV-1a), so a tensor is the same whenever and in whatever order it is
    /// generated, and whichever file format it is written to.
    pub fn tensor_rng(seed: u64, name: &str) -> SeededRng {
        let name_hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        SeededRng::new(seed ^ name_hash)
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

    /// The stored bytes exactly as in the file (row permutation not applied); a
    /// generated tensor has none (read it with [`WeightStore::to_f32`]).
    pub fn raw(&self, name: &str) -> Result<&[u8]> {
        let e = self.entry(name)?;
        match self.files.get(e.file) {
            Some(map) => Ok(&map[e.offset..e.offset + e.len]),
            None => Err(ModelError::UnsupportedDType {
                tensor: name.into(),
                dtype: "generated f32 (no stored bytes)".into(),
            }),
        }
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
        let n = e.fact.elems().expect("validated at insert");
        // An empty tensor's other dimensions are unchecked (`[0, 2^63]` has 0 bytes,
        // which is all insert can check): it has no rows to size or permute.
        if n == 0 {
            return Ok(HostTensor::f32(e.fact.shape.clone(), Vec::new()));
        }
        let mut out = vec![0f32; n];
        if let Some(generate) = self.generated.get(name) {
            generate(&mut out)?;
            return Ok(HostTensor::f32(e.fact.shape.clone(), out));
        }
        read_f32(&self.files[e.file], e, name, &mut out)?;
        Ok(HostTensor::f32(e.fact.shape.clone(), out))
    }

    /// A stored f32 tensor as it lies in its file's mapping, when it can be read in
    /// place: stored as f32, rows in order, 4-byte aligned (GGUF aligns every tensor;
    /// safetensors data usually is). Such a weight needs no repacking, so it is never
    /// copied.
    pub fn mapped_f32(&self, name: &str) -> Option<MappedF32> {
        let e = self.entries.get(name)?;
        if e.fact.dtype != DType::F32 || e.unpermute.is_some() || self.generated.contains_key(name)
        {
            return None;
        }
        let map: Arc<Mmap> = self.files.get(e.file)?.clone();
        MappedF32::new(map, e.offset, e.fact.elems()?)
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
            if let [part] = parts {
                if let Some(mapped) = self.mapped_f32(part) {
                    return Ok(HostTensor {
                        fact: fact.clone(),
                        data: HostData::MappedF32(mapped),
                    });
                }
            }
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// This process's resident file-backed pages (`RssFile` in /proc/self/status).
    fn rss_file_bytes() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
        let line = status
            .lines()
            .find(|l| l.starts_with("RssFile:"))
            .expect("RssFile line");
        let kb: usize = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("RssFile value");
        kb * 1024
    }

    /// `release` drops a file-backed tensor's pages from the process (RssFile falls by
    /// about its size), the bytes read back unchanged, and generated tensors still
    /// generate.
    #[test]
    fn release_drops_file_pages_and_keeps_the_bytes() {
        const MIB: usize = 1 << 20;
        let path = std::env::temp_dir().join(format!("npurt-release-{}.bin", std::process::id()));
        let bytes: Vec<u8> = (0..16 * MIB).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a private temp file nobody else writes while the test runs.
        let map = Arc::new(unsafe { Mmap::map(&file) }.unwrap());
        let mut store = WeightStore::new();
        let idx = store.add_file(map);
        let entry = WeightEntry {
            fact: TensorFact::f32(vec![4 * MIB]),
            file: idx,
            offset: 0,
            len: 16 * MIB,
            unpermute: None,
        };
        store.insert("w".into(), entry, "temp").unwrap();
        let sum = |s: &WeightStore| s.raw("w").unwrap().iter().map(|&b| b as u64).sum::<u64>();
        let want = sum(&store);
        let touched = rss_file_bytes();
        store.release(["w"]);
        let released = rss_file_bytes();
        assert!(
            touched >= released + 12 * MIB,
            "RssFile {touched} -> {released} bytes: the 16 MiB tensor's pages stayed"
        );
        assert_eq!(sum(&store), want, "released pages read back differently");
        std::fs::remove_file(&path).ok();

        let mem = WeightStore::synthetic_f32(&[("x".into(), vec![1024])], |_, v| {
            v.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32)
        })
        .unwrap();
        mem.release(["x"]);
        let x = mem.to_f32("x").unwrap().into_f32().unwrap();
        assert!(
            x.iter().enumerate().all(|(i, &v)| v == i as f32),
            "generated tensor changed"
        );
    }

    /// An f32 tensor stored aligned is handed out in place (its values read from the
    /// mapping, no copy); a misaligned one, a permuted one or one wanted in another
    /// format is converted as before, to the same values.
    #[test]
    fn aligned_f32_weights_are_read_in_place() {
        let path = std::env::temp_dir().join(format!("npurt-inplace-{}.bin", std::process::id()));
        let values: Vec<f32> = (0..64).map(|i| i as f32 * 0.5 - 3.0).collect();
        let mut bytes = vec![0u8; 8];
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        bytes.extend([0u8; 3]);
        // The same values again at an odd offset (8 + 256 + 3).
        let odd = bytes.len();
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a private temp file nobody else writes while the test runs.
        let map = Arc::new(unsafe { Mmap::map(&file) }.unwrap());
        let mut store = WeightStore::new();
        let idx = store.add_file(map);
        for (name, offset) in [("aligned", 8), ("odd", odd)] {
            let entry = WeightEntry {
                fact: TensorFact::f32(vec![64]),
                file: idx,
                offset,
                len: 256,
                unpermute: None,
            };
            store.insert(name.into(), entry, "temp").unwrap();
        }
        let fact = TensorFact::f32(vec![64]);
        let aligned = store.materialize("aligned", &[], &fact).unwrap();
        assert!(
            matches!(aligned.data, HostData::MappedF32(_)),
            "{:?}",
            aligned.data
        );
        assert_eq!(aligned.as_f32().unwrap(), &values[..]);
        let odd = store.materialize("odd", &[], &fact).unwrap();
        assert!(matches!(odd.data, HostData::F32(_)), "{:?}", odd.data);
        assert_eq!(odd.as_f32().unwrap(), &values[..]);
        let two = TensorFact::f32(vec![128]);
        let joined = store
            .materialize("both", &["aligned".into(), "odd".into()], &two)
            .unwrap();
        assert_eq!(joined.as_f32().unwrap()[64..], values[..]);
        std::fs::remove_file(&path).ok();
    }
}
