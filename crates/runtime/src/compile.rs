//! Compiling a plugin within bounds of time, memory and concurrency.
//!
//! Cranelift's time and memory grow with what a component holds: one function of a hundred
//! thousand live values compiled for minutes, a million tiny functions took gigabytes. So a
//! component is measured first, by wasmparser, against [`CompileLimits`] — functions, the size
//! and locals of one function body, data, tables — and refused with the limit named. Then it is
//! compiled:
//!
//! - in a child process (`keel plugin compile-worker`, see [`run_worker`]) when the process named
//!   one ([`set_worker_program`], as the `keel` binary does): the child limits its own address
//!   space and CPU time (`RLIMIT_AS`, `RLIMIT_CPU`) before it reads the plugin, the parent kills
//!   it at the wall-clock budget or when the caller gives up (an uploader that went away), and
//!   the compiled artifact comes back through a temporary file loaded with
//!   `Component::deserialize_file`;
//! - in this process otherwise (library tests, benchmarks), bounded by the structural limits
//!   alone;
//!
//! and at most [`CompileLimits::compiles_concurrent_max`] at a time per engine: a compile waits
//! for a slot no longer than its wall-clock budget.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use wasmparser::{Parser, Payload};
use wasmtime::Engine;
use wasmtime::component::Component;

/// What a component may hold to be compiled, and what compiling it may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileLimits {
    /// Functions of all the component's core modules together.
    pub functions_max: u64,
    /// Bytes of one function body.
    pub function_body_bytes_max: usize,
    /// Locals one function declares.
    pub locals_per_function_max: u64,
    /// Bytes of data segments of all the core modules together.
    pub data_bytes_max: u64,
    /// Tables of all the core modules together.
    pub tables_max: u64,
    /// Initial elements of one table.
    pub table_elements_max: u64,
    /// Wall-clock time one compile may take (the wait for a compile slot included), in ms.
    pub compile_ms_max: u64,
    /// Address space of the compiling child process, in bytes.
    pub compile_memory_bytes_max: u64,
    /// Compiles running at once in one engine.
    pub compiles_concurrent_max: usize,
}

impl Default for CompileLimits {
    /// Sized to the real plugins with room to spare: the componentize-py example (18 MB,
    /// CPython and its libraries in 14 core modules) holds 13,370 functions, its largest body
    /// is 427 KB, its most locals in one function 271, its data 11 MB, its tables 2; the Rust
    /// examples hold about 200 functions. Its compile took 84 s on a loaded 2-core machine
    /// (docs/plugin-authoring.md).
    fn default() -> Self {
        CompileLimits {
            functions_max: 100_000,
            function_body_bytes_max: 1 << 20,
            locals_per_function_max: 5_000,
            data_bytes_max: 32 << 20,
            tables_max: 64,
            table_elements_max: 100_000,
            compile_ms_max: 180_000,
            compile_memory_bytes_max: 4 << 30,
            compiles_concurrent_max: 2,
        }
    }
}

