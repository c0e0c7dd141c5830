//! One vision stage on its stream: its buffers and scratch, and a run split into
//! load (bind or write the input), start (submit the graph) and finish (wait), so the
//! encode loop can keep two stages in flight and read back only what it keeps.

use super::VisionStageProgram;
use crate::model::invalid;
use crate::Result;
use npurt_backends::{Backend, Bindings, BufferUsage, Completion, DeviceBuffer, Scratch};
use npurt_kernels::HostTensor;
use std::sync::Arc;
use std::time::Instant;

/// Buffers and scratch of one stage (one encode at a time per encoder). A stage has one
/// run in flight at most; with two output slots its runs alternate between them, so
/// one run's outputs can be read by the next stage while the following run writes.
pub(super) struct StageRunner {
    scratch: Box<dyn Scratch>,
    /// The stage's own input buffer, made the first time an input has to be copied
    /// in (a previous stage's output on the same backend is bound instead).
    input: Option<Arc<dyn DeviceBuffer>>,
    /// What the next `start` binds to the input, and the host time `load` took (ms).
    loaded: Option<(Arc<dyn DeviceBuffer>, f64)>,
    /// Output buffers per slot, and the slot of the last started run.
    slots: Vec<Vec<Arc<dyn DeviceBuffer>>>,
    slot: usize,
}

/// A stage's input: host values, or the previous stage's output buffer on the backend
/// that produced it.
pub(super) enum StageInput {
    Host(HostTensor),
    Device {
        buffer: Arc<dyn DeviceBuffer>,
        backend: Arc<dyn Backend>,
    },
}

/// A stage run between start and finish.
pub(super) struct InFlight {
    handle: Box<dyn Completion>,
    /// Host time spent loading the input (ms).
    load_ms: f64,
    /// When the run was submitted (a synchronous submit has already run it).
    submitted: Instant,
}

impl StageRunner {
    /// Scratch from the stage's stream, `slots` sets of output buffers on the backends
    /// its executable writes them on.
    pub(super) fn new(st: &VisionStageProgram, slots: usize) -> Result<Self> {
        let x = &st.exec;
        let slots = (0..slots.max(1))
            .map(|_| {
                st.outputs
                    .iter()
                    .map(|(n, f)| x.alloc_output(n, f))
                    .collect::<std::result::Result<Vec<_>, _>>()
            })
            .collect::<std::result::Result<_, _>>()?;
        Ok(StageRunner {
            scratch: st.stream.new_scratch()?,
            input: None,
            loaded: None,
            slots,
            slot: 0,
        })
    }

    /// Makes `input` (the stage's whole static batch) the next run's input. A buffer
    /// the backend that reads it can bind, of the input's fact, is bound as it is: the
    /// caller guarantees its producer does not write it again before this stage
    /// finishes. Anything else is copied into the stage's own input buffer now, so
    /// the host values can be dropped before the run.
    pub(super) fn load(&mut self, st: &VisionStageProgram, input: StageInput) -> Result<()> {
        let t0 = Instant::now();
        let in_be = st
            .exec
            .source_backend(st.input)
            .ok_or_else(|| missing(st))?;
        let host = match input {
            StageInput::Device { buffer, backend }
                if (same_backend(&backend, in_be) || in_be.can_bind(buffer.as_ref()))
                    && buffer.fact() == &st.input_fact =>
            {
                self.loaded = Some((buffer, 0.0));
                return Ok(());
            }
            StageInput::Device { buffer, backend } => backend.read(buffer.as_ref())?,
            StageInput::Host(h) => h,
        };
        let buf = match &self.input {
            Some(b) => b.clone(),
            None => {
                let b = st
                    .exec
                    .alloc_source(st.input, &st.input_fact, BufferUsage::Activations)?;
                self.input.insert(b).clone()
            }
        };
        in_be.write(buf.as_ref(), &host)?;
        self.loaded = Some((buf, t0.elapsed().as_secs_f64() * 1e3));
        Ok(())
    }

    /// Starts the stage on its stream with the loaded input, writing the next slot.
    pub(super) fn start(&mut self, st: &VisionStageProgram) -> Result<InFlight> {
        let (input, load_ms) = self
            .loaded
            .take()
            .ok_or_else(|| invalid("vision", format!("{} stage started unloaded", st.name)))?;
        self.slot = (self.slot + 1) % self.slots.len();
        let bindings = Bindings {
            sources: vec![(st.input, input)],
            outputs: st
                .outputs
                .iter()
                .map(|(n, _)| n.clone())
                .zip(self.slots[self.slot].iter().cloned())
                .collect(),
        };
        let submitted = Instant::now();
        let handle = st.stream.submit(&bindings, self.scratch.as_mut())?;
        Ok(InFlight {
            handle,
            load_ms,
            submitted,
        })
    }

    /// Waits for the run; returns the stage's time (ms): loading the input and the run
    /// (as the stream measured it, else from submit to the end of the wait here).
    pub(super) fn finish(&mut self, st: &VisionStageProgram, run: InFlight) -> Result<f64> {
        let finished = run.handle.wait()?;
        let run_ms = finished
            .busy
            .unwrap_or_else(|| run.submitted.elapsed())
            .as_secs_f64()
            * 1e3;
        // For backends whose default submit only enqueues (see `Executable::submit`).
        for be in st.exec.backends() {
            be.synchronize()?;
        }
        Ok(run.load_ms + run_ms)
    }

    /// Output `i` of the finished run (the stage's value first, then taps) read back.
    pub(super) fn read(&self, st: &VisionStageProgram, i: usize) -> Result<HostTensor> {
        let ((name, _), buf) = st
            .outputs
            .iter()
            .zip(&self.slots[self.slot])
            .nth(i)
            .ok_or_else(|| invalid("vision", format!("{} stage has no output {i}", st.name)))?;
        let be = st.exec.output_backend(name).ok_or_else(|| missing(st))?;
        Ok(be.read(buf.as_ref())?)
    }

    /// The finished run's value where it lies, for the next stage's `load`.
    pub(super) fn value(&self, st: &VisionStageProgram) -> Result<StageInput> {
        let (name, _) = st
            .outputs
            .first()
            .ok_or_else(|| invalid("vision", format!("{} stage has no output", st.name)))?;
        let backend = st.exec.output_backend(name).ok_or_else(|| missing(st))?;
        Ok(StageInput::Device {
            buffer: self.slots[self.slot][0].clone(),
            backend: backend.clone(),
        })
    }
}

/// Two handles on one backend instance (compared by address: a vtable pointer can
/// differ between codegen units).
fn same_backend(a: &Arc<dyn Backend>, b: &Arc<dyn Backend>) -> bool {
    std::ptr::eq(Arc::as_ptr(a) as *const (), Arc::as_ptr(b) as *const ())
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
