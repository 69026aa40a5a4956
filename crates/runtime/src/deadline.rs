//! The call's wall-clock deadline inside WASI's blocking calls.
//!
//! Epoch interruption stops Wasm code at its deadline, but not a guest blocked in the host: a
//! `thread::sleep`, a `poll` or a `pollable.block` waits in wasmtime-wasi for as long as the
//! guest asked. This module shadows those two blocking functions of `wasi:io/poll` with versions
//! that give up at the deadline of the call in progress; the call then ends with
//! [`PluginFault::Deadline`](keel_kernel::strategy::PluginFault::Deadline).

use std::future::Future;
use std::time::Instant;

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::runtime::in_tokio;
use wasmtime_wasi_io::bindings::wasi::io::poll::{Host as _, HostPollable as _};

use super::state::PluginState;

/// The `wasi:io/poll` instance wasmtime-wasi links (imports of older 0.2 versions resolve to
/// it).
const WASI_POLL: &str = "wasi:io/poll@0.2.12";

/// A blocking WASI call reached the deadline of the call in progress.
#[derive(Debug, thiserror::Error)]
#[error("a blocking WASI call reached the call's deadline")]
pub(crate) struct CallDeadlineExceeded;

/// Replaces `poll` and `[method]pollable.block` of `wasi:io/poll` in `linker` (which already
/// holds WASI 0.2) with versions bounded by the call's deadline.
pub(crate) fn bound_blocking_polls(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut poll = linker.instance(WASI_POLL)?;
    poll.func_wrap(
        "poll",
        |mut store, (pollables,): (Vec<Resource<DynPollable>>,)| {
            let state: &mut PluginState = store.data_mut();
            let deadline = state.call_deadline;
            until(deadline, state.table().poll(pollables)).map(|ready| (ready,))
        },
    )?;
    poll.func_wrap(
        "[method]pollable.block",
        |mut store, (pollable,): (Resource<DynPollable>,)| {
            let state: &mut PluginState = store.data_mut();
            let deadline = state.call_deadline;
            until(deadline, state.table().block(pollable))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Drives `work` to completion or to `deadline`, whichever comes first.
fn until<T>(
    deadline: Instant,
    work: impl Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<T> {
    let deadline = tokio::time::Instant::from_std(deadline);
    in_tokio(async { tokio::time::timeout_at(deadline, work).await })
        .unwrap_or_else(|_| Err(CallDeadlineExceeded.into()))
}