/// Refuses a component that holds more than `limits` allow, naming the limit. Malformed bytes
/// pass: the compiler says what is wrong with them.
pub(crate) fn check_structure(bytes: &[u8], limits: &CompileLimits) -> anyhow::Result<()> {
    let mut functions = 0_u64;
    let mut data_bytes = 0_u64;
    let mut tables = 0_u64;
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else {
            return Ok(());
        };
        match payload {
            Payload::FunctionSection(reader) => {
                functions += u64::from(reader.count());
                refuse_above(
                    "functions_max",
                    functions,
                    limits.functions_max,
                    "functions",
                )?;
            }
            Payload::CodeSectionEntry(body) => check_body(&body, limits)?,
            Payload::DataSection(reader) => {
                for data in reader.into_iter().flatten() {
                    data_bytes += data.data.len() as u64;
                }
                refuse_above(
                    "data_bytes_max",
                    data_bytes,
                    limits.data_bytes_max,
                    "bytes of data",
                )?;
            }
            Payload::TableSection(reader) => {
                tables += u64::from(reader.count());
                refuse_above("tables_max", tables, limits.tables_max, "tables")?;
                for table in reader.into_iter().flatten() {
                    let elements = table.ty.initial;
                    let max = limits.table_elements_max;
                    refuse_above("table_elements_max", elements, max, "table elements")?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_body(body: &wasmparser::FunctionBody<'_>, limits: &CompileLimits) -> anyhow::Result<()> {
    let bytes = body.range().len();
    let max = limits.function_body_bytes_max;
    refuse_above(
        "function_body_bytes_max",
        bytes as u64,
        max as u64,
        "bytes in one function",
    )?;
    let mut locals = 0_u64;
    if let Ok(reader) = body.get_locals_reader() {
        for (count, _) in reader.into_iter().flatten() {
            locals += u64::from(count);
        }
    }
    let max = limits.locals_per_function_max;
    refuse_above(
        "locals_per_function_max",
        locals,
        max,
        "locals in one function",
    )
}

fn refuse_above(limit: &str, found: u64, max: u64, what: &str) -> anyhow::Result<()> {
    if found > max {
        bail!("the plugin holds more than {max} {what} ({limit} = {max}; it has at least {found})");
    }
    Ok(())
}

/// The program run as `PROGRAM plugin compile-worker …`, when one is set.
static WORKER_PROGRAM: OnceLock<PathBuf> = OnceLock::new();

/// Makes every engine of this process compile in a child process running `program` (the `keel`
/// binary, whose `plugin compile-worker` subcommand calls [`run_worker`]). Set once, at start.
pub fn set_worker_program(program: PathBuf) {
    let _ = WORKER_PROGRAM.set(program);
}

/// Gives up a compile from another thread: the compiling child is killed.
#[derive(Debug, Clone, Default)]
pub struct CompileCancel(Arc<AtomicBool>);

impl CompileCancel {
    /// A token nobody has cancelled yet.
    pub fn new() -> Self {
        CompileCancel::default()
    }

    /// Gives the compile up.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// A guard that cancels the compile when dropped unless [`CancelOnDrop::disarm`]ed: held
    /// by an async caller across its wait, so a caller that goes away gives the compile up.
    pub fn on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(Some(self.clone()))
    }
}

/// See [`CompileCancel::on_drop`].
#[derive(Debug)]
pub struct CancelOnDrop(Option<CompileCancel>);

impl CancelOnDrop {
    /// The caller saw the compile through: dropping the guard no longer cancels it.
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(cancel) = self.0.take() {
            cancel.cancel();
        }
    }
}

/// The compile slots of one engine.
#[derive(Debug, Default)]
pub(crate) struct CompileSlots {
    busy: Mutex<usize>,
    freed: Condvar,
}

/// A taken compile slot, given back on drop.
pub(crate) struct Slot<'a>(&'a CompileSlots);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.0.busy.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        self.0.freed.notify_one();
    }
}

impl CompileSlots {
    /// Waits for one of `max` slots until `deadline`.
    pub fn take(&self, max: usize, deadline: Instant) -> anyhow::Result<Slot<'_>> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        while *busy >= max {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{max} plugins are compiling already (compiles_concurrent_max = {max}); \
                     try again later"
                );
            }
            busy = self
                .freed
                .wait_timeout(busy, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *busy += 1;
        Ok(Slot(self))
    }
}

/// Compiles `bytes` on `engine` within `limits`: in a child process when a worker program is
/// set, else here. The caller checked the structure already.
pub(crate) fn compile(
    engine: &Engine,
    bytes: &[u8],
    limits: &CompileLimits,
    cancel: &CompileCancel,
) -> anyhow::Result<Component> {
    match WORKER_PROGRAM.get() {
        Some(program) => compile_in_child(engine, program, bytes, limits, cancel),
        None => Component::new(engine, bytes).map_err(invalid),
    }
}

fn invalid(error: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("not a valid WebAssembly component: {error:#}")
}

/// How often the parent looks at the child, the clock and the cancel token.
const CHILD_POLL_MS: u64 = 10;
/// Bytes of the child's error output kept for the message.
const CHILD_STDERR_BYTES_MAX: u64 = 4096;

fn compile_in_child(
    engine: &Engine,
    program: &Path,
    bytes: &[u8],
    limits: &CompileLimits,
    cancel: &CompileCancel,
) -> anyhow::Result<Component> {
    let files = WorkFiles::new()?;
    std::fs::write(&files.input, bytes)
        .with_context(|| format!("writing {}", files.input.display()))?;
    let cpu_seconds_max = limits.compile_ms_max.div_ceil(1000).max(1) * CPU_SECONDS_PER_WALL_SECOND;
    let mut child = Command::new(program)
        .args(["plugin", "compile-worker", "--input"])
        .arg(&files.input)
        .arg("--output")
        .arg(&files.output)
        .arg("--memory-bytes-max")
        .arg(limits.compile_memory_bytes_max.to_string())
        .arg("--cpu-seconds-max")
        .arg(cpu_seconds_max.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting the plugin compiler {}", program.display()))?;
    let started = Instant::now();
    let budget = Duration::from_millis(limits.compile_ms_max);
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .context("waiting for the plugin compiler")?
        {
            break status;
        }
        let gave_up = if cancel.is_cancelled() {
            Some("the compile was abandoned: its caller went away".to_owned())
        } else if started.elapsed() >= budget {
            Some(format!(
                "compiling the plugin took longer than {} ms (compile_ms_max)",
                limits.compile_ms_max
            ))
        } else {
            None
        };
        if let Some(reason) = gave_up {
            let _ = child.kill();
            let _ = child.wait();
            bail!(reason);
        }
        std::thread::sleep(Duration::from_millis(CHILD_POLL_MS));
    };
    let mut stderr = String::new();
    if let Some(pipe) = child.stderr.take() {
        let _ = pipe
            .take(CHILD_STDERR_BYTES_MAX)
            .read_to_string(&mut stderr);
    }
    if !status.success() {
        bail!(child_failure(status, stderr.trim(), limits));
    }
    deserialize(engine, &files.output)
}

