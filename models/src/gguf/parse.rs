//! Parsing: a bounds-checked cursor over the file's bytes and the parser that reads
//! the header, the metadata and the tensor infos, checking every count, length and
//! offset against the bytes that are really there before it trusts them.

use super::value::{min_elem_size, scalar_size};
use super::{
    value_type, GgmlType, GgufArray, GgufFile, GgufTensorInfo, GgufValue, DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
};
use crate::{ModelError, Result};
use std::collections::{BTreeMap, HashSet};

/// Larger alignments are legal but no writer uses them; refusing them keeps padding
/// arithmetic far from overflow.
const MAX_ALIGNMENT: u64 = 1 << 16;
/// ggml tensors have at most 4 dimensions.
const MAX_DIMS: u32 = 4;
/// Real files nest arrays at most once or twice; the bound keeps a hostile file from
/// recursing the parser into a stack overflow.
const MAX_ARRAY_DEPTH: usize = 8;
/// Smallest possible encodings, used to bound counts by the bytes left in the file:
/// a tensor info is name length (8) + n_dims (4) + type (4) + offset (8); a KV pair is
/// key length (8) + value type (4) + at least one value byte.
const MIN_TENSOR_INFO_BYTES: u64 = 24;
const MIN_KV_BYTES: u64 = 13;

/// Parses and validates a whole GGUF file held in memory ([`GgufFile::parse`]).
pub(super) fn parse(bytes: &[u8], file_name: &str) -> Result<GgufFile> {
    Parser {
        r: Reader {
            buf: bytes,
            pos: 0,
            file: file_name,
        },
    }
    .file()
}

/// A bounds-checked little-endian cursor. Every read either returns bytes that exist or
/// a `Truncated` error saying what was being read.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    file: &'a str,
}

impl<'a> Reader<'a> {
    fn len(&self) -> u64 {
        self.buf.len() as u64
    }

    fn remaining(&self) -> u64 {
        self.buf.len().saturating_sub(self.pos) as u64
    }

    fn truncated(&self, what: String, needed: u64) -> ModelError {
        ModelError::Truncated {
            file: self.file.into(),
            what,
            offset: self.pos as u64,
            needed,
            len: self.len(),
        }
    }

    fn lying(&self, field: String, detail: String) -> ModelError {
        ModelError::LyingHeader {
            file: self.file.into(),
            field,
            detail,
        }
    }

    fn take(&mut self, n: usize, what: impl FnOnce() -> String) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n);
        match end.and_then(|end| self.buf.get(self.pos..end)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(self.truncated(what(), n as u64)),
        }
    }

    fn array<const N: usize>(&mut self, what: impl FnOnce() -> String) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Checks that `count` items of at least `min_size` bytes each could still be read,
    /// before anything is reserved for them. More than the whole file could hold is a
    /// lie; more than what is left is a truncation.
    fn check_count(
        &self,
        count: u64,
        min_size: u64,
        field: impl FnOnce() -> String,
    ) -> Result<usize> {
        let needed = count.checked_mul(min_size);
        match needed {
            Some(n) if n <= self.remaining() => Ok(usize::try_from(count).unwrap_or(usize::MAX)),
            Some(n) if n <= self.len() => Err(self.truncated(field(), n)),
            _ => {
                let detail = format!(
                    "{count} items of at least {min_size} bytes cannot fit in a {}-byte file",
                    self.len()
                );
                Err(self.lying(field(), detail))
            }
        }
    }

    /// A GGUF string: u64 length, then UTF-8 bytes.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(|| format!("length of {}", what()))?;
        let n = self.check_count(len, 1, || format!("length of {}", what()))?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| ModelError::BadFormat {
            file: self.file.into(),
            format: "GGUF",
            detail: format!("{} is not valid UTF-8", what()),
        })
    }
}

/// Copies a slice whose length the caller guarantees (from `chunks_exact`) into an array.
fn le<const N: usize>(c: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(c);
    a
}

struct Parser<'a> {
    r: Reader<'a>,
}

