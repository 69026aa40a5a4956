//! Validation of what a strategy asks for, and the kernel's risk rules.
//!
//! A plugin's [`RawIntent`] is untrusted: its floats may be NaN, negative or absurd and its
//! strings anything. [`validate`] turns one raw intent into a [`ValidIntent`] with decimal money
//! and checked ids, or a [`Refusal`] that names the rule it broke. It is a pure function of the
//! intent, the profile's [`RiskLimits`] and a [`RiskContext`] snapshot, so a backtest and a live
//! run refuse alike.

use std::collections::BTreeSet;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::ids::{ClientOrderId, IdError, Symbol};
use crate::money::{Amount, MoneyError, Price, Qty, decimal_from_f64};
use crate::strategy::{PositionSide, RawEntry, RawExit, RawIntent, RawPrice, RawSize};

/// The longest tag a strategy may attach to a request, in bytes.
pub const TAG_BYTES_MAX: usize = 64;

/// A profile's risk rules. Changeable at run time; checked on every intent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskLimits {
    /// Symbols the profile may trade. An entry on any other symbol is refused.
    pub symbols_allowed: BTreeSet<Symbol>,
    /// Largest notional (quote currency) of one entry.
    pub entry_notional_max: Decimal,
    /// Most positions open at once (counting pending entries).
    pub positions_open_max: u32,
    /// Largest total exposure divided by equity.
    pub leverage_max: Decimal,
    /// How far a limit price may be from the last price, in basis points.
    pub limit_price_band_bps: u32,
    /// Most intents accepted per minute of kernel time.
    pub intents_per_minute_max: u32,
    /// Largest realized loss (a positive number) per UTC day before entries stop.
    pub daily_loss_max: Decimal,
}

impl RiskLimits {
    /// Conservative limits for `symbols`: 1,000 quote per entry, 3 positions, leverage 1, a 5%
    /// price band, 60 intents a minute, a daily loss of at most 500.
    pub fn conservative(symbols: impl IntoIterator<Item = Symbol>) -> Self {
        RiskLimits {
            symbols_allowed: symbols.into_iter().collect(),
            entry_notional_max: Decimal::from(1_000),
            positions_open_max: 3,
            leverage_max: Decimal::ONE,
            limit_price_band_bps: 500,
            intents_per_minute_max: 60,
            daily_loss_max: Decimal::from(500),
        }
    }
}

/// Most symbols one profile may trade.
pub const SYMBOLS_ALLOWED_MAX: usize = 64;
/// Largest `entry_notional_max` a profile may be given, in quote currency.
pub const ENTRY_NOTIONAL_CEILING: u64 = 1_000_000_000;
/// Largest `positions_open_max` a profile may be given.
pub const POSITIONS_OPEN_CEILING: u32 = 1_000;
/// Largest `leverage_max` a profile may be given (Binance USDⓈ-M's highest leverage).
pub const LEVERAGE_CEILING: u64 = 125;
/// Largest `limit_price_band_bps` a profile may be given (100%).
pub const LIMIT_PRICE_BAND_BPS_CEILING: u32 = 10_000;
/// Largest `intents_per_minute_max` a profile may be given (100 a second).
pub const INTENTS_PER_MINUTE_CEILING: u32 = 6_000;
/// Largest `daily_loss_max` a profile may be given, in quote currency.
pub const DAILY_LOSS_CEILING: u64 = 1_000_000_000;
/// Most decimal places of a decimal limit or amount: the ledger's scale.
pub const DECIMAL_PLACES_MAX: u32 = crate::ledger::AMOUNT_SCALE;

/// A risk limit outside its range: the field, the range, and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} must be {range}, got {value}")]
pub struct LimitError {
    /// The field, as named in [`RiskLimits`].
    pub field: &'static str,
    /// The accepted range, for a person to read (`"in (0, 125] with at most 8 decimal places"`).
    pub range: String,
    /// The refused value.
    pub value: String,
}

/// Checks that `value` is in `(0, ceiling]` (`[0, ceiling]` when `zero_allowed`) with at most
/// [`DECIMAL_PLACES_MAX`] decimal places.
pub fn check_decimal(
    field: &'static str,
    value: Decimal,
    zero_allowed: bool,
    ceiling: Decimal,
) -> Result<(), LimitError> {
    let low_ok = if zero_allowed {
        value >= Decimal::ZERO
    } else {
        value > Decimal::ZERO
    };
    if low_ok && value <= ceiling && value.normalize().scale() <= DECIMAL_PLACES_MAX {
        return Ok(());
    }
    let open = if zero_allowed { '[' } else { '(' };
    Err(LimitError {
        field,
        range: format!("in {open}0, {ceiling}] with at most {DECIMAL_PLACES_MAX} decimal places"),
        value: value.to_string(),
    })
}

/// Checks that `value` is in `[floor, ceiling]`.
fn check_count(
    field: &'static str,
    value: u32,
    floor: u32,
    ceiling: u32,
) -> Result<(), LimitError> {
    if (floor..=ceiling).contains(&value) {
        return Ok(());
    }
    Err(LimitError {
        field,
        range: format!("in [{floor}, {ceiling}]"),
        value: value.to_string(),
    })
}

impl RiskLimits {
    /// Checks every limit against its documented range (the constants above): what a request
    /// may set, so that no stored limit can take the kernel's arithmetic out of range.
    pub fn validate(&self) -> Result<(), LimitError> {
        if self.symbols_allowed.len() > SYMBOLS_ALLOWED_MAX {
            return Err(LimitError {
                field: "symbols_allowed",
                range: format!("at most {SYMBOLS_ALLOWED_MAX} symbols"),
                value: format!("{} symbols", self.symbols_allowed.len()),
            });
        }
        check_decimal(
            "entry_notional_max",
            self.entry_notional_max,
            false,
            Decimal::from(ENTRY_NOTIONAL_CEILING),
        )?;
        check_count(
            "positions_open_max",
            self.positions_open_max,
            0,
            POSITIONS_OPEN_CEILING,
        )?;
        check_decimal(
            "leverage_max",
            self.leverage_max,
            false,
            Decimal::from(LEVERAGE_CEILING),
        )?;
        check_count(
            "limit_price_band_bps",
            self.limit_price_band_bps,
            0,
            LIMIT_PRICE_BAND_BPS_CEILING,
        )?;
        check_count(
            "intents_per_minute_max",
            self.intents_per_minute_max,
            1,
            INTENTS_PER_MINUTE_CEILING,
        )?;
        check_decimal(
            "daily_loss_max",
            self.daily_loss_max,
            true,
            Decimal::from(DAILY_LOSS_CEILING),
        )
    }
}

/// Why a profile may not open new positions right now. Exits stay allowed in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryBlock {
    /// The operator's host-wide kill switch is on.
    HostKillSwitch,
    /// The profile's kill switch is on.
    ProfileKillSwitch,
    /// The profile is paused by its owner or an operator.
    Paused,
    /// Reconciliation found drift it could not repair: reduce-only until an operator clears it.
    Quarantined,
    /// The strategy faulted; entries wait until it is healthy again.
    PluginFaulted,
}