/// CPU seconds the child may use per second of wall-clock budget: Cranelift compiles functions
/// in parallel, on every core.
const CPU_SECONDS_PER_WALL_SECOND: u64 = 4;

fn child_failure(status: std::process::ExitStatus, stderr: &str, limits: &CompileLimits) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    let memory = limits.compile_memory_bytes_max >> 20;
    let out_of_memory = stderr.contains("memory allocation") || stderr.contains("out of memory");
    match status.signal() {
        Some(signal) if signal == libc_signal::SIGXCPU || signal == libc_signal::SIGKILL => {
            format!(
                "compiling the plugin used up its CPU time (compile_ms_max = {} ms)",
                limits.compile_ms_max
            )
        }
        _ if out_of_memory => format!(
            "compiling the plugin needed more than {memory} MiB of memory (compile_memory_bytes_max)"
        ),
        Some(signal) if signal == libc_signal::SIGABRT => format!(
            "compiling the plugin failed (the compiler aborted, most likely past its {memory} MiB \
             of memory, compile_memory_bytes_max): {stderr}"
        ),
        _ if stderr.is_empty() => format!("the plugin compiler failed ({status})"),
        _ => stderr.to_owned(),
    }
}

/// Signal numbers the parent reads from the child's status (Linux).
mod libc_signal {
    pub const SIGABRT: i32 = 6;
    pub const SIGKILL: i32 = 9;
    pub const SIGXCPU: i32 = 24;
}

/// The input and output files of one compile in a child, removed on drop.
struct WorkFiles {
    input: PathBuf,
    output: PathBuf,
}

impl WorkFiles {
    fn new() -> anyhow::Result<WorkFiles> {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let stem = format!("keel-compile-{}-{sequence}", std::process::id());
        let dir = std::env::temp_dir();
        Ok(WorkFiles {
            input: dir.join(format!("{stem}.wasm")),
            output: dir.join(format!("{stem}.cwasm")),
        })
    }
}

impl Drop for WorkFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.input);
        let _ = std::fs::remove_file(&self.output);
    }
}

/// Loads a compiled artifact written by this engine's configuration.
#[allow(unsafe_code)]
pub(crate) fn deserialize(engine: &Engine, path: &Path) -> anyhow::Result<Component> {
    // SAFETY: the file was written by `run_worker` (a child process of this binary, under the
    // same compiler configuration) or by the plugin cache from a component this engine
    // configuration compiled, in a directory only this user writes; wasmtime checks the
    // artifact's header and the engine's compatibility hash before use.
    Ok(unsafe { Component::deserialize_file(engine, path) }?)
}

/// What the compiling child may use.
#[derive(Debug, Clone, Copy)]
pub struct WorkerLimits {
    /// `RLIMIT_AS`, in bytes.
    pub memory_bytes_max: u64,
    /// `RLIMIT_CPU`, in seconds.
    pub cpu_seconds_max: u64,
}

/// The child's side (`keel plugin compile-worker`): limits its own address space and CPU time,
/// then compiles `input` with the plugin engine's compiler settings and writes the serialized
/// artifact to `output`.
pub fn run_worker(input: &Path, output: &Path, limits: WorkerLimits) -> anyhow::Result<()> {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let limit = |value: u64| Rlimit {
        current: Some(value),
        maximum: Some(value),
    };
    setrlimit(Resource::As, limit(limits.memory_bytes_max)).context("setting RLIMIT_AS")?;
    setrlimit(Resource::Cpu, limit(limits.cpu_seconds_max)).context("setting RLIMIT_CPU")?;
    let bytes = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let engine = Engine::new(&super::engine::compiler_config())
        .map_err(|e| e.context("creating the compiler"))?;
    let component = Component::new(&engine, &bytes).map_err(invalid)?;
    let serialized = component
        .serialize()
        .map_err(|e| e.context("serializing the compiled plugin"))?;
    std::fs::write(output, serialized).with_context(|| format!("writing {}", output.display()))
}
