//! What a conformance case is: a graph of the op under test (alone, or in the chain a
//! backend may fuse) plus seeded data for its sources, what to compare after the run,
//! and the NMSE the op may differ from the oracle by.

use super::rng::{seed_for, Rng};
use npurt_graph::{Builder, DType, Graph, GraphError, NodeId, Op, TensorFact};
use npurt_kernels::{quant, HostTensor};

/// A value the runner reads back after the run and checks against the oracle.
#[derive(Clone, Debug, PartialEq)]
pub enum Compared {
    /// A graph output, by name.
    Output(String),
    /// The first rows of a graph output: a padded prefill chunk's valid rows. What a
    /// backend leaves in the padding rows is unspecified (the CPU computes only the
    /// valid rows, `npurt_graph::rows`).
    OutputRows(String, usize),
    /// The final contents of a state buffer (ops that write state, e.g. `kv_write`).
    State(NodeId),
}

impl Compared {
    /// The compared part of `values`, the whole value of `fact`.
    pub fn kept(&self, fact: &TensorFact, mut values: Vec<f32>) -> Vec<f32> {
        if let (Compared::OutputRows(_, rows), Some(&all)) = (self, fact.shape.first()) {
            values.truncate(rows * (values.len() / all.max(1)));
        }
        values
    }
}

/// One instantiated case: the graph and the host data of every source.
#[derive(Clone, Debug)]
pub struct CaseData {
    pub graph: Graph,
    /// Data for every source node: inputs and initial states as f32/i32, weights in the
    /// graph's dtype (quantized formats as their storage bytes).
    pub sources: Vec<(NodeId, HostTensor)>,
    pub compared: Vec<Compared>,
}

impl CaseData {
    pub fn source(&self, id: NodeId) -> Option<&HostTensor> {
        self.sources.iter().find(|(n, _)| *n == id).map(|(_, t)| t)
    }
}

type BuildFn = Box<dyn Fn(&mut CaseBuilder) -> Result<Compared, GraphError> + Send + Sync>;

/// A conformance case. Build it lazily ([`Case::instantiate`]) so listing the suite is
/// cheap and only the filtered cases allocate their data.
pub struct Case {
    /// The op kind under test ([`Op::kind`]).
    pub op: &'static str,
    /// Unique within the op; names the variant (dtype, layout, shape, ...).
    pub name: String,
    /// Seed of the case's input stream (derived from `op/name`, stored so a failure
    /// report reproduces exactly).
    pub seed: u64,
    /// Largest NMSE that passes. Every value is set where the case is declared, with
    /// the reason next to it.
    pub threshold: f64,
    build: BuildFn,
}

impl Case {
    pub fn new(
        op: &'static str,
        name: impl Into<String>,
        threshold: f64,
        build: impl Fn(&mut CaseBuilder) -> Result<Compared, GraphError> + Send + Sync + 'static,
    ) -> Self {
        let name = name.into();
        let seed = seed_for(&format!("{op}/{name}"));
        Case {
            op,
            name,
            seed,
            threshold,
            build: Box::new(build),
        }
    }

    /// `op/name`, the label the suite filter matches.
    pub fn label(&self) -> String {
        format!("{}/{}", self.op, self.name)
    }

    /// Builds the graph and draws the source data from the case's seed.
    pub fn instantiate(&self) -> Result<CaseData, GraphError> {
        let mut cb = CaseBuilder {
            b: Builder::new(),
            rng: Rng::new(self.seed),
            sources: Vec::new(),
        };
        let compared = (self.build)(&mut cb)?;
        let graph = cb.b.finish()?;
        Ok(CaseData {
            graph,
            sources: cb.sources,
            compared: vec![compared],
        })
    }
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case")
            .field("op", &self.op)
            .field("name", &self.name)
            .field("seed", &self.seed)
            .field("threshold", &self.threshold)
            .finish()
    }
}

/// Builds a case graph and records the data of each source as it is declared.
pub struct CaseBuilder {
    b: Builder,
    rng: Rng,
    sources: Vec<(NodeId, HostTensor)>,
}