impl std::fmt::Display for EntryBlock {
    /// The reason in words, as a refusal's message gives it to a person.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EntryBlock::HostKillSwitch => "the host-wide kill switch is on",
            EntryBlock::ProfileKillSwitch => "the profile's kill switch is on",
            EntryBlock::Paused => "the profile is paused",
            EntryBlock::Quarantined => "the profile is quarantined (reduce-only)",
            EntryBlock::PluginFaulted => "the plugin faulted",
        })
    }
}

/// What the kernel knows about the profile when it validates an intent.
#[derive(Debug, Clone, PartialEq)]
pub struct RiskContext {
    /// Last traded price of the intent's symbol, if the kernel has seen one.
    pub last_price: Option<Price>,
    /// Capital not reserved, in quote currency.
    pub free_capital: Decimal,
    /// Allocated capital plus realized PnL.
    pub equity: Decimal,
    /// Notional of all open positions and open entry orders.
    pub exposure: Decimal,
    /// Open positions plus pending entries.
    pub positions_open: u32,
    /// Base quantity held in the intent's symbol (zero if none).
    pub position_qty: Decimal,
    /// The side of that position, if any.
    pub position_side: Option<PositionSide>,
    /// Realized PnL since the start of the UTC day (negative for a loss).
    pub daily_realized_pnl: Decimal,
    /// Intents already accepted in the current minute.
    pub intents_this_minute: u32,
    /// Set when new entries are blocked for the profile.
    pub entry_block: Option<EntryBlock>,
    /// What an entry reserves beyond its notional: a fraction of free capital is sized so that
    /// the notional and these reserves fit.
    pub reserves: EntryReserves,
}

/// What an entry reserves beyond its notional, in basis points of it, so that recording its
/// fills never needs capital the reservation does not hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryReserves {
    /// Allowance for a fill above the reference price: a market order's slippage, a limit
    /// sell's gap through its price.
    pub slippage_bps: u32,
    /// Allowance for the fee every fill is charged.
    pub fee_bps: u32,
}

impl EntryReserves {
    /// The allowance, in basis points, an entry reserves above its reference price (the last
    /// price for a market order, the limit price otherwise): a limit buy never fills above its
    /// price, so it reserves the fee alone; a market order and a limit sell reserve slippage too.
    pub fn allowance_bps(&self, side: PositionSide, price: OrderPrice) -> u32 {
        match (price, side) {
            (OrderPrice::Limit(_), PositionSide::Long) => self.fee_bps,
            _ => self.slippage_bps.saturating_add(self.fee_bps),
        }
    }

    /// The price an entry reserves capital at: `reference` raised by the allowance, rounded up
    /// to 8 places, so the reservation is never below what the fills may cost with their fees.
    pub fn reservation_price(
        &self,
        side: PositionSide,
        price: OrderPrice,
        reference: Price,
    ) -> Result<Price, Refusal> {
        let allowance = Decimal::from(self.allowance_bps(side, price));
        let factor = Decimal::ONE + allowance / Decimal::from(10_000);
        let price = (reference.get().checked_mul(factor)).ok_or(Refusal::ArithmeticOverflow {
            what: "reservation price",
        })?;
        let price = price.round_dp_with_strategy(8, rust_decimal::RoundingStrategy::AwayFromZero);
        Ok(Price::new(price)?)
    }
}

/// The price of a validated order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum OrderPrice {
    /// Market order.
    Market,
    /// Limit order at this price.
    Limit(Price),
}

/// A checked entry request, in decimals. Not yet rounded to the exchange's tick and step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryRequest {
    /// The instrument.
    pub symbol: Symbol,
    /// Long or short.
    pub side: PositionSide,
    /// Base quantity.
    pub qty: Qty,
    /// Market or limit.
    pub price: OrderPrice,
    /// Estimated notional at the reference price: what the kernel reserves.
    pub notional: Amount,
    /// Protective stop price.
    pub stop_loss: Option<Price>,
    /// Profit-taking price.
    pub take_profit: Option<Price>,
    /// The strategy's tag.
    pub tag: String,
}

/// A checked, reduce-only exit request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitRequest {
    /// The instrument.
    pub symbol: Symbol,
    /// The side of the position being reduced.
    pub side: PositionSide,
    /// Base quantity to close: never more than is held.
    pub qty: Qty,
    /// Market or limit.
    pub price: OrderPrice,
    /// The strategy's tag.
    pub tag: String,
}

/// An intent the kernel accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ValidIntent {
    /// Open a position.
    Entry(EntryRequest),
    /// Reduce a position.
    Exit(ExitRequest),
    /// Cancel an open order of the profile.
    Cancel {
        /// Which order.
        client_order_id: ClientOrderId,
    },
    /// Wake the strategy at this kernel time.
    SetTimer {
        /// Milliseconds since the epoch.
        at_ms: i64,
    },
}

