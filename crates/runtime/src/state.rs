//! What a plugin's `Store` holds, and the host side of the `strategy` world's imports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use keel_kernel::strategy::{AccountView, OrderView, PositionView};
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::convert;
use super::deadline::CallDeadline;
use super::log::{LogLevel, PluginLog};
use super::wit::keel::strategy::{account, clock, log, types};
use keel_kernel::engine::Clock;

/// Longest instrument name a plugin may ask a handle for.
pub(crate) const SYMBOL_NAME_BYTES_MAX: usize = 32;

/// Largest table a plugin may grow to, in elements.
const TABLE_ELEMENTS_MAX: usize = 100_000;

/// The error a memory growth past the cap traps with; found again when classifying the fault.
#[derive(Debug, thiserror::Error)]
#[error("linear memory of {desired_bytes} bytes asked for, above the cap of {cap_bytes}")]
pub(crate) struct MemoryCapExceeded {
    pub desired_bytes: usize,
    pub cap_bytes: usize,
}

/// The memory cap of one store.
pub(crate) struct MemoryCap {
    pub cap_bytes: usize,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap_bytes {
            return Err(MemoryCapExceeded {
                desired_bytes: desired,
                cap_bytes: self.cap_bytes,
            }
            .into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS_MAX)
    }
}

/// Instrument handles of one instance: small dense integers, assigned on first sight.
#[derive(Debug, Default)]
pub(crate) struct SymbolTable {
    names: Vec<String>,
    symbols_max: usize,
    last: usize,
}

impl SymbolTable {
    pub fn new(symbols_max: usize) -> Self {
        SymbolTable {
            names: Vec::new(),
            symbols_max,
            last: 0,
        }
    }

    /// The handle of `name`, assigned if new; `None` when the table is full or the name is
    /// unreasonable.
    pub fn intern(&mut self, name: &str) -> Option<u32> {
        // Most calls repeat the previous instrument: check it before scanning.
        if self.names.get(self.last).is_some_and(|n| n == name) {
            return u32::try_from(self.last).ok();
        }
        let index = match self.names.iter().position(|n| n == name) {
            Some(index) => index,
            None => {
                if self.names.len() >= self.symbols_max
                    || name.is_empty()
                    || name.len() > SYMBOL_NAME_BYTES_MAX
                {
                    return None;
                }
                self.names.push(name.to_string());
                self.names.len() - 1
            }
        };
        self.last = index;
        u32::try_from(index).ok()
    }

    pub fn name(&self, id: u32) -> Option<&str> {
        self.names.get(id as usize).map(String::as_str)
    }
}

/// The data of one plugin's `Store`.
pub(crate) struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub memory: MemoryCap,
    /// The account view of the call in progress; the `account` import reads it.
    pub view: AccountView,
    pub symbols: SymbolTable,
    pub log: Arc<Mutex<PluginLog>>,
    pub clock: Arc<dyn Clock>,
    /// Advanced before each call; the log's per-call budget restarts when it changes.
    pub call_seq: Arc<AtomicU64>,
    /// When the call in progress must end: Wasm code stops at its tick (the epoch deadline), a
    /// blocking WASI call gives up when the tick is due.
    pub deadline: CallDeadline,
}

impl PluginState {
    pub fn new(
        wasi: WasiCtx,
        memory: MemoryCap,
        symbols: SymbolTable,
        log: Arc<Mutex<PluginLog>>,
        clock: Arc<dyn Clock>,
        call_seq: Arc<AtomicU64>,
        deadline: CallDeadline,
    ) -> Self {
        PluginState {
            wasi,
            table: ResourceTable::new(),
            memory,
            view: AccountView::default(),
            symbols,
            log,
            clock,
            call_seq,
            deadline,
        }
    }

    /// Starts a call that may take `allowed` epoch ticks: the log budget restarts, the account
    /// view is the caller's. Returns the tick it started at.
    pub fn begin_call(&mut self, view: &AccountView, allowed: u64) -> u64 {
        self.call_seq.fetch_add(1, Ordering::Relaxed);
        self.view.clone_from(view);
        self.deadline.start(allowed)
    }

    /// The resources WASI handed the guest.
    pub fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    fn position_view(&mut self, position: &PositionView) -> Option<types::Position> {
        let symbol = self.symbols.intern(&position.symbol)?;
        Some(convert::position(symbol, position))
    }

    fn order_view(&mut self, order: &OrderView) -> Option<types::OpenOrder> {
        let symbol = self.symbols.intern(&order.symbol)?;
        Some(convert::open_order(symbol, order))
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for PluginState {}

impl log::Host for PluginState {
    fn log(&mut self, level: log::Level, message: String) {
        let level = match level {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        let now_ms = self.clock.now_ms();
        self.log.lock().unwrap().push(level, &message, now_ms);
    }
}

impl clock::Host for PluginState {
    fn now_ms(&mut self) -> i64 {
        self.clock.now_ms()
    }
}

impl account::Host for PluginState {
    fn position_of(&mut self, symbol: types::SymbolId) -> Option<types::Position> {
        let name = self.symbols.name(symbol)?;
        let position = self.view.positions.iter().find(|p| p.symbol == name)?;
        Some(convert::position(symbol, position))
    }

    fn position_at(&mut self, index: u32) -> Option<types::Position> {
        let position = self.view.positions.get(index as usize)?.clone();
        self.position_view(&position)
    }

    fn open_order_at(&mut self, index: u32) -> Option<types::OpenOrder> {
        let order = self.view.open_orders.get(index as usize)?.clone();
        self.order_view(&order)
    }

    fn symbol_name(&mut self, symbol: types::SymbolId) -> Option<String> {
        self.symbols.name(symbol).map(str::to_string)
    }

    fn lookup_symbol(&mut self, name: String) -> Option<types::SymbolId> {
        self.symbols.intern(&name)
    }
}
