//! Binance USDⓈ-M Futures error codes, by the names Binance's documentation gives them.
//!
//! Binance answers a refused request with `{"code": -2013, "msg": "Order does not exist."}`:
//! the code is stable, the message may vary. The adapter decides on codes (a stale timestamp is
//! retried, an unknown order is `None`, a duplicate client order id is settled by a query); the
//! paper exchange and the simulator answer with the same codes, so code that handles one handles
//! all three. Every code Keel reads or writes is named here, and only here.
//!
//! ```
//! use keel_exchange::codes;
//!
//! let code: i64 = -2013;
//! assert_eq!(code, codes::NO_SUCH_ORDER);
//! ```

// 10xx: general server or network issues.

/// An internal error; the request may be retried.
pub const DISCONNECTED: i64 = -1001;
/// Too many requests (request weight) in the interval; the IP may be banned next.
pub const TOO_MANY_REQUESTS: i64 = -1003;
/// An unexpected response from the message bus: the execution status is unknown.
pub const UNEXPECTED_RESP: i64 = -1006;
/// A timeout waiting for the backend: the send and execution status are unknown.
pub const TIMEOUT: i64 = -1007;
/// Too many new orders in the interval (the order rate limit).
pub const TOO_MANY_ORDERS: i64 = -1015;
/// The request's timestamp is outside the `recvWindow`, or ahead of the server's clock.
pub const INVALID_TIMESTAMP: i64 = -1021;
/// The request's signature is not valid.
pub const INVALID_SIGNATURE: i64 = -1022;

// 11xx: request issues.

/// Illegal characters in a parameter.
pub const ILLEGAL_CHARS: i64 = -1100;
/// Too many parameters for the endpoint (also: too many streams on one connection).
pub const TOO_MANY_PARAMETERS: i64 = -1101;
/// A mandatory parameter was not sent, was empty or malformed.
pub const MANDATORY_PARAM_EMPTY_OR_MALFORMED: i64 = -1102;
/// A parameter was sent that the request does not take.
pub const PARAM_NOT_REQUIRED: i64 = -1106;
/// A quantity or price with more decimals than the symbol allows (also: a malformed number).
pub const BAD_PRECISION: i64 = -1111;
/// An invalid `timeInForce`.
pub const INVALID_TIMEINFORCE: i64 = -1115;
/// An invalid order type.
pub const INVALID_ORDER_TYPE: i64 = -1116;
/// An invalid side.
pub const INVALID_SIDE: i64 = -1117;
/// An invalid kline interval.
pub const BAD_INTERVAL: i64 = -1120;
/// An invalid (unknown) symbol.
pub const BAD_SYMBOL: i64 = -1121;
/// The listen key does not exist (it expired or was closed).
pub const INVALID_LISTEN_KEY: i64 = -1125;
/// A parameter's value is not valid.
pub const INVALID_PARAMETER: i64 = -1130;
/// `recvWindow` is not below 60000 ms (the name of Binance's spot list, which has it).
pub const BAD_RECV_WINDOW: i64 = -1131;

// 20xx: processing issues.

/// A cancel was refused: the order is unknown or already closed.
pub const CANCEL_REJECTED: i64 = -2011;
/// The order does not exist.
pub const NO_SUCH_ORDER: i64 = -2013;
/// The API key's format is invalid.
pub const BAD_API_KEY_FMT: i64 = -2014;
/// Invalid API key, IP or permissions for the action.
pub const REJECTED_MBX_KEY: i64 = -2015;
/// The margin is insufficient (Binance's spelling).
pub const MARGIN_NOT_SUFFICIEN: i64 = -2019;
/// A conditional order would trigger immediately.
pub const ORDER_WOULD_IMMEDIATELY_TRIGGER: i64 = -2021;
/// A reduce-only order would not reduce the position.
pub const REDUCE_ONLY_REJECT: i64 = -2022;
/// The account reached the maximum number of open orders.
pub const MAX_OPEN_ORDER_EXCEEDED: i64 = -2025;

// 40xx: filters and other issues.

/// A price below zero.
pub const PRICE_LESS_THAN_ZERO: i64 = -4001;
/// A quantity not above zero, or outside the symbol's lot size.
pub const QTY_LESS_THAN_ZERO: i64 = -4003;
/// A stop price below zero.
pub const STOP_PRICE_LESS_THAN_ZERO: i64 = -4006;
/// A price not a multiple of the symbol's tick size.
pub const PRICE_NOT_INCREASED_BY_TICK_SIZE: i64 = -4014;
/// An invalid leverage.
pub const INVALID_LEVERAGE: i64 = -4028;
/// An invalid `workingType`.
pub const INVALID_WORKING_TYPE: i64 = -4031;
/// An invalid margin type.
pub const INVALID_MARGIN_TYPE: i64 = -4044;
/// The account reached the maximum number of stop (conditional) orders.
pub const MAX_STOP_ORDER_EXCEEDED: i64 = -4045;
/// The margin type asked for is already the symbol's.
pub const NO_NEED_TO_CHANGE_MARGIN_TYPE: i64 = -4046;
/// The position mode asked for is already the account's.
pub const NO_NEED_TO_CHANGE_POSITION_SIDE: i64 = -4059;
/// The client order id is already used by an open order (the name says transaction id: the
/// code is shared with transfers).
pub const DUPLICATED_CLIENT_TRAN_ID: i64 = -4116;
/// The order type does not take `closePosition`.
pub const TARGET_STRATEGY_INVALID: i64 = -4136;
/// A quantity was sent with `closePosition=true`.
pub const QUANTITY_EXISTS_WITH_CLOSE_POSITION: i64 = -4137;
/// The order's notional is below the symbol's minimum.
pub const MIN_NOTIONAL: i64 = -4164;

// 50xx: order execution issues.

/// The path or method does not exist. Binance's list does not name this code; its servers
/// answer it, and so does the simulator.
pub const INVALID_PATH: i64 = -5000;
/// A post-only (GTX) order would have traded as taker, so it was rejected.
pub const GTX_ORDER_REJECT: i64 = -5022;