/// Why an intent was refused. Each variant is one rule; [`Refusal::rule`] names it for metrics.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// A number in the request is NaN, infinite, not positive or too large.
    #[error("{0}")]
    InvalidNumber(#[from] MoneyError),
    /// A fraction outside (0, 1].
    #[error("{what} must be in (0, 1], got {value}")]
    FractionOutOfRange {
        /// Which fraction.
        what: &'static str,
        /// The refused value.
        value: f64,
    },
    /// A symbol or client order id that is not well formed.
    #[error("{0}")]
    InvalidId(#[from] IdError),
    /// The tag is longer than [`TAG_BYTES_MAX`].
    #[error("tag of {bytes} bytes is longer than {TAG_BYTES_MAX}")]
    TagTooLong {
        /// Its length.
        bytes: usize,
    },
    /// The tag holds a control character, a line separator or an invisible formatting
    /// character: it is printed in reports and logs, where it could forge or hide text.
    #[error("tag holds an unprintable character ({escaped})")]
    TagUnprintable {
        /// The tag with those characters escaped.
        escaped: String,
    },
    /// The profile may not trade this symbol.
    #[error("symbol {0} is not allowed for this profile")]
    SymbolNotAllowed(Symbol),
    /// No price is known yet for the symbol, so a market entry cannot be sized or checked.
    #[error("no price is known yet for {0}")]
    NoPrice(Symbol),
    /// The entry's notional is above the profile's maximum.
    #[error("entry notional {notional} is above the maximum {max}")]
    NotionalAboveMax {
        /// The entry's notional.
        notional: Decimal,
        /// The limit.
        max: Decimal,
    },
    /// The entry needs more capital than is free.
    #[error("entry notional {notional} is above the free capital {free}")]
    InsufficientCapital {
        /// The entry's notional.
        notional: Decimal,
        /// Free capital.
        free: Decimal,
    },
    /// Too many positions are open.
    #[error("{open} positions are open, the maximum is {max}")]
    TooManyPositions {
        /// Open positions and pending entries.
        open: u32,
        /// The limit.
        max: u32,
    },
    /// The entry would take exposure over the leverage limit.
    #[error("exposure {exposure} would exceed {max}x equity {equity}")]
    LeverageAboveMax {
        /// Exposure after the entry.
        exposure: Decimal,
        /// Equity.
        equity: Decimal,
        /// The limit.
        max: Decimal,
    },
    /// A limit price too far from the last price.
    #[error("limit price {price} is more than {band_bps} bps from the last price {last}")]
    PriceOutsideBand {
        /// The requested limit price.
        price: Decimal,
        /// The last price.
        last: Decimal,
        /// The allowed band.
        band_bps: u32,
    },
    /// Stop-loss or take-profit on the wrong side of the entry price.
    #[error("{what} {price} is on the wrong side of the entry price {reference}")]
    ProtectiveOrderWrongSide {
        /// Which one.
        what: &'static str,
        /// Its price.
        price: Decimal,
        /// The entry's reference price.
        reference: Decimal,
    },
    /// Too many intents this minute.
    #[error("more than {max} intents in one minute")]
    RateLimited {
        /// The limit.
        max: u32,
    },
    /// Today's realized loss reached the daily limit.
    #[error("daily loss {loss} reached the limit {max}")]
    DailyLossLimit {
        /// Today's realized loss, positive.
        loss: Decimal,
        /// The limit.
        max: Decimal,
    },
    /// New entries are blocked for the profile.
    #[error("entries are blocked: {0}")]
    EntryBlocked(EntryBlock),
    /// An exit for a symbol the profile holds no position in.
    #[error("no open position in {0} to exit")]
    NoPosition(Symbol),
    /// A timer in the past or absurdly far ahead.
    #[error("timer at {at_ms} ms is not in the next day")]
    TimerOutOfRange {
        /// The requested time.
        at_ms: i64,
    },
    /// An amount the check computes from the intent, the limits or the context is beyond the
    /// range of a decimal: the rule cannot be evaluated, so the intent is refused.
    #[error("{what} is beyond the range of a decimal")]
    ArithmeticOverflow {
        /// The amount that could not be computed.
        what: &'static str,
    },
}

impl Refusal {
    /// The rule the refusal broke, for metrics labels and the refusal record.
    pub fn rule(&self) -> RefusalRule {
        match self {
            Refusal::InvalidNumber(_) | Refusal::FractionOutOfRange { .. } => {
                RefusalRule::InvalidNumber
            }
            Refusal::InvalidId(_) => RefusalRule::InvalidId,
            Refusal::TagTooLong { .. } => RefusalRule::TagTooLong,
            Refusal::TagUnprintable { .. } => RefusalRule::TagUnprintable,
            Refusal::SymbolNotAllowed(_) => RefusalRule::SymbolNotAllowed,
            Refusal::NoPrice(_) => RefusalRule::NoPrice,
            Refusal::NotionalAboveMax { .. } => RefusalRule::NotionalMax,
            Refusal::InsufficientCapital { .. } => RefusalRule::InsufficientCapital,
            Refusal::TooManyPositions { .. } => RefusalRule::PositionsMax,
            Refusal::LeverageAboveMax { .. } => RefusalRule::LeverageMax,
            Refusal::PriceOutsideBand { .. } => RefusalRule::PriceBand,
            Refusal::ProtectiveOrderWrongSide { .. } => RefusalRule::ProtectiveOrderSide,
            Refusal::RateLimited { .. } => RefusalRule::RateLimit,
            Refusal::DailyLossLimit { .. } => RefusalRule::DailyLoss,
            Refusal::EntryBlocked(_) => RefusalRule::EntryBlocked,
            Refusal::NoPosition(_) => RefusalRule::NoPosition,
            Refusal::TimerOutOfRange { .. } => RefusalRule::TimerRange,
            Refusal::ArithmeticOverflow { .. } => RefusalRule::ArithmeticOverflow,
        }
    }
}

/// Declares [`RefusalRule`] from one list of `Variant => "name"`, so that the variants, their
/// names and [`RefusalRule::ALL`] cannot drift apart.
macro_rules! refusal_rules {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)+) => {
        /// A rule an intent was refused by: the rules of [`validate`] ([`Refusal::rule`]) and
        /// the refusals the engine records after validation. Its name (`as_str`, and its serde
        /// form) labels `keel_risk_refusals_total` and fills the `rule` of refusal records,
        /// backtest reports and the live feed.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum RefusalRule {
            $($(#[doc = $doc])* #[serde(rename = $name)] $variant,)+
        }

        impl RefusalRule {
            /// Every rule, in declaration order. `keel_risk_refusals_total` has each from the
            /// start.
            pub const ALL: &[RefusalRule] = &[$(RefusalRule::$variant,)+];

            /// The rule's stable `snake_case` name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(RefusalRule::$variant => $name,)+
                }
            }
        }
    };
}

refusal_rules! {
    /// A number is NaN, infinite, not positive or too large, or a fraction is outside (0, 1].
    InvalidNumber => "invalid_number",
    /// A symbol or client order id is not well formed.
    InvalidId => "invalid_id",
    /// The tag is longer than [`TAG_BYTES_MAX`].
    TagTooLong => "tag_too_long",
    /// The tag holds an unprintable character.
    TagUnprintable => "tag_unprintable",
    /// The profile may not trade the symbol.
    SymbolNotAllowed => "symbol_not_allowed",
    /// No price is known yet for the symbol.
    NoPrice => "no_price",
    /// The entry's notional is above the profile's maximum.
    NotionalMax => "notional_max",
    /// The entry needs more capital than is free (checked by the rules or by the store).
    InsufficientCapital => "insufficient_capital",
    /// Too many positions are open.
    PositionsMax => "positions_max",
    /// The entry would take exposure over the leverage limit.
    LeverageMax => "leverage_max",
    /// A limit price too far from the last price.
    PriceBand => "price_band",
    /// Stop-loss or take-profit on the wrong side of the entry price.
    ProtectiveOrderSide => "protective_order_side",
    /// Too many intents this minute, or in one call.
    RateLimit => "rate_limit",
    /// Today's realized loss reached the daily limit.
    DailyLoss => "daily_loss",
    /// New entries are blocked for the profile.
    EntryBlocked => "entry_blocked",
    /// An exit for a symbol the profile holds no position in.
    NoPosition => "no_position",
    /// A timer in the past or more than a day ahead.
    TimerRange => "timer_range",
    /// An amount of the check is beyond the range of a decimal.
    ArithmeticOverflow => "arithmetic_overflow",
    /// An entry on the symbol is already in flight.
    EntryInFlight => "entry_in_flight",
    /// The order does not pass the exchange's filters for the symbol (tick, step, notional).
    ExchangeFilter => "exchange_filter",
    /// The store refused to write the exit ahead (no open lifecycle to exit).
    ExitRefused => "exit_refused",
    /// The entry lock's fencing token is no longer current.
    StaleFence => "stale_fence",
    /// The decision was already written ahead, before a restart.
    DecisionReplayed => "decision_replayed",
    /// The entry lock is held by another owner.
    EntryLocked => "entry_locked",
    /// A cancel for an order that is not open.
    UnknownOrder => "unknown_order",
    /// A later reversal on the symbol replaced this entry before it was sent.
    ReversalReplaced => "reversal_replaced",
    /// The reversal's exit ended with the position still open, so its entry was not sent.
    ReversalAbandoned => "reversal_abandoned",
}