impl Parser<'_> {
    fn bad_format(&self, detail: String) -> ModelError {
        ModelError::BadFormat {
            file: self.r.file.into(),
            format: "GGUF",
            detail,
        }
    }

    fn file(mut self) -> Result<GgufFile> {
        let version = self.header()?;
        let tensor_count = self.r.u64(|| "tensor_count".into())?;
        let kv_count = self.r.u64(|| "kv_count".into())?;
        self.check_header_counts(tensor_count, kv_count)?;

        let metadata = self.metadata(kv_count)?;
        let alignment = self.alignment(&metadata)?;
        let mut tensors = self.tensor_infos(tensor_count)?;
        let data_offset = align_up(self.r.pos as u64, alignment).ok_or_else(|| {
            self.r
                .lying("data section offset".into(), "overflows".into())
        })?;
        self.place_tensors(&mut tensors, data_offset, alignment)?;
        Ok(GgufFile {
            file_name: self.r.file.into(),
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            file_len: self.r.len(),
        })
    }

    /// Magic and version; returns the version.
    fn header(&mut self) -> Result<u32> {
        if self.r.buf.len() < 8 {
            return Err(self.bad_format(format!(
                "file is only {} bytes, shorter than a GGUF header",
                self.r.buf.len()
            )));
        }
        let magic: [u8; 4] = self.r.array(|| "magic".into())?;
        if magic != GGUF_MAGIC {
            return Err(self.bad_format(format!("magic is {magic:02x?}, expected \"GGUF\"")));
        }
        let version = self.r.u32(|| "version".into())?;
        match version {
            2 | 3 => Ok(version),
            1 => Err(self.bad_format("GGUF v1 (32-bit counts) is not supported".into())),
            v if matches!(v.swap_bytes(), 2 | 3) => {
                Err(self.bad_format("big-endian GGUF is not supported".into()))
            }
            v => Err(self.bad_format(format!("unsupported GGUF version {v}"))),
        }
    }

    /// Each tensor info and KV pair takes a minimum number of bytes, so counts that the
    /// rest of the file could not possibly hold are lies, caught before any loop.
    fn check_header_counts(&self, tensor_count: u64, kv_count: u64) -> Result<()> {
        let remaining = self.r.remaining();
        let tensor_bytes = tensor_count
            .checked_mul(MIN_TENSOR_INFO_BYTES)
            .filter(|&n| n <= remaining);
        let Some(tensor_bytes) = tensor_bytes else {
            let detail = format!(
                "{tensor_count} tensor infos cannot fit in the {remaining} bytes after the header"
            );
            return Err(self.r.lying("tensor_count".into(), detail));
        };
        let kv_bytes = kv_count
            .checked_mul(MIN_KV_BYTES)
            .filter(|&n| n <= remaining - tensor_bytes);
        if kv_bytes.is_none() {
            let detail = format!("{kv_count} metadata entries (plus {tensor_count} tensor infos) cannot fit in the {remaining} bytes after the header");
            return Err(self.r.lying("kv_count".into(), detail));
        }
        Ok(())
    }

    fn metadata(&mut self, kv_count: u64) -> Result<BTreeMap<String, GgufValue>> {
        let mut metadata = BTreeMap::new();
        for i in 0..kv_count {
            let key = self.r.string(&|| format!("key of metadata entry #{i}"))?;
            let ty = self
                .r
                .u32(|| format!("value type of metadata key `{key}`"))?;
            let value = self.value(ty, &key)?;
            if metadata.contains_key(&key) {
                return Err(self.r.lying(key, "duplicate metadata key".into()));
            }
            metadata.insert(key, value);
        }
        Ok(metadata)
    }

    fn value(&mut self, ty: u32, key: &str) -> Result<GgufValue> {
        use value_type as t;
        let what = || format!("value of metadata key `{key}`");
        Ok(match ty {
            t::U8 => GgufValue::U8(u8::from_le_bytes(self.r.array(what)?)),
            t::I8 => GgufValue::I8(i8::from_le_bytes(self.r.array(what)?)),
            t::U16 => GgufValue::U16(u16::from_le_bytes(self.r.array(what)?)),
            t::I16 => GgufValue::I16(i16::from_le_bytes(self.r.array(what)?)),
            t::U32 => GgufValue::U32(u32::from_le_bytes(self.r.array(what)?)),
            t::I32 => GgufValue::I32(i32::from_le_bytes(self.r.array(what)?)),
            t::U64 => GgufValue::U64(u64::from_le_bytes(self.r.array(what)?)),
            t::I64 => GgufValue::I64(i64::from_le_bytes(self.r.array(what)?)),
            t::F32 => GgufValue::F32(f32::from_le_bytes(self.r.array(what)?)),
            t::F64 => GgufValue::F64(f64::from_le_bytes(self.r.array(what)?)),
            t::BOOL => GgufValue::Bool(self.r.array::<1>(what)?[0] != 0),
            t::STRING => GgufValue::String(self.r.string(&what)?),
            t::ARRAY => GgufValue::Array(self.array_value(key, 1)?),
            other => {
                return Err(self.r.lying(
                    format!("metadata key `{key}`"),
                    format!("unknown value type {other}"),
                ))
            }
        })
    }

    /// An array: element type, u64 count, elements. `depth` counts nesting levels.
    fn array_value(&mut self, key: &str, depth: usize) -> Result<GgufArray> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(self.r.lying(
                format!("metadata key `{key}`"),
                format!("arrays nested more than {MAX_ARRAY_DEPTH} deep"),
            ));
        }
        let elem = self
            .r
            .u32(|| format!("array element type of metadata key `{key}`"))?;
        let count = self
            .r
            .u64(|| format!("array length of metadata key `{key}`"))?;
        let Some(min) = min_elem_size(elem) else {
            return Err(self.r.lying(
                format!("metadata key `{key}`"),
                format!("unknown array element type {elem}"),
            ));
        };
        let n = self.r.check_count(count, min, || {
            format!("array length of metadata key `{key}`")
        })?;
        if let Some(size) = scalar_size(elem) {
            // `check_count` proved n * size <= remaining, so this cannot overflow.
            let raw = self
                .r
                .take(n * size, || format!("array of metadata key `{key}`"))?;
            return Ok(scalar_array(elem, raw));
        }
        if elem == value_type::STRING {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(
                    self.r
                        .string(&|| format!("element #{i} of metadata key `{key}`"))?,
                );
            }
            return Ok(GgufArray::String(v));
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.array_value(key, depth + 1)?);
        }
        Ok(GgufArray::Array(v))
    }

    fn alignment(&self, metadata: &BTreeMap<String, GgufValue>) -> Result<u64> {
        let Some(v) = metadata.get("general.alignment") else {
            return Ok(DEFAULT_ALIGNMENT);
        };
        match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= MAX_ALIGNMENT => Ok(a),
            _ => Err(self.r.lying(
                "general.alignment".into(),
                format!("{v:?} is not a power of two in 1..={MAX_ALIGNMENT}"),
            )),
        }
    }

    fn tensor_infos(&mut self, tensor_count: u64) -> Result<Vec<GgufTensorInfo>> {
        // `check_header_counts` bounded tensor_count by the file size.
        let mut tensors = Vec::with_capacity(usize::try_from(tensor_count).unwrap_or(0));
        let mut names = HashSet::new();
        for i in 0..tensor_count {
            let t = self.tensor_info(i)?;
            if !names.insert(t.name.clone()) {
                return Err(self.r.lying(
                    format!("tensor `{}`", t.name),
                    "duplicate tensor name".into(),
                ));
            }
            tensors.push(t);
        }
        Ok(tensors)
    }

    fn tensor_info(&mut self, i: u64) -> Result<GgufTensorInfo> {
        let name = self.r.string(&|| format!("name of tensor #{i}"))?;
        let n_dims = self.r.u32(|| format!("n_dims of tensor `{name}`"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(self.r.lying(
                format!("tensor `{name}` n_dims"),
                format!("{n_dims} is outside 1..={MAX_DIMS}"),
            ));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            let x = self.r.u64(|| format!("dimension {d} of tensor `{name}`"))?;
            if x == 0 {
                return Err(self.r.lying(
                    format!("tensor `{name}` shape"),
                    format!("dimension {d} is 0"),
                ));
            }
            ne.push(x);
        }
        let ggml_type = GgmlType(self.r.u32(|| format!("type of tensor `{name}`"))?);
        let offset = self.r.u64(|| format!("offset of tensor `{name}`"))?;
        let size = self.tensor_size(&name, ggml_type, &ne)?;
        Ok(GgufTensorInfo {
            name,
            ne,
            ggml_type,
            offset,
            file_offset: 0,
            size,
        })
    }

    /// Bytes of a tensor's data: whole blocks along `ne[0]`, checked for overflow.
    fn tensor_size(&self, name: &str, ggml_type: GgmlType, ne: &[u64]) -> Result<u64> {
        let Some((block_elems, block_bytes)) = ggml_type.block() else {
            return Err(ModelError::UnsupportedDType {
                tensor: name.into(),
                dtype: ggml_type.to_string(),
            });
        };
        let row = ne.first().copied().unwrap_or(1);
        if row % block_elems != 0 {
            let detail = format!(
                "row length {row} is not a multiple of the {ggml_type} block size {block_elems}"
            );
            return Err(self.r.lying(format!("tensor `{name}` shape"), detail));
        }
        let elems = ne.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        elems
            .and_then(|e| (e / block_elems).checked_mul(block_bytes))
            .ok_or_else(|| {
                self.r.lying(
                    format!("tensor `{name}` shape"),
                    format!("{ne:?} overflows"),
                )
            })
    }

    /// Resolves each tensor's absolute range and checks it: aligned, inside the file,
    /// and not overlapping another tensor.
    fn place_tensors(
        &self,
        tensors: &mut [GgufTensorInfo],
        data_offset: u64,
        alignment: u64,
    ) -> Result<()> {
        let len = self.r.len();
        for t in tensors.iter_mut() {
            if t.offset % alignment != 0 {
                return Err(self.r.lying(
                    format!("tensor `{}` offset", t.name),
                    format!(
                        "{} is not a multiple of the alignment {alignment}",
                        t.offset
                    ),
                ));
            }
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.size));
            match (start, end) {
                (Some(start), Some(end)) if end <= len => t.file_offset = start,
                _ => {
                    let what = format!("data of tensor `{}`", t.name);
                    let offset = start.unwrap_or(u64::MAX);
                    return Err(ModelError::Truncated {
                        file: self.r.file.into(),
                        what,
                        offset,
                        needed: t.size,
                        len,
                    });
                }
            }
        }
        let mut order: Vec<&GgufTensorInfo> = tensors.iter().collect();
        order.sort_by_key(|t| t.offset);
        for pair in order.windows(2) {
            if let [a, b] = pair {
                // Both ends were checked against the file length above: no overflow.
                if a.offset + a.size > b.offset {
                    return Err(self.r.lying(
                        format!("tensor `{}` offset", b.name),
                        format!("overlaps tensor `{}`", a.name),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn scalar_array(elem: u32, raw: &[u8]) -> GgufArray {
    use value_type as t;
    macro_rules! conv {
        ($variant:ident, $ty:ty) => {
            GgufArray::$variant(
                raw.chunks_exact(std::mem::size_of::<$ty>())
                    .map(|c| <$ty>::from_le_bytes(le(c)))
                    .collect(),
            )
        };
    }
    match elem {
        t::U8 => GgufArray::U8(raw.to_vec()),
        t::I8 => conv!(I8, i8),
        t::U16 => conv!(U16, u16),
        t::I16 => conv!(I16, i16),
        t::U32 => conv!(U32, u32),
        t::I32 => conv!(I32, i32),
        t::U64 => conv!(U64, u64),
        t::I64 => conv!(I64, i64),
        t::F32 => conv!(F32, f32),
        t::F64 => conv!(F64, f64),
        // Only BOOL is left among the scalar types `scalar_size` admits.
        _ => GgufArray::Bool(raw.iter().map(|&b| b != 0).collect()),
    }
}

fn align_up(x: u64, alignment: u64) -> Option<u64> {
    Some(x.checked_add(alignment - 1)? / alignment * alignment)
}
