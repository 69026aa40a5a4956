//! Between the kernel's native types and the WIT types of `keel:strategy` (`wit/strategy.wit`).
//!
//! Inbound (kernel → plugin) conversions are total. Outbound (plugin → kernel) conversions check
//! only the shape the kernel cannot check later (handles, sizes of strings, count of intents);
//! every number passes through raw, for the kernel's validator to refuse or accept.

use keel_kernel::market::Candle;
use keel_kernel::strategy::{
    AccountView, FillView, OrderView, PositionSide, PositionView, RawEntry, RawExit, RawIntent,
    RawPrice, RawSize,
};

use super::limits::PluginLimits;
use super::state::SymbolTable;
use super::wit::keel::strategy::types as wit;

pub(crate) fn side_to_wit(side: PositionSide) -> wit::PositionSide {
    match side {
        PositionSide::Long => wit::PositionSide::Long,
        PositionSide::Short => wit::PositionSide::Short,
    }
}

fn side_from_wit(side: wit::PositionSide) -> PositionSide {
    match side {
        wit::PositionSide::Long => PositionSide::Long,
        wit::PositionSide::Short => PositionSide::Short,
    }
}

/// The flat summary passed with every call.
pub(crate) fn account_view(view: &AccountView) -> wit::AccountView {
    wit::AccountView {
        free_capital: view.free_capital,
        equity: view.equity,
        position_count: u32::try_from(view.positions.len()).unwrap_or(u32::MAX),
        open_order_count: u32::try_from(view.open_orders.len()).unwrap_or(u32::MAX),
    }
}

pub(crate) fn candle(symbol: wit::SymbolId, candle: &Candle) -> wit::Candle {
    wit::Candle {
        symbol,
        open_time_ms: candle.open_time_ms,
        close_time_ms: candle.close_time_ms,
        open: candle.open,
        high: candle.high,
        low: candle.low,
        close: candle.close,
        volume: candle.volume,
    }
}

pub(crate) fn fill(symbol: wit::SymbolId, fill: &FillView) -> wit::Fill {
    wit::Fill {
        client_order_id: fill.client_order_id.to_string(),
        symbol,
        is_exit: fill.is_exit,
        side: side_to_wit(fill.side),
        price: fill.price,
        qty: fill.qty,
        fee: fill.fee,
        time_ms: fill.time_ms,
    }
}

pub(crate) fn position(symbol: wit::SymbolId, position: &PositionView) -> wit::Position {
    wit::Position {
        symbol,
        side: side_to_wit(position.side),
        qty: position.qty,
        entry_price: position.entry_price,
    }
}

pub(crate) fn open_order(symbol: wit::SymbolId, order: &OrderView) -> wit::OpenOrder {
    wit::OpenOrder {
        client_order_id: order.client_order_id.clone(),
        symbol,
        is_exit: order.is_exit,
        side: side_to_wit(order.side),
        qty: order.qty,
        filled_qty: order.filled_qty,
        limit_price: order.limit_price,
    }
}

/// Turns a call's output into the kernel's raw intents, or says what is wrong with it.
pub(crate) fn intents(
    intents: Vec<wit::Intent>,
    symbols: &SymbolTable,
    limits: &PluginLimits,
) -> Result<Vec<RawIntent>, String> {
    if intents.len() > limits.intents_per_call_max {
        return Err(format!(
            "{} intents in one call, more than the {} allowed",
            intents.len(),
            limits.intents_per_call_max
        ));
    }
    intents
        .into_iter()
        .map(|intent| raw_intent(intent, symbols, limits))
        .collect()
}

fn raw_intent(
    intent: wit::Intent,
    symbols: &SymbolTable,
    limits: &PluginLimits,
) -> Result<RawIntent, String> {
    let symbol_name = |id: wit::SymbolId| {
        symbols
            .name(id)
            .map(str::to_string)
            .ok_or_else(|| format!("unknown symbol handle {id}"))
    };
    let tag = |tag: String| {
        if tag.len() > limits.tag_bytes_max {
            Err(format!(
                "tag of {} bytes, more than {}",
                tag.len(),
                limits.tag_bytes_max
            ))
        } else {
            Ok(tag)
        }
    };
    Ok(match intent {
        wit::Intent::Entry(entry) => RawIntent::Entry(RawEntry {
            symbol: symbol_name(entry.symbol)?,
            side: side_from_wit(entry.side),
            size: match entry.size {
                wit::Size::QuoteNotional(v) => RawSize::QuoteNotional(v),
                wit::Size::BaseQty(v) => RawSize::BaseQty(v),
                wit::Size::FreeCapitalFraction(v) => RawSize::FreeCapitalFraction(v),
            },
            price: raw_price(entry.price),
            stop_loss: entry.stop_loss,
            take_profit: entry.take_profit,
            tag: tag(entry.tag)?,
        }),
        wit::Intent::Exit(exit) => RawIntent::Exit(RawExit {
            symbol: symbol_name(exit.symbol)?,
            fraction: exit.fraction,
            price: raw_price(exit.price),
            tag: tag(exit.tag)?,
        }),
        wit::Intent::Cancel(client_order_id) => {
            if client_order_id.len() > limits.client_order_id_bytes_max {
                return Err(format!(
                    "client order id of {} bytes, more than {}",
                    client_order_id.len(),
                    limits.client_order_id_bytes_max
                ));
            }
            RawIntent::Cancel { client_order_id }
        }
        wit::Intent::SetTimer(at_ms) => RawIntent::SetTimer { at_ms },
    })
}

fn raw_price(price: wit::Price) -> RawPrice {
    match price {
        wit::Price::Market => RawPrice::Market,
        wit::Price::Limit(v) => RawPrice::Limit(v),
    }
}