impl std::fmt::Display for RefusalRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Rules order by name, so a map keyed by rule lists them as the same map keyed by name would.
impl Ord for RefusalRule {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialOrd for RefusalRule {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// How far ahead a strategy may set a timer: one day.
pub const TIMER_AHEAD_MS_MAX: i64 = 24 * 60 * 60 * 1000;

/// Validates one raw intent against the limits and the context, at kernel time `now_ms`.
pub fn validate(
    raw: &RawIntent,
    limits: &RiskLimits,
    context: &RiskContext,
    now_ms: i64,
) -> Result<ValidIntent, Refusal> {
    if context.intents_this_minute >= limits.intents_per_minute_max {
        return Err(Refusal::RateLimited {
            max: limits.intents_per_minute_max,
        });
    }
    match raw {
        RawIntent::Entry(entry) => validate_entry(entry, limits, context).map(ValidIntent::Entry),
        RawIntent::Exit(exit) => validate_exit(exit, context).map(ValidIntent::Exit),
        RawIntent::Cancel { client_order_id } => Ok(ValidIntent::Cancel {
            client_order_id: ClientOrderId::new(client_order_id)?,
        }),
        RawIntent::SetTimer { at_ms } => {
            // `at_ms` is the strategy's: the difference is checked, as a negative kernel time
            // (a virtual clock) could take it past `i64::MAX`.
            let ahead_ms = at_ms.checked_sub(now_ms);
            if ahead_ms.is_none_or(|ahead_ms| !(0..=TIMER_AHEAD_MS_MAX).contains(&ahead_ms)) {
                return Err(Refusal::TimerOutOfRange { at_ms: *at_ms });
            }
            Ok(ValidIntent::SetTimer { at_ms: *at_ms })
        }
    }
}

fn check_tag(tag: &str) -> Result<String, Refusal> {
    if tag.len() > TAG_BYTES_MAX {
        return Err(Refusal::TagTooLong { bytes: tag.len() });
    }
    if !crate::ids::is_printable(tag) {
        let escaped = crate::ids::escape_unprintable(tag).into_owned();
        return Err(Refusal::TagUnprintable { escaped });
    }
    Ok(tag.to_owned())
}

fn check_fraction(what: &'static str, value: f64) -> Result<Decimal, Refusal> {
    if !(value > 0.0 && value <= 1.0) {
        return Err(Refusal::FractionOutOfRange { what, value });
    }
    Ok(decimal_from_f64(what, value)?)
}

fn order_price(raw: RawPrice) -> Result<OrderPrice, Refusal> {
    Ok(match raw {
        RawPrice::Market => OrderPrice::Market,
        RawPrice::Limit(price) => OrderPrice::Limit(Price::from_f64(price)?),
    })
}

/// The refusal for an amount beyond the range of a decimal.
fn overflow(what: &'static str) -> Refusal {
    Refusal::ArithmeticOverflow { what }
}

fn check_band(price: OrderPrice, last: Price, band_bps: u32) -> Result<(), Refusal> {
    if let OrderPrice::Limit(limit) = price {
        let distance = (limit.get().checked_sub(last.get()))
            .ok_or_else(|| overflow("distance from the last price"))?
            .abs();
        let distance_scaled = distance
            .checked_mul(Decimal::from(10_000))
            .ok_or_else(|| overflow("distance from the last price in bps"))?;
        let band_scaled = last
            .get()
            .checked_mul(Decimal::from(band_bps))
            .ok_or_else(|| overflow("price band"))?;
        if distance_scaled > band_scaled {
            return Err(Refusal::PriceOutsideBand {
                price: limit.get(),
                last: last.get(),
                band_bps,
            });
        }
    }
    Ok(())
}

fn check_entry_allowed(
    symbol: &Symbol,
    limits: &RiskLimits,
    context: &RiskContext,
) -> Result<(), Refusal> {
    if let Some(block) = context.entry_block {
        return Err(Refusal::EntryBlocked(block));
    }
    if !limits.symbols_allowed.contains(symbol) {
        return Err(Refusal::SymbolNotAllowed(symbol.clone()));
    }
    let loss = -context.daily_realized_pnl;
    if loss >= limits.daily_loss_max {
        return Err(Refusal::DailyLossLimit {
            loss,
            max: limits.daily_loss_max,
        });
    }
    if context.positions_open >= limits.positions_open_max {
        return Err(Refusal::TooManyPositions {
            open: context.positions_open,
            max: limits.positions_open_max,
        });
    }
    Ok(())
}

fn validate_entry(
    raw: &RawEntry,
    limits: &RiskLimits,
    context: &RiskContext,
) -> Result<EntryRequest, Refusal> {
    let symbol = Symbol::new(&raw.symbol)?;
    let tag = check_tag(&raw.tag)?;
    check_entry_allowed(&symbol, limits, context)?;
    let price = order_price(raw.price)?;
    let last = context
        .last_price
        .ok_or_else(|| Refusal::NoPrice(symbol.clone()))?;
    check_band(price, last, limits.limit_price_band_bps)?;
    let reference = match price {
        OrderPrice::Market => last,
        OrderPrice::Limit(limit) => limit,
    };
    let qty = entry_qty(raw, price, reference, context)?;
    let notional = Amount::notional(reference, qty)?;
    check_entry_size(notional.get(), limits, context)?;
    let stop_loss = raw.stop_loss.map(Price::from_f64).transpose()?;
    let take_profit = raw.take_profit.map(Price::from_f64).transpose()?;
    check_protective(raw.side, reference, stop_loss, take_profit)?;
    Ok(EntryRequest {
        symbol,
        side: raw.side,
        qty,
        price,
        notional,
        stop_loss,
        take_profit,
        tag,
    })
}

fn entry_qty(
    raw: &RawEntry,
    price: OrderPrice,
    reference: Price,
    context: &RiskContext,
) -> Result<Qty, Refusal> {
    let qty = match raw.size {
        RawSize::BaseQty(qty) => Qty::from_f64(qty)?,
        RawSize::QuoteNotional(notional) => {
            let notional = Amount::positive(decimal_from_f64("notional", notional)?)?;
            let qty = (notional.get().checked_div(reference.get()))
                .ok_or_else(|| overflow("quantity of the notional"))?;
            Qty::new(qty)?
        }
        RawSize::FreeCapitalFraction(fraction) => {
            // The budget is cut to the ledger's 8 places and the quantity sized at the
            // reservation price: the reservation (rounded up to 8 places) never exceeds the
            // budget, so a fraction of 1 commits all the free capital and no more.
            let fraction = check_fraction("free capital fraction", fraction)?;
            let budget = (context.free_capital.checked_mul(fraction))
                .ok_or_else(|| overflow("budget of the free capital fraction"))?
                .round_dp_with_strategy(8, rust_decimal::RoundingStrategy::ToZero);
            let reserved_at = context
                .reserves
                .reservation_price(raw.side, price, reference)?;
            let qty = (budget.checked_div(reserved_at.get()))
                .ok_or_else(|| overflow("quantity of the free capital fraction"))?
                .round_dp_with_strategy(12, rust_decimal::RoundingStrategy::ToZero);
            Qty::new(qty)?
        }
    };
    Ok(qty)
}

fn check_entry_size(
    notional: Decimal,
    limits: &RiskLimits,
    context: &RiskContext,
) -> Result<(), Refusal> {
    if notional > limits.entry_notional_max {
        return Err(Refusal::NotionalAboveMax {
            notional,
            max: limits.entry_notional_max,
        });
    }
    if notional > context.free_capital {
        return Err(Refusal::InsufficientCapital {
            notional,
            free: context.free_capital,
        });
    }
    let exposure = (context.exposure.checked_add(notional))
        .ok_or_else(|| overflow("exposure after the entry"))?;
    let exposure_max = (context.equity.checked_mul(limits.leverage_max))
        .ok_or_else(|| overflow("equity times the leverage limit"))?;
    if exposure > exposure_max {
        return Err(Refusal::LeverageAboveMax {
            exposure,
            equity: context.equity,
            max: limits.leverage_max,
        });
    }
    Ok(())
}

fn check_protective(
    side: PositionSide,
    reference: Price,
    stop_loss: Option<Price>,
    take_profit: Option<Price>,
) -> Result<(), Refusal> {
    // For a long, the stop sits below the entry and the target above; for a short, the reverse.
    let below = |p: Price| p.get() < reference.get();
    let wrong = |what, p: Price| Refusal::ProtectiveOrderWrongSide {
        what,
        price: p.get(),
        reference: reference.get(),
    };
    let long = side == PositionSide::Long;
    if let Some(stop) = stop_loss.filter(|&p| below(p) != long) {
        return Err(wrong("stop loss", stop));
    }
    if let Some(target) = take_profit.filter(|&p| below(p) == long) {
        return Err(wrong("take profit", target));
    }
    Ok(())
}

fn validate_exit(raw: &RawExit, context: &RiskContext) -> Result<ExitRequest, Refusal> {
    let symbol = Symbol::new(&raw.symbol)?;
    let tag = check_tag(&raw.tag)?;
    let fraction = check_fraction("exit fraction", raw.fraction)?;
    let price = order_price(raw.price)?;
    let side = match context.position_side {
        Some(side) if context.position_qty > Decimal::ZERO => side,
        _ => return Err(Refusal::NoPosition(symbol)),
    };
    // Reduce-only: never more than is held.
    let qty = (context.position_qty.checked_mul(fraction))
        .ok_or_else(|| overflow("quantity of the exit fraction"))?;
    let qty = Qty::new(qty.min(context.position_qty))?;
    Ok(ExitRequest {
        symbol,
        side,
        qty,
        price,
        tag,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rust_decimal_macros::dec;

    fn btc() -> Symbol {
        Symbol::new("BTCUSDT").unwrap()
    }

    #[test]
    fn an_entry_block_refusal_says_its_reason_in_words() {
        let refusal = Refusal::EntryBlocked(EntryBlock::HostKillSwitch);
        assert_eq!(
            refusal.to_string(),
            "entries are blocked: the host-wide kill switch is on"
        );
    }

    #[test]
    fn limits_out_of_their_range_are_refused_naming_the_field() {
        let valid = RiskLimits::conservative([btc()]);
        assert_eq!(valid.validate(), Ok(()));
        let cases: Vec<(&str, RiskLimits)> = vec![
            (
                "leverage_max",
                RiskLimits {
                    leverage_max: Decimal::MAX,
                    ..valid.clone()
                },
            ),
            (
                "leverage_max",
                RiskLimits {
                    leverage_max: dec!(0),
                    ..valid.clone()
                },
            ),
            (
                "leverage_max",
                RiskLimits {
                    leverage_max: dec!(125.000000001),
                    ..valid.clone()
                },
            ),
            (
                "entry_notional_max",
                RiskLimits {
                    entry_notional_max: dec!(-1),
                    ..valid.clone()
                },
            ),
            (
                "entry_notional_max",
                RiskLimits {
                    entry_notional_max: dec!(1000000000.5),
                    ..valid.clone()
                },
            ),
            (
                "daily_loss_max",
                RiskLimits {
                    daily_loss_max: dec!(-0.01),
                    ..valid.clone()
                },
            ),
            (
                "positions_open_max",
                RiskLimits {
                    positions_open_max: u32::MAX,
                    ..valid.clone()
                },
            ),
            (
                "limit_price_band_bps",
                RiskLimits {
                    limit_price_band_bps: 10_001,
                    ..valid.clone()
                },
            ),
            (
                "intents_per_minute_max",
                RiskLimits {
                    intents_per_minute_max: 0,
                    ..valid.clone()
                },
            ),
            (
                "intents_per_minute_max",
                RiskLimits {
                    intents_per_minute_max: 6_001,
                    ..valid.clone()
                },
            ),
        ];
        for (field, limits) in cases {
            let error = limits.validate().unwrap_err();
            assert_eq!(error.field, field, "{error}");
            assert!(error.to_string().starts_with(field), "{error}");
        }
        let edges = RiskLimits {
            leverage_max: dec!(125),
            entry_notional_max: dec!(0.00000001),
            daily_loss_max: dec!(0),
            positions_open_max: 0,
            intents_per_minute_max: INTENTS_PER_MINUTE_CEILING,
            ..valid
        };
        assert_eq!(edges.validate(), Ok(()));
    }

    fn context() -> RiskContext {
        RiskContext {
            last_price: Some(Price::new(dec!(100)).unwrap()),
            free_capital: dec!(1000),
            equity: dec!(1000),
            exposure: dec!(0),
            positions_open: 0,
            position_qty: dec!(0),
            position_side: None,
            daily_realized_pnl: dec!(0),
            intents_this_minute: 0,
            entry_block: None,
            reserves: EntryReserves::default(),
        }
    }

    fn entry(size: RawSize, price: RawPrice) -> RawIntent {
        RawIntent::Entry(RawEntry {
            symbol: "BTCUSDT".into(),
            side: PositionSide::Long,
            size,
            price,
            stop_loss: None,
            take_profit: None,
            tag: "t".into(),
        })
    }

    fn check(raw: &RawIntent, context: &RiskContext) -> Result<ValidIntent, Refusal> {
        validate(raw, &RiskLimits::conservative([btc()]), context, 0)
    }

    #[test]
    fn fraction_of_free_capital_is_sized_at_the_last_price() {
        let valid = check(
            &entry(RawSize::FreeCapitalFraction(0.5), RawPrice::Market),
            &context(),
        )
        .unwrap();
        let ValidIntent::Entry(entry) = valid else {
            panic!("not an entry")
        };
        assert_eq!(entry.qty.get(), dec!(5));
        assert_eq!(entry.notional.get(), dec!(500));
    }

    /// The reservation the engine makes for `entry`: its quantity at the reservation price,
    /// rounded up to the ledger's places.
    fn reservation(entry: &EntryRequest, reserves: EntryReserves, last: Price) -> Decimal {
        let reference = match entry.price {
            OrderPrice::Market => last,
            OrderPrice::Limit(limit) => limit,
        };
        let at = reserves
            .reservation_price(entry.side, entry.price, reference)
            .unwrap();
        crate::ledger::round_up(entry.qty.get() * at.get())
    }

    #[test]
    fn the_whole_free_capital_fits_with_the_fee_and_slippage_reserves() {
        let reserves = EntryReserves {
            slippage_bps: 100,
            fee_bps: 10,
        };
        let context = RiskContext {
            reserves,
            ..context()
        };
        let valid = check(
            &entry(RawSize::FreeCapitalFraction(1.0), RawPrice::Market),
            &context,
        )
        .unwrap();
        let ValidIntent::Entry(entry) = valid else {
            panic!("not an entry")
        };
        // 1000 / (100 * 1.011), cut to 12 places.
        assert_eq!(entry.qty.get(), dec!(9.891196834817));
        let reserved = reservation(&entry, reserves, context.last_price.unwrap());
        assert!(reserved <= dec!(1000), "{reserved}");
        assert!(reserved > dec!(999.99999), "{reserved}");
        // A limit buy never fills above its price: it reserves the fee alone.
        assert_eq!(
            reserves.allowance_bps(
                PositionSide::Long,
                OrderPrice::Limit(context.last_price.unwrap())
            ),
            10
        );
        assert_eq!(
            reserves.allowance_bps(
                PositionSide::Short,
                OrderPrice::Limit(context.last_price.unwrap())
            ),
            110
        );
    }

    #[test]
    fn hostile_numbers_are_refused_as_invalid_numbers() {
        for size in [
            RawSize::BaseQty(f64::NAN),
            RawSize::BaseQty(f64::INFINITY),
            RawSize::BaseQty(-1.0),
            RawSize::BaseQty(1e300),
            RawSize::QuoteNotional(f64::NEG_INFINITY),
            RawSize::FreeCapitalFraction(f64::NAN),
            RawSize::FreeCapitalFraction(2.0),
        ] {
            let refusal = check(&entry(size, RawPrice::Market), &context()).unwrap_err();
            assert_eq!(
                refusal.rule(),
                RefusalRule::InvalidNumber,
                "{size:?}: {refusal}"
            );
        }
        let refusal = check(
            &entry(RawSize::BaseQty(1.0), RawPrice::Limit(f64::NAN)),
            &context(),
        )
        .unwrap_err();
        assert_eq!(refusal.rule(), RefusalRule::InvalidNumber);
    }

    #[test]
    fn entry_is_refused_when_capital_is_reserved() {
        let mut context = context();
        context.free_capital = dec!(50);
        let refusal = check(
            &entry(RawSize::QuoteNotional(100.0), RawPrice::Market),
            &context,
        )
        .unwrap_err();
        assert_eq!(refusal.rule(), RefusalRule::InsufficientCapital);
    }

    #[test]
    fn each_rule_refuses_with_its_own_name() {
        let base = context();
        let cases: Vec<(RawIntent, RiskContext, RefusalRule)> = vec![
            (
                entry(RawSize::QuoteNotional(2000.0), RawPrice::Market),
                base.clone(),
                RefusalRule::NotionalMax,
            ),
            (
                entry(RawSize::BaseQty(1.0), RawPrice::Limit(200.0)),
                base.clone(),
                RefusalRule::PriceBand,
            ),
            (
                entry(RawSize::BaseQty(1.0), RawPrice::Market),
                RiskContext {
                    positions_open: 3,
                    ..base.clone()
                },
                RefusalRule::PositionsMax,
            ),
            (
                entry(RawSize::BaseQty(1.0), RawPrice::Market),
                RiskContext {
                    exposure: dec!(950),
                    ..base.clone()
                },
                RefusalRule::LeverageMax,
            ),
            (
                entry(RawSize::BaseQty(1.0), RawPrice::Market),
                RiskContext {
                    daily_realized_pnl: dec!(-500),
                    ..base.clone()
                },
                RefusalRule::DailyLoss,
            ),
            (
                entry(RawSize::BaseQty(1.0), RawPrice::Market),
                RiskContext {
                    intents_this_minute: 60,
                    ..base.clone()
                },
                RefusalRule::RateLimit,
            ),
            (
                entry(RawSize::BaseQty(1.0), RawPrice::Market),
                RiskContext {
                    entry_block: Some(EntryBlock::HostKillSwitch),
                    ..base.clone()
                },
                RefusalRule::EntryBlocked,
            ),
            (
                entry(RawSize::BaseQty(1.0), RawPrice::Market),
                RiskContext {
                    last_price: None,
                    ..base.clone()
                },
                RefusalRule::NoPrice,
            ),
        ];
        for (raw, context, rule) in cases {
            let refusal = check(&raw, &context).unwrap_err();
            assert_eq!(refusal.rule(), rule, "{refusal}");
        }
    }

    #[test]
    fn symbol_outside_the_allowed_set_is_refused() {
        let mut raw = entry(RawSize::BaseQty(1.0), RawPrice::Market);
        if let RawIntent::Entry(entry) = &mut raw {
            entry.symbol = "ETHUSDT".into();
        }
        assert_eq!(
            check(&raw, &context()).unwrap_err().rule(),
            RefusalRule::SymbolNotAllowed
        );
    }

    #[test]
    fn stop_loss_above_a_long_entry_is_refused() {
        let mut raw = entry(RawSize::BaseQty(1.0), RawPrice::Market);
        if let RawIntent::Entry(entry) = &mut raw {
            entry.stop_loss = Some(101.0);
        }
        assert_eq!(
            check(&raw, &context()).unwrap_err().rule(),
            RefusalRule::ProtectiveOrderSide
        );
    }

    #[test]
    fn exit_is_reduce_only_and_allowed_while_entries_are_blocked() {
        let context = RiskContext {
            position_qty: dec!(2),
            position_side: Some(PositionSide::Short),
            entry_block: Some(EntryBlock::Quarantined),
            ..context()
        };
        let raw = RawIntent::Exit(RawExit {
            symbol: "BTCUSDT".into(),
            fraction: 1.0,
            price: RawPrice::Market,
            tag: String::new(),
        });
        let ValidIntent::Exit(exit) = check(&raw, &context).unwrap() else {
            panic!("not an exit")
        };
        assert_eq!(exit.qty.get(), dec!(2));
        assert_eq!(exit.side, PositionSide::Short);
        let no_position = RiskContext {
            position_qty: dec!(0),
            ..context
        };
        assert_eq!(
            check(&raw, &no_position).unwrap_err().rule(),
            RefusalRule::NoPosition
        );
    }

    #[test]
    fn entry_under_the_largest_leverage_limit_is_refused_not_a_panic() {
        let limits = RiskLimits {
            leverage_max: Decimal::MAX,
            ..RiskLimits::conservative([btc()])
        };
        let raw = entry(RawSize::BaseQty(1.0), RawPrice::Market);
        let refusal = validate(&raw, &limits, &context(), 0).unwrap_err();
        assert_eq!(
            refusal,
            Refusal::ArithmeticOverflow {
                what: "equity times the leverage limit"
            }
        );
        assert_eq!(refusal.rule(), RefusalRule::ArithmeticOverflow);
    }

    #[test]
    fn entry_against_a_context_at_the_edge_of_a_decimal_is_refused_not_a_panic() {
        let limits = RiskLimits {
            entry_notional_max: Decimal::MAX,
            ..RiskLimits::conservative([btc()])
        };
        let huge_exposure = RiskContext {
            free_capital: Decimal::MAX,
            exposure: Decimal::MAX,
            ..context()
        };
        let raw = entry(RawSize::BaseQty(1.0), RawPrice::Market);
        assert_eq!(
            validate(&raw, &limits, &huge_exposure, 0)
                .unwrap_err()
                .rule(),
            RefusalRule::ArithmeticOverflow
        );
        let tiny_price = RiskContext {
            last_price: Some(Price::new(Decimal::new(1, 12)).unwrap()),
            free_capital: Decimal::MAX,
            ..context()
        };
        let raw = entry(RawSize::FreeCapitalFraction(1.0), RawPrice::Market);
        assert_eq!(
            validate(&raw, &limits, &tiny_price, 0).unwrap_err().rule(),
            RefusalRule::ArithmeticOverflow
        );
    }

    #[test]
    fn timer_from_a_negative_kernel_time_is_refused_not_a_panic() {
        let raw = RawIntent::SetTimer { at_ms: i64::MAX };
        let limits = RiskLimits::conservative([btc()]);
        assert_eq!(
            validate(&raw, &limits, &context(), -1).unwrap_err().rule(),
            RefusalRule::TimerRange
        );
    }

    /// The name of a rule in a match that lists every variant: adding a rule without adding it
    /// here does not compile, and a rule missing from `ALL` fails the test below.
    fn name_by_match(rule: RefusalRule) -> &'static str {
        use RefusalRule::*;
        match rule {
            InvalidNumber | InvalidId | TagTooLong | TagUnprintable | SymbolNotAllowed
            | NoPrice | NotionalMax | InsufficientCapital | PositionsMax | LeverageMax
            | PriceBand | ProtectiveOrderSide | RateLimit | DailyLoss | EntryBlocked
            | NoPosition | TimerRange | ArithmeticOverflow | EntryInFlight | ExchangeFilter
            | ExitRefused | StaleFence | DecisionReplayed | EntryLocked | UnknownOrder
            | ReversalReplaced | ReversalAbandoned => rule.as_str(),
        }
    }

    #[test]
    fn every_rule_is_in_all_once_with_a_distinct_snake_case_name() {
        use RefusalRule::*;
        let every = [
            InvalidNumber,
            InvalidId,
            TagTooLong,
            TagUnprintable,
            SymbolNotAllowed,
            NoPrice,
            NotionalMax,
            InsufficientCapital,
            PositionsMax,
            LeverageMax,
            PriceBand,
            ProtectiveOrderSide,
            RateLimit,
            DailyLoss,
            EntryBlocked,
            NoPosition,
            TimerRange,
            ArithmeticOverflow,
            EntryInFlight,
            ExchangeFilter,
            ExitRefused,
            StaleFence,
            DecisionReplayed,
            EntryLocked,
            UnknownOrder,
            ReversalReplaced,
            ReversalAbandoned,
        ];
        for rule in every {
            assert!(
                RefusalRule::ALL.contains(&rule),
                "{rule} is missing from ALL"
            );
            assert_eq!(name_by_match(rule), rule.as_str());
        }
        let names: BTreeSet<&str> = RefusalRule::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), RefusalRule::ALL.len(), "a name is used twice");
        assert_eq!(
            RefusalRule::ALL.len(),
            every.len(),
            "ALL lists a rule twice"
        );
        for name in names {
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name} is not snake_case"
            );
        }
    }

    #[test]
    fn a_rule_serializes_as_its_name_and_back() {
        for &rule in RefusalRule::ALL {
            let json = serde_json::to_string(&rule).unwrap();
            assert_eq!(json, format!("\"{}\"", rule.as_str()));
            assert_eq!(serde_json::from_str::<RefusalRule>(&json).unwrap(), rule);
            assert_eq!(rule.to_string(), rule.as_str());
        }
        assert!(serde_json::from_str::<RefusalRule>("\"no_such_rule\"").is_err());
    }

    #[test]
    fn rules_order_by_name_as_reports_list_them() {
        let mut by_rule = RefusalRule::ALL.to_vec();
        by_rule.sort();
        let mut by_name: Vec<&str> = RefusalRule::ALL.iter().map(|r| r.as_str()).collect();
        by_name.sort();
        let sorted: Vec<&str> = by_rule.iter().map(|r| r.as_str()).collect();
        assert_eq!(sorted, by_name);
        // A report's count by rule is the JSON a count by name was.
        let counts: std::collections::BTreeMap<RefusalRule, usize> = RefusalRule::ALL
            .iter()
            .enumerate()
            .map(|(n, &rule)| (rule, n))
            .collect();
        let named: std::collections::BTreeMap<&str, usize> =
            counts.iter().map(|(rule, &n)| (rule.as_str(), n)).collect();
        assert_eq!(
            serde_json::to_string(&counts).unwrap(),
            serde_json::to_string(&named).unwrap()
        );
    }

    #[test]
    fn a_tag_with_unprintable_characters_is_refused_and_named_escaped() {
        for tag in ["line\nforged", "esc\u{1b}[2J", "rtl\u{202E}override"] {
            let mut raw = entry(RawSize::BaseQty(1.0), RawPrice::Market);
            if let RawIntent::Entry(entry) = &mut raw {
                entry.tag = tag.to_owned();
            }
            let refusal = check(&raw, &context()).unwrap_err();
            assert_eq!(refusal.rule(), RefusalRule::TagUnprintable);
            assert!(
                refusal.to_string().chars().all(|c| !c.is_control()),
                "the reason is printable: {refusal}"
            );
        }
        let mut raw = entry(RawSize::BaseQty(1.0), RawPrice::Market);
        if let RawIntent::Entry(entry) = &mut raw {
            entry.tag = "momentum ↑ entry".to_owned();
        }
        assert!(check(&raw, &context()).is_ok());
    }

    #[test]
    fn oversized_tag_and_bad_cancel_id_are_refused() {
        let mut raw = entry(RawSize::BaseQty(1.0), RawPrice::Market);
        if let RawIntent::Entry(entry) = &mut raw {
            entry.tag = "x".repeat(TAG_BYTES_MAX + 1);
        }
        assert_eq!(
            check(&raw, &context()).unwrap_err().rule(),
            RefusalRule::TagTooLong
        );
        let cancel = RawIntent::Cancel {
            client_order_id: "not valid!".into(),
        };
        assert_eq!(
            check(&cancel, &context()).unwrap_err().rule(),
            RefusalRule::InvalidId
        );
    }

    /// Random decimals: half of them plain amounts (so that intents get past the early rules
    /// to the arithmetic of the later ones), half at the edges: zero, the smallest step, the
    /// extremes of the type, and any mantissa at any scale.
    fn any_decimal() -> impl Strategy<Value = Decimal> {
        prop_oneof![
            4 => (0..100_000_000_i64, 0..=4_u32).prop_map(|(units, scale)| Decimal::new(units, scale)),
            1 => Just(Decimal::ZERO),
            1 => Just(Decimal::ONE),
            1 => Just(Decimal::new(1, 28)),
            1 => Just(Decimal::MAX),
            1 => Just(Decimal::MIN),
            1 => Just(crate::money::MAGNITUDE_MAX),
            1 => (any::<i64>(), 0..=28_u32).prop_map(|(mantissa, scale)| Decimal::new(mantissa, scale)),
            1 => (any::<u32>(), any::<u32>(), any::<u32>(), any::<bool>(), 0..=28_u32).prop_map(
                |(lo, mid, hi, negative, scale)| Decimal::from_parts(lo, mid, hi, negative, scale)
            ),
        ]
    }

    /// Random floats as a plugin may send them: NaN, infinities, subnormals, huge and tiny
    /// magnitudes, and plain fractions and prices.
    fn any_float() -> impl Strategy<Value = f64> {
        prop_oneof![
            1 => any::<f64>(),
            2 => 0.0..=1.0_f64,
            2 => 0.0..1e6_f64,
            1 => Just(f64::MIN_POSITIVE),
            1 => Just(1e-13),
            1 => Just(1e12),
        ]
    }

    fn any_price() -> impl Strategy<Value = RawPrice> {
        prop_oneof![
            Just(RawPrice::Market),
            any_float().prop_map(RawPrice::Limit)
        ]
    }

    fn any_symbol() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => Just("BTCUSDT".to_owned()),
            1 => Just("ETHUSDT".to_owned()),
            1 => ".{0,8}",
        ]
    }

    fn any_side() -> impl Strategy<Value = PositionSide> {
        prop_oneof![Just(PositionSide::Long), Just(PositionSide::Short)]
    }

    fn any_intent() -> impl Strategy<Value = RawIntent> {
        let size = prop_oneof![
            any_float().prop_map(RawSize::BaseQty),
            any_float().prop_map(RawSize::QuoteNotional),
            any_float().prop_map(RawSize::FreeCapitalFraction),
        ];
        let entry = (
            any_symbol(),
            any_side(),
            size,
            any_price(),
            proptest::option::of(any_float()),
            proptest::option::of(any_float()),
        )
            .prop_map(|(symbol, side, size, price, stop_loss, take_profit)| {
                RawIntent::Entry(RawEntry {
                    symbol,
                    side,
                    size,
                    price,
                    stop_loss,
                    take_profit,
                    tag: String::new(),
                })
            });
        let exit =
            (any_symbol(), any_float(), any_price()).prop_map(|(symbol, fraction, price)| {
                RawIntent::Exit(RawExit {
                    symbol,
                    fraction,
                    price,
                    tag: String::new(),
                })
            });
        prop_oneof![
            4 => entry,
            2 => exit,
            1 => any::<i64>().prop_map(|at_ms| RawIntent::SetTimer { at_ms }),
        ]
    }

    /// A count or limit: mostly small, sometimes anything.
    fn any_count() -> impl Strategy<Value = u32> {
        prop_oneof![3 => 0..10_u32, 1 => any::<u32>()]
    }

    fn any_limits() -> impl Strategy<Value = RiskLimits> {
        (
            proptest::bool::weighted(0.9),
            any_decimal(),
            any::<u32>(),
            any_decimal(),
            any::<u32>(),
            any::<u32>(),
            any_decimal(),
        )
            .prop_map(
                |(btc_allowed, notional_max, positions, leverage, band, rate, loss)| RiskLimits {
                    symbols_allowed: btc_allowed.then(btc).into_iter().collect(),
                    entry_notional_max: notional_max,
                    positions_open_max: positions,
                    leverage_max: leverage,
                    limit_price_band_bps: band,
                    intents_per_minute_max: rate,
                    daily_loss_max: loss,
                },
            )
    }

    /// A context as a candle's close and the store's rows may leave it: the last price is
    /// whatever the candle's close converts to, the amounts anything a decimal holds.
    fn any_context() -> impl Strategy<Value = RiskContext> {
        (
            any_float(),
            (any_decimal(), any_decimal(), any_decimal(), any_decimal()),
            any_count(),
            proptest::option::of(any_side()),
            prop_oneof![3 => Just(Decimal::ZERO), 1 => any_decimal()],
            any_count(),
        )
            .prop_map(
                |(close, (free, equity, exposure, qty), open, side, pnl, intents)| RiskContext {
                    last_price: Price::from_f64(close).ok(),
                    free_capital: free,
                    equity,
                    exposure,
                    positions_open: open,
                    position_qty: qty,
                    position_side: side,
                    daily_realized_pnl: pnl,
                    intents_this_minute: intents,
                    entry_block: None,
                    reserves: EntryReserves::default(),
                },
            )
    }

    proptest! {
        /// A fraction of free capital, whatever the price, reserves and side, never reserves
        /// more than the free capital.
        #[test]
        fn a_fraction_of_free_capital_never_reserves_more_than_is_free(
            free_cents in 1u64..1_000_000_000_000u64,
            close in 1e-6f64..1e7,
            fraction in 1e-6f64..=1.0,
            slippage_bps in 0u32..=10_000,
            fee_bps in 0u32..=10_000,
            short in any::<bool>(),
            limit in any::<bool>(),
        ) {
            let reserves = EntryReserves { slippage_bps, fee_bps };
            let last = Price::from_f64(close).unwrap();
            let context = RiskContext {
                last_price: Some(last),
                free_capital: Decimal::new(free_cents as i64, 2),
                equity: Decimal::new(free_cents as i64, 2),
                reserves,
                ..context()
            };
            let raw = RawIntent::Entry(RawEntry {
                symbol: "BTCUSDT".into(),
                side: if short { PositionSide::Short } else { PositionSide::Long },
                size: RawSize::FreeCapitalFraction(fraction),
                price: if limit { RawPrice::Limit(close) } else { RawPrice::Market },
                stop_loss: None,
                take_profit: None,
                tag: "t".into(),
            });
            let limits = RiskLimits {
                entry_notional_max: Decimal::from(ENTRY_NOTIONAL_CEILING),
                ..RiskLimits::conservative([btc()])
            };
            if let Ok(ValidIntent::Entry(entry)) = validate(&raw, &limits, &context, 0) {
                let reserved = reservation(&entry, reserves, last);
                prop_assert!(reserved <= context.free_capital, "{reserved} > {}", context.free_capital);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// Whatever the limits, the intent and the context hold, validation answers: an
        /// accepted entry respects the limits it was checked against, and nothing panics.
        #[test]
        fn validation_never_panics_and_accepted_entries_respect_the_limits(
            raw in any_intent(),
            limits in any_limits(),
            context in any_context(),
            now_ms in any::<i64>(),
        ) {
            match validate(&raw, &limits, &context, now_ms) {
                Ok(ValidIntent::Entry(entry)) => {
                    prop_assert!(entry.notional.get() <= limits.entry_notional_max);
                    prop_assert!(entry.notional.get() <= context.free_capital);
                    prop_assert!(context.positions_open < limits.positions_open_max);
                }
                Ok(ValidIntent::Exit(exit)) => {
                    prop_assert!(exit.qty.get() <= context.position_qty);
                }
                Ok(_) | Err(_) => {}
            }
        }
    }
}
