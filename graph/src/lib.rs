//! npurt-graph: the typed, static-shape IR every model is lowered to.
//!
//! - [`DType`], [`TensorFact`]: element types (quantized formats are dtypes) and shapes;
//! - [`Op`]: the op set, each with its shape/type rule ([`Op::output_fact`]);
//! - [`Epilogue`]: a matmul's fused output steps (bias, activation, residual, GLU);
//! - [`Graph`], [`Builder`]: construction with inference at every node;
//! - [`passes`]: the pass manager and rewrite passes;
//! - [`plan`]: the memory planner (value lifetimes, one arena per compiled graph);
//! - [`rows`]: which values of a prefill chunk need only its valid rows;
//! - [`rng`]: [`SeededRng`], the one seeded generator of every crate's tests, benches,
//!   synthetic weights and sampler.

mod builder;
mod dtype;
mod epilogue;
mod fact;
mod graph;
mod op;
pub mod passes;
pub mod plan;
mod precision;
pub mod rng;
pub mod rows;

pub use builder::Builder;
pub use dtype::DType;
pub use epilogue::{Activation, Epilogue, EpilogueError, Step};
pub use fact::TensorFact;
pub use graph::{Graph, Node, NodeId};
pub use op::{
    ActPrecision, AttentionMode, AttentionPrecision, InferError, MatMulOperands, Op, Prologue,
    RopeParams, RopeScaling, MAX_I8_ATTENTION_SEQ,
};
pub use precision::{KvCacheType, PrecisionPolicy, WeightFormat};
pub use rng::SeededRng;

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("node `{node}` ({op}) is ill-formed: {reason}")]
    IllFormed {
        node: String,
        op: &'static str,
        reason: String,
    },
    #[error("node `{node}` refers to {input}, which does not precede it")]
    DanglingInput { node: String, input: NodeId },
    #[error("two sources are named `{name}`")]
    DuplicateSource { name: String },
    #[error("pass `{pass}` left an invalid graph")]
    PassBroke {
        pass: &'static str,
        #[source]
        source: Box<GraphError>,
    },
    #[error("pipeline `{pipeline}` did not reach a fixpoint in {iterations} iterations")]
    NoFixpoint {
        pipeline: &'static str,
        iterations: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ill_formed_matmul_names_the_node() {
        let mut b = Builder::new();
        let x = b.input("x", TensorFact::f32([4, 8])).unwrap();
        let w = b.weight("w", TensorFact::f32([16, 7])).unwrap();
        b.push_scope("layers.3");
        let err = b.linear("q_proj", x, w).unwrap_err().to_string();
        assert!(
            err.contains("layers.3.q_proj") && err.contains("inner dims"),
            "{err}"
        );
    }

    #[test]
    fn dce_removes_dead_nodes_and_keeps_side_effects() {
        let mut b = Builder::new();
        let x = b.input("x", TensorFact::f32([2, 4])).unwrap();
        let pos = b.input("pos", TensorFact::i32([1])).unwrap();
        let cache = b.state("cache", TensorFact::f32([8, 4])).unwrap();
        let _dead = b.silu("dead", x).unwrap();
        let _kv = b.kv_write("kv", cache, x, pos).unwrap();
        let r = b.reshape("noop", x, &[2, 4]).unwrap();
        let y = b.softmax("y", r).unwrap();
        b.output("y", y);
        let mut g = b.finish().unwrap();
        let reports = passes::Pipeline::default_optimize().run(&mut g).unwrap();
        assert!(reports.iter().any(|r| r.changed));
        let kinds: Vec<_> = g.nodes.iter().map(|n| n.op.kind()).collect();
        assert_eq!(kinds, ["input", "input", "state", "kv_write", "softmax"]);
        assert_eq!(g.node(g.output("y").unwrap()).op.kind(), "softmax");
        assert_eq!(g.node(g.output("y").unwrap()).inputs, vec![NodeId(0)]);
    }

    #[test]
    fn quantized_shape_must_be_whole_blocks() {
        let mut b = Builder::new();
        assert!(b
            .weight("w", TensorFact::new(DType::Q4_1, [4, 33]))
            .is_err());
        assert!(b.weight("w", TensorFact::new(DType::Q4_1, [4, 64])).is_ok());
    }
}
