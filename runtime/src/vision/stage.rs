//! One vision stage on its stream: its buffers and scratch, and a run split into
//! submit (write the input, start the graph) and finish (wait, read the outputs back),
//! so the encode loop can keep two stages in flight.

use super::VisionStageProgram;
use crate::model::invalid;
use crate::Result;
use npurt_backends::{Bindings, BufferUsage, Completion, DeviceBuffer, Scratch};
use npurt_kernels::HostTensor;
use std::sync::Arc;
use std::time::Instant;

/// Buffers and scratch of one stage (one encode at a time per encoder). A stage has one
/// run in flight at most: the next batch's input is written only after this batch's
/// outputs were read back to the host, and those host copies are the second buffer.
pub(super) struct StageRunner {
    scratch: Box<dyn Scratch>,
    input: Arc<dyn DeviceBuffer>,
    outputs: Vec<Arc<dyn DeviceBuffer>>,
}

/// A stage run between submit and finish.
pub(super) struct InFlight {
    handle: Box<dyn Completion>,
    /// Host time spent writing the input (ms).
    write_ms: f64,
    /// When the run was submitted (a synchronous submit has already run it).
    submitted: Instant,
}

impl StageRunner {
    /// Scratch from the stage's stream, buffers on the backends its executable reads
    /// and writes them on.
    pub(super) fn new(st: &VisionStageProgram) -> Result<Self> {
        let x = &st.exec;
        Ok(StageRunner {
            scratch: st.stream.new_scratch()?,
            input: x.alloc_source(st.input, &st.input_fact, BufferUsage::Activations)?,
            outputs: st
                .outputs
                .iter()
                .map(|(n, f)| x.alloc_output(n, f))
                .collect::<std::result::Result<_, _>>()?,
        })
    }

    /// Writes `input` (the stage's whole static batch) and starts the stage on its
    /// stream.
    pub(super) fn submit(
        &mut self,
        st: &VisionStageProgram,
        input: &HostTensor,
    ) -> Result<InFlight> {
        let t0 = Instant::now();
        let in_be = st
            .exec
            .source_backend(st.input)
            .ok_or_else(|| missing(st))?;
        in_be.write(self.input.as_ref(), input)?;
        let bindings = Bindings {
            sources: vec![(st.input, self.input.clone())],
            outputs: st
                .outputs
                .iter()
                .map(|(n, _)| n.clone())
                .zip(self.outputs.iter().cloned())
                .collect(),
        };
        let write_ms = t0.elapsed().as_secs_f64() * 1e3;
        let submitted = Instant::now();
        let handle = st.stream.submit(&bindings, self.scratch.as_mut())?;
        Ok(InFlight {
            handle,
            write_ms,
            submitted,
        })
    }

    /// Waits for the run and reads its outputs back (the stage's value first, then
    /// taps); also returns the stage's time (ms): writing the input, the run (as the
    /// stream measured it, else from submit to the end of the wait on this thread) and
    /// the reads.
    pub(super) fn finish(
        &mut self,
        st: &VisionStageProgram,
        run: InFlight,
    ) -> Result<(Vec<HostTensor>, f64)> {
        let finished = run.handle.wait()?;
        let run_ms = finished
            .busy
            .unwrap_or_else(|| run.submitted.elapsed())
            .as_secs_f64()
            * 1e3;
        let t0 = Instant::now();
        // For backends whose default submit only enqueues (see `Executable::submit`).
        for be in st.exec.backends() {
            be.synchronize()?;
        }
        let outs = st
            .outputs
            .iter()
            .zip(&self.outputs)
            .map(|((n, _), buf)| {
                let be = st.exec.output_backend(n).ok_or_else(|| missing(st))?;
                Ok(be.read(buf.as_ref())?)
            })
            .collect::<Result<Vec<_>>>()?;
        let ms = run.write_ms + run_ms + t0.elapsed().as_secs_f64() * 1e3;
        Ok((outs, ms))
    }
}

fn missing(st: &VisionStageProgram) -> crate::RuntimeError {
    invalid(
        "graph",
        format!("{} stage has no backend for its input/output", st.name),
    )
}

/// The rows of the first `valid` tiles of a stage output computed for `batch` tiles
/// (the padding tiles' rows are dropped).
pub(super) fn valid_rows(o: &HostTensor, batch: usize, valid: usize) -> Result<&[f32]> {
    let vals = o
        .as_f32()
        .ok_or_else(|| invalid("vision", "a stage output is not f32"))?;
    Ok(&vals[..vals.len() / batch * valid])
}
