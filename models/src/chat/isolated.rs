//! Rendering a chat template in a forked child with a capped data segment.
//!
//! A chat template is code that comes inside a model file. The renderer bounds its steps
//! and its output (`MAX_TEMPLATE_STEPS`, `MAX_TEMPLATE_OUTPUT_BYTES`), but not the size
//! of the strings it builds along the way: minijinja puts no limit on `~`, `+` or
//! `replace`, each of them one template step, so `{% set ns.a = ns.a ~ ns.a %}` in a
//! 40-step loop asks for 2^40 bytes (2 GB in 3 s from a 200-byte template, measured in
//! process). No step budget catches that, and an allocator cannot turn a refused
//! allocation into an error, only into an abort. So on Linux the render runs in a
//! forked child whose data segment may grow by at most [`MAX_TEMPLATE_MEMORY_BYTES`]
//! (`RLIMIT_DATA`): past it an allocation fails, the child aborts, and the caller gets
//! [`ModelError::TemplateLimit`] for memory. A child still running after
//! [`MAX_TEMPLATE_WALL`] is killed. The child writes nothing the caller reads but its
//! result, so a runaway template can neither take the caller's memory nor touch its
//! state, whatever route (strings, lists, recursion) it takes.
//!
//! The child runs only the render and leaves with `_exit`: no destructors, no atexit
//! handlers, no stdio flushing. glibc's fork keeps its allocator usable in the child;
//! the render takes no lock that another thread of the caller could hold. One known
//! exception: Rust's out-of-memory handler takes the process's backtrace lock before it
//! aborts, so if another thread of the caller was printing a panic's backtrace at the
//! moment of the fork, a child past its memory cap cannot finish aborting; it is then
//! killed at the wall limit, and the render fails with the time limit instead.
//!
//! Cost: one fork per render, which copies the caller's page tables. Measured here (a
//! small template): 2.7 ms per render with 100 MB of the caller's memory resident,
//! 8.1 ms with 400 MB, against a prefill of tens to hundreds of ms for the prompt it
//! renders.

use super::{MAX_TEMPLATE_OUTPUT_BYTES, OUTPUT_LIMIT, STEPS_LIMIT};
use crate::{ModelError, Result};
use std::time::{Duration, Instant};

/// Most bytes a render may add to its process's data segment (heap and private
/// mappings). A real template needs a few times its output (capped at 16 MiB); a
/// doubling one reaches this within a few hundred ms.
pub const MAX_TEMPLATE_MEMORY_BYTES: u64 = 128 << 20;
/// Longest a render may take (wall clock): a backstop behind the step budget, which
/// stops a looping template within about a second.
pub const MAX_TEMPLATE_WALL: Duration = Duration::from_secs(10);

const MEMORY_LIMIT: &str = "memory (bytes)";
const TIME_LIMIT: &str = "render time (ms)";

/// Runs `render` in a forked child under the limits above and returns its result.
pub(super) fn run(render: impl FnOnce() -> Result<String>) -> Result<String> {
    let data_now = vm_data_bytes()?;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_error("pipe"));
    }
    let (rd, wr) = (fds[0], fds[1]);
    // SAFETY: the child runs only `render` and `child_main`, which take no lock another
    // thread of this process could hold (see the module docs), and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = os_error("fork");
        // SAFETY: both descriptors are ours.
        unsafe {
            libc::close(rd);
            libc::close(wr);
        }
        return Err(e);
    }
    if pid == 0 {
        // SAFETY: the read end is the parent's.
        unsafe { libc::close(rd) };
        child_main(
            wr,
            data_now.saturating_add(MAX_TEMPLATE_MEMORY_BYTES),
            render,
        );
    }
    // SAFETY: the write end is the child's.
    unsafe { libc::close(wr) };
    let started = Instant::now();
    let (message, timed_out) = read_result(rd, started);
    // SAFETY: `rd` is ours, and `pid` our child, reaped here exactly once.
    let status = unsafe {
        libc::close(rd);
        if timed_out {
            libc::kill(pid, libc::SIGKILL);
        }
        let mut status = 0;
        while libc::waitpid(pid, &mut status, 0) < 0
            && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {}
        status
    };
    if timed_out {
        return Err(ModelError::TemplateLimit {
            limit: TIME_LIMIT,
            max: MAX_TEMPLATE_WALL.as_millis() as u64,
        });
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        if let Some(r) = decode(&message) {
            return r;
        }
    }
    if libc::WIFSIGNALED(status) {
        // An allocation past the cap aborts (SIGABRT); so does a stack overflow.
        return Err(ModelError::TemplateLimit {
            limit: MEMORY_LIMIT,
            max: MAX_TEMPLATE_MEMORY_BYTES,
        });
    }
    Err(ModelError::ChatTemplate(format!(
        "the render process ended with status {status} and no result"
    )))
}

