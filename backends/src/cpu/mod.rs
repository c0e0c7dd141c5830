//! CPU backend (stub, being written).
#[derive(Clone, Debug, Default)]
pub struct CpuOptions { pub threads: Option<usize> }
pub struct CpuBackend;
impl CpuBackend { pub fn new(_o: CpuOptions) -> Self { CpuBackend } }
