//! Streaming model-file writers: a header whose offsets are computed up front, then
//! each tensor's bytes in order, checked against the size the header promised. A model
//! larger than memory is written one tensor (or one piece of one) at a time.
//!
//! [`TensorStream`] is the part both formats share: [`start_safetensors`] and
//! `gguf::start_gguf` write their header and return one.

use serde_json::{json, Value};
use std::io::{self, Write};

/// A model file being written: its header is on disk, the tensors' data follows in the
/// header's order, each of the size the header gives it and followed by zeros up to
/// the format's alignment.
pub struct TensorStream<W: Write> {
    out: W,
    sections: Vec<(String, u64)>,
    alignment: u64,
    next: usize,
    written: u64,
}

impl<W: Write> TensorStream<W> {
    pub(crate) fn new(out: W, sections: Vec<(String, u64)>, alignment: u64) -> Self {
        TensorStream {
            out,
            sections,
            alignment,
            next: 0,
            written: 0,
        }
    }

    /// Name of the tensor [`TensorStream::tensor`] writes next, if any is left.
    pub fn next_name(&self) -> Option<&str> {
        self.sections.get(self.next).map(|(n, _)| n.as_str())
    }

    /// Writes the next tensor's data: `write` must hand exactly its size to the sink
    /// it is given, in any number of pieces.
    pub fn tensor(
        &mut self,
        write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        let Some((name, size)) = self.sections.get(self.next) else {
            return Err(invalid_input("more tensors than the header lists".into()));
        };
        let mut counted = Counted {
            inner: &mut self.out,
            n: 0,
        };
        write(&mut counted)?;
        if counted.n != *size {
            let why = format!(
                "tensor `{name}`: {} bytes written, the header says {size}",
                counted.n
            );
            return Err(io::Error::new(io::ErrorKind::InvalidData, why));
        }
        let end = self.written + size;
        let padded = end.next_multiple_of(self.alignment);
        self.out.write_all(&vec![0u8; (padded - end) as usize])?;
        self.written = padded;
        self.next += 1;
        Ok(())
    }

    /// Checks that every tensor was written and flushes; returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        if let Some(name) = self.next_name() {
            return Err(invalid_input(format!(
                "tensor `{name}` and those after it were never written"
            )));
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

pub(crate) fn invalid_input(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, why)
}

/// A sink that counts what passes through it (to check a tensor's size).
struct Counted<'a, W: Write> {
    inner: &'a mut W,
    n: u64,
}

impl<W: Write> Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The start of a safetensors file: the u64 header length, then the JSON header padded
/// with spaces to an 8-byte boundary (as the format's reference writer does).
pub fn safetensors_header(header: &Value) -> Vec<u8> {
    let mut h = header.to_string().into_bytes();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend(h);
    b
}

/// One tensor a safetensors header lists: name, dtype name (`F32`, `F16`), shape, bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct SafetensorsEntry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub bytes: u64,
}

/// Starts a safetensors file: writes the header (the tensors back to back in the order
/// of `entries`) and returns the stream their data goes through.
pub fn start_safetensors<W: Write>(
    mut out: W,
    entries: &[SafetensorsEntry],
) -> io::Result<TensorStream<W>> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    for e in entries {
        header.insert(
            e.name.clone(),
            json!({"dtype": e.dtype, "shape": e.shape, "data_offsets": [offset, offset + e.bytes]}),
        );
        offset += e.bytes;
    }
    out.write_all(&safetensors_header(&Value::Object(header)))?;
    let sizes = entries.iter().map(|e| (e.name.clone(), e.bytes)).collect();
    Ok(TensorStream::new(out, sizes, 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hf_dir::parse_safetensors;

    #[test]
    fn streamed_safetensors_parse_and_sizes_are_checked() {
        let entries = [
            SafetensorsEntry {
                name: "a".into(),
                dtype: "F32".into(),
                shape: vec![2],
                bytes: 8,
            },
            SafetensorsEntry {
                name: "b".into(),
                dtype: "F16".into(),
                shape: vec![3],
                bytes: 6,
            },
        ];
        let mut w = start_safetensors(Vec::new(), &entries).unwrap();
        w.tensor(|o| o.write_all(&[1; 8])).unwrap();
        w.tensor(|o| o.write_all(&[2; 2]).and_then(|_| o.write_all(&[3; 4])))
            .unwrap();
        let bytes = w.finish().unwrap();
        let t = parse_safetensors(&bytes, "x").unwrap();
        assert_eq!((t[1].name.as_str(), t[1].len), ("b", 6));
        assert_eq!(&bytes[t[1].offset..t[1].offset + 6], &[2, 2, 3, 3, 3, 3]);

        let mut w = start_safetensors(Vec::new(), &entries).unwrap();
        assert!(w.tensor(|o| o.write_all(&[1; 7])).is_err(), "short tensor");
        let w = start_safetensors(Vec::new(), &entries).unwrap();
        assert!(w.finish().is_err(), "unwritten tensors");
    }
}