impl CaseBuilder {
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    fn elems(shape: &[usize]) -> usize {
        shape.iter().product()
    }

    /// An f32 input drawn uniformly from `[lo, hi)`.
    pub fn input(
        &mut self,
        name: &str,
        shape: &[usize],
        lo: f32,
        hi: f32,
    ) -> Result<NodeId, GraphError> {
        let data = self.rng.uniform_vec(Self::elems(shape), lo, hi);
        self.input_data(name, HostTensor::f32(shape, data))
    }

    /// An input with exactly this data.
    pub fn input_data(&mut self, name: &str, t: HostTensor) -> Result<NodeId, GraphError> {
        let id = self.b.input(name, t.fact.clone())?;
        self.sources.push((id, t));
        Ok(id)
    }

    /// An `i32[1]` scalar input (positions, row counts, row indices).
    pub fn scalar(&mut self, name: &str, v: i32) -> Result<NodeId, GraphError> {
        self.input_data(name, HostTensor::i32([1], vec![v]))
    }

    /// A weight of `dtype` whose values are drawn uniformly from `[lo, hi)` and then
    /// stored in `dtype` (the oracle sees the dequantized values, so the rounding of
    /// the format itself is never counted against a backend).
    pub fn weight(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[usize],
        lo: f32,
        hi: f32,
    ) -> Result<NodeId, GraphError> {
        let values = self.rng.uniform_vec(Self::elems(shape), lo, hi);
        let fact = TensorFact::new(dtype, shape);
        let t = if dtype == DType::F32 {
            HostTensor::f32(shape, values)
        } else {
            let cols = fact.last_dim();
            let bad = || GraphError::IllFormed {
                node: name.into(),
                op: "weight",
                reason: format!("cannot store {fact} as {dtype}"),
            };
            let bytes = quant::quantize(dtype, &values, cols).ok_or_else(bad)?;
            HostTensor::bytes(fact.clone(), bytes).ok_or_else(bad)?
        };
        let id = self.b.weight(name, fact)?;
        self.sources.push((id, t));
        Ok(id)
    }

    /// An f32 state (e.g. a KV cache) with initial contents drawn from `[lo, hi)`.
    pub fn state(
        &mut self,
        name: &str,
        shape: &[usize],
        lo: f32,
        hi: f32,
    ) -> Result<NodeId, GraphError> {
        self.state_of(name, DType::F32, shape, lo, hi)
    }

    /// A state of `dtype` (f32; f16 holding uniform values rounded to f16; or an int8
    /// `Q8Head` cache holding them quantized per row and head).
    pub fn state_of(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[usize],
        lo: f32,
        hi: f32,
    ) -> Result<NodeId, GraphError> {
        let data = self.rng.uniform_vec(Self::elems(shape), lo, hi);
        let t = match dtype {
            DType::F16 => HostTensor::f16_from_f32(shape, &data),
            DType::Q8Head { .. } => {
                let fact = npurt_graph::TensorFact::new(dtype, shape);
                let bytes = npurt_kernels::quant::quantize(dtype, &data, fact.last_dim())
                    .ok_or_else(|| GraphError::IllFormed {
                        node: name.into(),
                        op: "state",
                        reason: format!("{fact} is not whole head blocks"),
                    })?;
                HostTensor::bytes(fact, bytes).expect("quantize sized the blocks")
            }
            _ => HostTensor::f32(shape, data),
        };
        let id = self.b.state(name, t.fact.clone())?;
        self.sources.push((id, t));
        Ok(id)
    }

    /// The node under test.
    pub fn op(&mut self, op: Op, inputs: &[NodeId]) -> Result<NodeId, GraphError> {
        let name = op.kind();
        self.b.op(name, op, inputs)
    }

    /// Marks `id` as the graph output `y` and the value compared.
    pub fn output(&mut self, id: NodeId) -> Compared {
        self.b.output("y", id);
        Compared::Output("y".into())
    }

    /// The output's first `rows` rows only ([`Compared::OutputRows`]).
    pub fn output_rows(&mut self, id: NodeId, rows: usize) -> Compared {
        self.b.output("y", id);
        Compared::OutputRows("y".into(), rows)
    }
}
