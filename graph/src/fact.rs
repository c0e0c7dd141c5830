//! `TensorFact`: what the compiler knows about a value (dtype + static shape).

use crate::DType;
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorFact {
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl TensorFact {
    pub fn new(dtype: DType, shape: impl Into<Vec<usize>>) -> Self {
        TensorFact {
            dtype,
            shape: shape.into(),
        }
    }
    pub fn f32(shape: impl Into<Vec<usize>>) -> Self {
        Self::new(DType::F32, shape)
    }
    pub fn i32(shape: impl Into<Vec<usize>>) -> Self {
        Self::new(DType::I32, shape)
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    /// Number of elements, `None` on overflow.
    pub fn elems(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
    }
    /// Bytes of storage, `None` on overflow or a shape that is not whole blocks.
    pub fn bytes(&self) -> Option<usize> {
        if self.dtype == DType::Q8Channel {
            // i8 values, then an f32 scale per row.
            return self
                .elems()?
                .checked_add(self.rows().checked_mul(4)?)
                .filter(|_| self.rank() == 2);
        }
        self.dtype.storage_bytes(self.elems()?)
    }
    /// Size of the last dimension (1 for scalars).
    pub fn last_dim(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }
    /// Product of all dimensions but the last (the number of "rows").
    pub fn rows(&self) -> usize {
        let n = self.shape.len().saturating_sub(1);
        self.shape[..n].iter().product()
    }
}

impl fmt::Display for TensorFact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:?}", self.dtype, self.shape)
    }
}
