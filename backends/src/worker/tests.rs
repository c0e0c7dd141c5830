//! `Executable::submit`: the default (synchronous) handle on the CPU backend, and the
//! worker's asynchronous one, against `run`.

use crate::cpu::{CpuBackend, CpuOptions};
use crate::{Backend, Bindings, BufferUsage, Executable, WorkerExecutable};
use npurt_graph::{Builder, DType, Graph, TensorFact};
use npurt_kernels::HostTensor;

/// `y = a + b` over `[2, 3]` f32.
fn add_graph() -> Graph {
    let fact = TensorFact::new(DType::F32, [2, 3]);
    let mut b = Builder::new();
    let x = b.input("a", fact.clone()).unwrap();
    let y = b.input("b", fact).unwrap();
    let s = b.add("sum", x, y).unwrap();
    b.output("y", s);
    b.finish().unwrap()
}

/// Bindings of `add_graph` on `be`, inputs written from `a` and `b`.
fn bind(be: &dyn Backend, g: &Graph, a: &[f32], b: &[f32]) -> Bindings {
    let fact = TensorFact::new(DType::F32, [2, 3]);
    let mut sources = Vec::new();
    for (name, v) in [("a", a), ("b", b)] {
        let id = g.find_source("input", name).unwrap();
        let buf = be.alloc(&fact, BufferUsage::Activations).unwrap();
        be.write(buf.as_ref(), &HostTensor::f32(vec![2, 3], v.to_vec()))
            .unwrap();
        sources.push((id, buf));
    }
    let out = be.alloc(&fact, BufferUsage::Activations).unwrap();
    Bindings {
        sources,
        outputs: vec![("y".into(), out)],
    }
}

fn read_y(be: &dyn Backend, bindings: &Bindings) -> Vec<f32> {
    let t = be.read(bindings.output("y").unwrap().as_ref()).unwrap();
    t.as_f32().unwrap().to_vec()
}

const A: [f32; 6] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
const B: [f32; 6] = [0.5, -1.0, 2.0, 0.0, 10.0, -6.0];
const SUM: [f32; 6] = [1.5, 1.0, 5.0, 4.0, 15.0, 0.0];

#[test]
fn default_submit_runs_synchronously_on_the_cpu_backend() {
    let be = CpuBackend::new(CpuOptions {
        threads: Some(1),
        ..Default::default()
    });
    let g = add_graph();
    let exec = be.compile(&g, &[]).unwrap();
    let mut scratch = exec.new_scratch().unwrap();
    let bindings = bind(&be, &g, &A, &B);
    let done = exec.submit(&bindings, scratch.as_mut()).unwrap();
    assert!(done.is_complete(), "the default handle is finished at once");
    let finished = done.wait().unwrap();
    assert!(finished.busy.is_some(), "the default submit times its run");
    assert_eq!(read_y(&be, &bindings), SUM);
    // Errors before the work starts come from submit itself.
    let unbound = Bindings {
        sources: Vec::new(),
        outputs: bindings.outputs.clone(),
    };
    assert!(exec.submit(&unbound, scratch.as_mut()).is_err());
}

#[test]
fn worker_runs_submissions_on_its_thread_in_order() {
    let be = CpuBackend::new(CpuOptions {
        threads: Some(1),
        ..Default::default()
    });
    let g = add_graph();
    let worker = WorkerExecutable::spawn("test", be.compile(&g, &[]).unwrap()).unwrap();
    let mut scratch = worker.new_scratch().unwrap();
    let first = bind(&be, &g, &A, &B);
    let second = bind(&be, &g, &SUM, &SUM);
    // Two runs in flight on one scratch: the worker serialises them.
    let h1 = worker.submit(&first, scratch.as_mut()).unwrap();
    let h2 = worker.submit(&second, scratch.as_mut()).unwrap();
    assert!(h2.wait().unwrap().busy.is_some());
    assert!(h1.is_complete(), "runs finish in submission order");
    h1.wait().unwrap();
    assert_eq!(read_y(&be, &first), SUM);
    assert_eq!(read_y(&be, &second), SUM.map(|x| 2.0 * x));
    // `run` goes through the worker too; a dropped handle still finishes its run.
    worker.run(&first, scratch.as_mut()).unwrap();
    drop(worker.submit(&second, scratch.as_mut()).unwrap());
    assert_eq!(read_y(&be, &second), SUM.map(|x| 2.0 * x));
    // A scratch of the inner executable is refused, not misused.
    let mut foreign = worker.inner().new_scratch().unwrap();
    assert!(worker.submit(&first, foreign.as_mut()).is_err());
    // Execution errors reach `wait`.
    let unbound = Bindings {
        sources: Vec::new(),
        outputs: first.outputs.clone(),
    };
    let h = worker.submit(&unbound, scratch.as_mut()).unwrap();
    assert!(h.wait().is_err());
}
