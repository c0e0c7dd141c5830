//! Writing GGUF: the encoders of metadata values, and a streaming writer that puts the
//! header (metadata and tensor infos, offsets computed up front from the tensors'
//! shapes and types) on disk first and then takes the tensors' bytes one at a time, so
//! that a model much larger than memory can be written.

use super::{GgmlType, GgufArray, GgufValue, DEFAULT_ALIGNMENT, GGUF_MAGIC};
use crate::stream_write::{invalid_input, TensorStream};
use std::io::{self, Write};

/// What the header says about one tensor: its name, ggml dims (innermost first) and type.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub ne: Vec<u64>,
    pub ty: GgmlType,
}

impl TensorInfo {
    /// Bytes of the tensor's data, or `None` for a type of unknown size or a row that is
    /// not whole blocks.
    pub fn data_bytes(&self) -> Option<u64> {
        let (block_elems, block_bytes) = self.ty.block()?;
        let row = *self.ne.first().unwrap_or(&1);
        if !row.is_multiple_of(block_elems) {
            return None;
        }
        let elems = self.ne.iter().try_fold(1u64, |n, &d| n.checked_mul(d))?;
        (elems / block_elems).checked_mul(block_bytes)
    }
}

/// Starts a GGUF file: writes the header (version 3, `kvs` in order, the tensor infos
/// with offsets laid out back to back at the default alignment) and returns the stream
/// the tensors' data goes through, in the order of `infos`. Every tensor's size must be
/// known ([`TensorInfo::data_bytes`]), else `InvalidInput` naming it.
pub fn start_gguf<W: Write>(
    mut out: W,
    kvs: &[(String, GgufValue)],
    infos: &[TensorInfo],
) -> io::Result<TensorStream<W>> {
    let alignment = DEFAULT_ALIGNMENT;
    let mut head = Vec::new();
    head.extend_from_slice(&GGUF_MAGIC);
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(infos.len() as u64).to_le_bytes());
    head.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        put_str(&mut head, k);
        head.extend_from_slice(&v.type_id().to_le_bytes());
        put_value(&mut head, v);
    }
    let mut sizes = Vec::with_capacity(infos.len());
    let mut offset = 0u64;
    for info in infos {
        let size = info.data_bytes().ok_or_else(|| {
            invalid_input(format!(
                "tensor `{}`: {:?} of {} is not whole blocks",
                info.name, info.ne, info.ty
            ))
        })?;
        put_str(&mut head, &info.name);
        head.extend_from_slice(&(info.ne.len() as u32).to_le_bytes());
        for d in &info.ne {
            head.extend_from_slice(&d.to_le_bytes());
        }
        head.extend_from_slice(&info.ty.0.to_le_bytes());
        head.extend_from_slice(&offset.to_le_bytes());
        offset = (offset + size).next_multiple_of(alignment);
        sizes.push((info.name.clone(), size));
    }
    head.resize(head.len().next_multiple_of(alignment as usize), 0);
    out.write_all(&head)?;
    Ok(TensorStream::new(out, sizes, alignment))
}

pub(crate) fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

pub(crate) fn put_value(b: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => b.push(*x),
        GgufValue::I8(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U16(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U64(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => b.push(*x as u8),
        GgufValue::String(s) => put_str(b, s),
        GgufValue::Array(a) => put_array(b, a),
    }
}

fn put_array(b: &mut Vec<u8>, a: &GgufArray) {
    b.extend_from_slice(&a.elem_type_id().to_le_bytes());
    b.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! nums {
        ($v:expr) => {
            for x in $v {
                b.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        GgufArray::U8(v) => b.extend_from_slice(v),
        GgufArray::I8(v) => nums!(v),
        GgufArray::U16(v) => nums!(v),
        GgufArray::I16(v) => nums!(v),
        GgufArray::U32(v) => nums!(v),
        GgufArray::I32(v) => nums!(v),
        GgufArray::U64(v) => nums!(v),
        GgufArray::I64(v) => nums!(v),
        GgufArray::F32(v) => nums!(v),
        GgufArray::F64(v) => nums!(v),
        GgufArray::Bool(v) => b.extend(v.iter().map(|&x| x as u8)),
        GgufArray::String(v) => v.iter().for_each(|s| put_str(b, s)),
        GgufArray::Array(v) => v.iter().for_each(|a| put_array(b, a)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;

    #[test]
    fn streamed_file_parses_with_its_tensors_in_place() {
        let kvs = vec![("general.name".to_string(), GgufValue::String("x".into()))];
        let infos = vec![
            TensorInfo {
                name: "a".into(),
                ne: vec![3],
                ty: GgmlType::F32,
            },
            TensorInfo {
                name: "b".into(),
                ne: vec![2, 2],
                ty: GgmlType::F16,
            },
        ];
        let mut w = start_gguf(Vec::new(), &kvs, &infos).unwrap();
        w.tensor(|o| o.write_all(&[1u8; 12])).unwrap();
        // A tensor of the wrong size is refused, not written past.
        assert!(w.tensor(|o| o.write_all(&[2u8; 7])).is_err());

        let mut w = start_gguf(Vec::new(), &kvs, &infos).unwrap();
        w.tensor(|o| o.write_all(&[1u8; 12])).unwrap();
        w.tensor(|o| o.write_all(&[2u8; 4]).and_then(|_| o.write_all(&[3u8; 4])))
            .unwrap();
        let bytes = w.finish().unwrap();
        let f = GgufFile::parse(&bytes, "x.gguf").unwrap();
        assert_eq!(f.get_str("general.name"), Some("x"));
        let b = f.tensor("b").unwrap();
        assert_eq!((b.shape(), b.size), (vec![2, 2], 8));
        let at = b.file_offset as usize;
        assert_eq!(&bytes[at..at + 8], &[2, 2, 2, 2, 3, 3, 3, 3]);
    }

    #[test]
    fn unwritten_tensors_and_partial_blocks_are_errors() {
        let q = TensorInfo {
            name: "q".into(),
            ne: vec![33, 1],
            ty: GgmlType::Q4_0,
        };
        assert_eq!(q.data_bytes(), None);
        assert!(start_gguf(Vec::new(), &[], &[q]).is_err());
        let a = TensorInfo {
            name: "a".into(),
            ne: vec![1],
            ty: GgmlType::F32,
        };
        let w = start_gguf(Vec::new(), &[], &[a]).unwrap();
        assert!(w.finish().is_err());
    }
}