/// The child: caps its data segment, renders, writes the encoded result, exits.
fn child_main(wr: libc::c_int, data_limit: u64, render: impl FnOnce() -> Result<String>) -> ! {
    // SAFETY: plain system calls on this process's own descriptors and limits.
    let limited = unsafe {
        // An abort message (allocation failure, panic) is not the caller's to see.
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        if null >= 0 {
            libc::dup2(null, 2);
        }
        // Keep no other descriptor: a pipe of a render another thread started holds
        // its reader back until every copy of its write end is closed, this child's
        // included. (Best effort: without close_range, Linux < 5.9, they stay open
        // until this child exits.)
        if wr > 3 {
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                (wr - 1) as libc::c_uint,
                0,
            );
        }
        libc::syscall(
            libc::SYS_close_range,
            (wr + 1) as libc::c_uint,
            libc::c_uint::MAX,
            0,
        );
        // An abort past the cap must not dump the process image to disk.
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_DATA, &mut lim) == 0 && {
            lim.rlim_cur = (data_limit as libc::rlim_t).min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_DATA, &lim) == 0
        }
    };
    let result = if limited {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(render))
            .unwrap_or_else(|_| Err(ModelError::ChatTemplate("the renderer panicked".into())))
    } else {
        Err(os_error("limiting the render's memory"))
    };
    let bytes = encode(&result);
    let mut done = 0;
    while done < bytes.len() {
        // SAFETY: writes from a live buffer to our pipe.
        let n = unsafe { libc::write(wr, bytes[done..].as_ptr().cast(), bytes.len() - done) };
        if n <= 0 {
            break;
        }
        done += n as usize;
    }
    // SAFETY: ends the child without running anything of the parent's.
    unsafe { libc::_exit(0) }
}

/// Reads the child's message until it closes the pipe or the wall limit passes
/// (`true` then). A message longer than any result can be is cut (and fails to
/// decode).
fn read_result(rd: libc::c_int, started: Instant) -> (Vec<u8>, bool) {
    let cap = MAX_TEMPLATE_OUTPUT_BYTES + 64;
    let mut message = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let Some(left) = MAX_TEMPLATE_WALL.checked_sub(started.elapsed()) else {
            return (message, true);
        };
        let mut pfd = libc::pollfd {
            fd: rd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
        // SAFETY: one live pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return (message, false);
        }
        if ready == 0 {
            continue;
        }
        // SAFETY: reads into a live buffer of `chunk.len()` bytes.
        let n = unsafe { libc::read(rd, chunk.as_mut_ptr().cast(), chunk.len()) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            return (message, false);
        }
        let n = (n as usize).min(cap.saturating_sub(message.len()));
        message.extend_from_slice(&chunk[..n]);
        if message.len() >= cap {
            return (message, false);
        }
    }
}

/// The render's result as bytes: `O` and the text; `L`, the limit's name, NUL, its
/// maximum (u64 LE); `E` and the message of any other error.
fn encode(r: &Result<String>) -> Vec<u8> {
    let mut out = Vec::new();
    match r {
        Ok(text) => {
            out.push(b'O');
            out.extend_from_slice(text.as_bytes());
        }
        Err(ModelError::TemplateLimit { limit, max }) => {
            out.push(b'L');
            out.extend_from_slice(limit.as_bytes());
            out.push(0);
            out.extend_from_slice(&max.to_le_bytes());
        }
        Err(ModelError::ChatTemplate(msg)) => {
            out.push(b'E');
            out.extend_from_slice(msg.as_bytes());
        }
        Err(e) => {
            out.push(b'E');
            out.extend_from_slice(e.to_string().as_bytes());
        }
    }
    out
}

fn decode(bytes: &[u8]) -> Option<Result<String>> {
    let (&tag, rest) = bytes.split_first()?;
    Some(match tag {
        b'O' => Ok(String::from_utf8(rest.to_vec()).ok()?),
        b'E' => Err(ModelError::ChatTemplate(
            String::from_utf8_lossy(rest).into_owned(),
        )),
        b'L' => {
            let nul = rest.iter().position(|&b| b == 0)?;
            let max = u64::from_le_bytes(rest.get(nul + 1..nul + 9)?.try_into().ok()?);
            let limit = [STEPS_LIMIT, OUTPUT_LIMIT]
                .into_iter()
                .find(|l| l.as_bytes() == &rest[..nul])?;
            Err(ModelError::TemplateLimit { limit, max })
        }
        _ => return None,
    })
}

/// This process's data segment (`VmData`: heap and private writable mappings), the
/// quantity `RLIMIT_DATA` caps.
fn vm_data_bytes() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| ModelError::ChatTemplate(format!("reading /proc/self/status: {e}")))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmData:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| ModelError::ChatTemplate("/proc/self/status has no VmData".into()))
}

fn os_error(what: &str) -> ModelError {
    ModelError::ChatTemplate(format!(
        "{what} for the isolated render: {}",
        std::io::Error::last_os_error()
    ))
}
