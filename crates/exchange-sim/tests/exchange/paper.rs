//! Paper fill rules on hand-made candle sequences.

use keel_exchange::codes;
use keel_exchange::paper::{PaperConfig, PaperEngine, PaperError, PaperExchange};
use keel_kernel::exchange::{
    Exchange, Interval, OrderRequest, OrderType, PlaceOutcome, SymbolRules, UserEvent,
};
use keel_kernel::ids::{ClientOrderId, Symbol};
use keel_kernel::market::{Candle, Side};
use keel_kernel::money::{Price, Qty};
use keel_kernel::order::OrderStatus;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

pub fn btc() -> Symbol {
    Symbol::new("BTCUSDT").unwrap()
}

pub fn rules() -> SymbolRules {
    SymbolRules {
        symbol: btc(),
        tick_size: dec!(0.1),
        step_size: dec!(0.001),
        min_qty: dec!(0.001),
        max_qty: dec!(1000),
        market_step_size: dec!(0.001),
        market_min_qty: dec!(0.001),
        market_max_qty: dec!(1000),
        min_notional: dec!(5),
    }
}

fn candle(minute: i64, open: f64, high: f64, low: f64, close: f64) -> Candle {
    Candle {
        symbol: btc(),
        open_time_ms: minute * 60_000,
        close_time_ms: (minute + 1) * 60_000,
        open,
        high,
        low,
        close,
        volume: 10.0,
    }
}

fn order(id: &str, side: Side, order_type: OrderType, qty: Decimal) -> OrderRequest {
    OrderRequest {
        client_order_id: ClientOrderId::new(id).unwrap(),
        symbol: btc(),
        side,
        order_type,
        qty: Qty::new(qty).unwrap(),
        reduce_only: false,
    }
}

fn limit(price: Decimal) -> OrderType {
    OrderType::Limit {
        price: Price::new(price).unwrap(),
    }
}

fn fee_free() -> PaperConfig {
    PaperConfig {
        taker_fee_bps: Decimal::ZERO,
        maker_fee_bps: Decimal::ZERO,
        ..PaperConfig::default()
    }
}

fn fills(engine: &mut PaperEngine) -> Vec<keel_kernel::exchange::Fill> {
    engine
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            UserEvent::Fill(fill) => Some(fill),
            UserEvent::Order(_) => None,
        })
        .collect()
}

fn status(engine: &PaperEngine, id: &str) -> OrderStatus {
    engine
        .order(&btc(), &ClientOrderId::new(id).unwrap())
        .unwrap()
        .status
}

#[test]
fn market_order_fills_at_the_next_candles_open_not_the_last_close() {
    let mut engine = PaperEngine::new(fee_free(), [rules()]);
    engine
        .on_candle(&candle(0, 100.0, 105.0, 95.0, 104.0))
        .unwrap();
    let outcome = engine.place(&order("m1", Side::Buy, OrderType::Market, dec!(1)));
    assert!(matches!(outcome, PlaceOutcome::Accepted(_)), "{outcome:?}");
    assert!(
        fills(&mut engine).is_empty(),
        "nothing fills before a new candle"
    );
    engine
        .on_candle(&candle(1, 110.0, 112.0, 108.0, 111.0))
        .unwrap();
    let fills = fills(&mut engine);
    assert_eq!(fills.len(), 1);
    assert_eq!(fills[0].price.get(), dec!(110));
    assert_eq!(
        fills[0].time_ms, 60_000,
        "stamped at the open it filled at, not at the close"
    );
    assert_eq!(status(&engine, "m1"), OrderStatus::Filled);
}

#[test]
fn limit_buy_fills_only_when_the_low_reaches_it_at_the_limit_price() {
    let mut engine = PaperEngine::new(fee_free(), [rules()]);
    engine
        .on_candle(&candle(0, 100.0, 101.0, 99.0, 100.0))
        .unwrap();
    engine.place(&order("l1", Side::Buy, limit(dec!(95)), dec!(1)));
    engine
        .on_candle(&candle(1, 100.0, 101.0, 96.0, 97.0))
        .unwrap();
    assert!(
        fills(&mut engine).is_empty(),
        "a low of 96 does not reach 95"
    );
    assert_eq!(status(&engine, "l1"), OrderStatus::New);
    engine
        .on_candle(&candle(2, 97.0, 98.0, 94.0, 96.0))
        .unwrap();
    let fills = fills(&mut engine);
    assert_eq!(fills.len(), 1);
    assert_eq!(fills[0].price.get(), dec!(95));
    assert!(fills[0].maker);
    assert_eq!(
        fills[0].time_ms, 120_000,
        "the open of the candle that filled it"
    );
}

#[test]
fn limit_sell_gapped_through_fills_at_the_open_as_taker() {
    let mut engine = PaperEngine::new(PaperConfig::default(), [rules()]);
    engine
        .on_candle(&candle(0, 100.0, 101.0, 99.0, 100.0))
        .unwrap();
    engine.place(&order("s1", Side::Sell, limit(dec!(102)), dec!(2)));
    engine
        .on_candle(&candle(1, 105.0, 106.0, 104.0, 105.0))
        .unwrap();
    let fills = fills(&mut engine);
    assert_eq!(
        fills[0].price.get(),
        dec!(105),
        "a gap fills at the better open"
    );
    assert!(!fills[0].maker);
    // 4 bps taker on 210 notional.
    assert_eq!(fills[0].fee.get(), dec!(0.084));
}

#[test]
fn fees_in_basis_points_and_realised_pnl_move_the_wallet() {
    let config = PaperConfig {
        taker_fee_bps: dec!(10),
        ..PaperConfig::default()
    };
    let mut engine = PaperEngine::new(config, [rules()]);
    engine
        .on_candle(&candle(0, 100.0, 100.0, 100.0, 100.0))
        .unwrap();
    engine.place(&order("b", Side::Buy, OrderType::Market, dec!(2)));
    engine
        .on_candle(&candle(1, 100.0, 111.0, 99.0, 110.0))
        .unwrap();
    assert_eq!(engine.positions()[0].qty, dec!(2));
    assert_eq!(engine.positions()[0].unrealized_pnl.get(), dec!(20));
    engine.place(&order("s", Side::Sell, OrderType::Market, dec!(2)));
    engine
        .on_candle(&candle(2, 110.0, 111.0, 109.0, 110.0))
        .unwrap();
    let fills = fills(&mut engine);
    assert_eq!(fills[1].realized_pnl.get(), dec!(20));
    // Fees: 0.1% of 200 and of 220.
    assert_eq!(fills[0].fee.get() + fills[1].fee.get(), dec!(0.42));
    assert_eq!(engine.balance().wallet_balance.get(), dec!(10019.58));
    assert!(engine.positions()[0].qty.is_zero());
}

#[test]
fn fees_are_rounded_to_the_ledger_scale() {
    let mut engine = PaperEngine::new(PaperConfig::default(), [rules()]);
    engine
        .on_candle(&candle(0, 100.01, 100.01, 100.01, 100.01))
        .unwrap();
    engine.place(&order("b", Side::Buy, OrderType::Market, dec!(0.053)));
    engine
        .on_candle(&candle(1, 100.01, 100.01, 100.01, 100.01))
        .unwrap();
    let fills = fills(&mut engine);
    // 100.01 * 0.053 * 4 bps = 0.002120212: nine places, one more than the ledger keeps.
    assert_eq!(fills[0].fee.get(), dec!(0.00212021));
}

#[test]
fn duplicate_client_order_id_is_refused_while_open_and_reusable_once_closed() {
    let mut engine = PaperEngine::new(fee_free(), [rules()]);
    engine
        .on_candle(&candle(0, 100.0, 100.0, 100.0, 100.0))
        .unwrap();
    engine.place(&order("dup", Side::Buy, limit(dec!(90)), dec!(1)));
    let again = engine.place(&order("dup", Side::Buy, limit(dec!(90)), dec!(1)));
    assert!(
        matches!(
            again,
            PlaceOutcome::Rejected {
                code: codes::DUPLICATED_CLIENT_TRAN_ID,
                ..
            }
        ),
        "{again:?}"
    );
    engine
        .cancel(&btc(), &ClientOrderId::new("dup").unwrap())
        .unwrap();
    let reused = engine.place(&order("dup", Side::Buy, limit(dec!(90)), dec!(1)));
    assert!(matches!(reused, PlaceOutcome::Accepted(_)), "{reused:?}");
}

#[test]
fn reduce_only_is_refused_when_flat_and_never_flips_a_position() {
    let mut engine = PaperEngine::new(fee_free(), [rules()]);
    engine
        .on_candle(&candle(0, 100.0, 100.0, 100.0, 100.0))
        .unwrap();
    let mut exit = order("x", Side::Sell, OrderType::Market, dec!(1));
    exit.reduce_only = true;
    assert!(matches!(
        engine.place(&exit),
        PlaceOutcome::Rejected {
            code: codes::REDUCE_ONLY_REJECT,
            ..
        }
    ));
    engine.place(&order("e", Side::Buy, OrderType::Market, dec!(1)));
    engine
        .on_candle(&candle(1, 100.0, 100.0, 100.0, 100.0))
        .unwrap();
    exit.qty = Qty::new(dec!(3)).unwrap();
    assert!(matches!(engine.place(&exit), PlaceOutcome::Accepted(_)));
    engine
        .on_candle(&candle(2, 100.0, 100.0, 100.0, 100.0))
        .unwrap();
    assert_eq!(status(&engine, "x"), OrderStatus::Expired);
    assert!(engine.positions()[0].qty.is_zero(), "closed, not flipped");
}

#[test]
fn orders_below_filters_are_refused_with_binance_codes() {
    let mut engine = PaperEngine::new(fee_free(), [rules()]);
    engine
        .on_candle(&candle(0, 100.0, 100.0, 100.0, 100.0))
        .unwrap();
    let tiny = engine.place(&order("t", Side::Buy, limit(dec!(100)), dec!(0.001)));
    assert!(
        matches!(
            tiny,
            PlaceOutcome::Rejected {
                code: codes::MIN_NOTIONAL,
                ..
            }
        ),
        "{tiny:?}"
    );
    let fine = engine.place(&order("p", Side::Buy, OrderType::Market, dec!(0.0011)));
    assert!(
        matches!(
            fine,
            PlaceOutcome::Rejected {
                code: codes::BAD_PRECISION,
                ..
            }
        ),
        "{fine:?}"
    );
    let tick = engine.place(&order("k", Side::Buy, limit(dec!(100.05)), dec!(1)));
    assert!(
        matches!(
            tick,
            PlaceOutcome::Rejected {
                code: codes::PRICE_NOT_INCREASED_BY_TICK_SIZE,
                ..
            }
        ),
        "{tick:?}"
    );
}

#[test]
fn latency_keeps_an_order_out_of_candles_that_start_before_it_arrives() {
    let config = PaperConfig {
        latency_ms: 90_000,
        ..fee_free()
    };
    let mut engine = PaperEngine::new(config, [rules()]);
    engine
        .on_candle(&candle(0, 100.0, 100.0, 100.0, 100.0))
        .unwrap();
    engine.place(&order("m", Side::Buy, OrderType::Market, dec!(1)));
    engine
        .on_candle(&candle(1, 101.0, 101.0, 101.0, 101.0))
        .unwrap();
    assert!(
        fills(&mut engine).is_empty(),
        "arrives at 150 s, candle 1 opens at 60 s"
    );
    engine
        .on_candle(&candle(2, 102.0, 102.0, 102.0, 102.0))
        .unwrap();
    assert!(fills(&mut engine).is_empty(), "candle 2 opens at 120 s");
    engine
        .on_candle(&candle(3, 103.0, 103.0, 103.0, 103.0))
        .unwrap();
    assert_eq!(fills(&mut engine)[0].price.get(), dec!(103));
}

fn partial_run(seed: u64) -> Vec<UserEvent> {
    let config = PaperConfig {
        seed,
        partial_fill_probability: 0.7,
        ..PaperConfig::default()
    };
    let mut engine = PaperEngine::new(config, [rules()]);
    let mut events = Vec::new();
    engine
        .on_candle(&candle(0, 100.0, 100.0, 100.0, 100.0))
        .unwrap();
    engine.place(&order("a", Side::Buy, OrderType::Market, dec!(5)));
    engine.place(&order("b", Side::Sell, limit(dec!(101)), dec!(3)));
    for minute in 1..40 {
        let price = 100.0 + (minute % 3) as f64;
        engine
            .on_candle(&candle(minute, price, price + 1.0, price - 1.0, price))
            .unwrap();
        events.extend(engine.take_events());
    }
    events
}

#[test]
fn partial_fills_add_up_and_a_seed_replays_exactly() {
    let first = partial_run(42);
    assert_eq!(first, partial_run(42), "same seed, same history");
    let filled: Decimal = first
        .iter()
        .filter_map(|e| match e {
            UserEvent::Fill(f) if f.client_order_id.as_str() == "a" => Some(f.qty.get()),
            _ => None,
        })
        .sum();
    assert_eq!(filled, dec!(5));
    let parts = first
        .iter()
        .filter(|e| matches!(e, UserEvent::Fill(_)))
        .count();
    assert!(
        parts > 2,
        "a 0.7 partial probability splits fills, got {parts}"
    );
    assert!(
        (0..8).any(|seed| partial_run(seed) != first),
        "the seed drives the partial fills"
    );
}

#[test]
fn candles_out_of_order_and_unknown_symbols_are_refused() {
    let mut engine = PaperEngine::new(fee_free(), [rules()]);
    engine
        .on_candle(&candle(5, 100.0, 100.0, 100.0, 100.0))
        .unwrap();
    assert!(matches!(
        engine.on_candle(&candle(4, 100.0, 100.0, 100.0, 100.0)),
        Err(PaperError::CandleOutOfOrder { .. })
    ));
    let mut eth = candle(6, 100.0, 100.0, 100.0, 100.0);
    eth.symbol = Symbol::new("ETHUSDT").unwrap();
    assert!(matches!(
        engine.on_candle(&eth),
        Err(PaperError::UnknownSymbol(_))
    ));
    assert!(matches!(
        engine.on_candle(&candle(7, 100.0, 90.0, 95.0, 100.0)),
        Err(PaperError::MalformedCandle { .. })
    ));
}

#[tokio::test]
async fn paper_exchange_streams_fills_and_candles_to_subscribers() {
    let exchange = PaperExchange::new(fee_free(), [rules()]);
    let mut events = exchange.user_events().await.unwrap();
    let mut candles = exchange.candles(&btc(), Interval::M1).await.unwrap();
    exchange
        .feed_candle(&candle(0, 100.0, 100.0, 100.0, 100.0))
        .await
        .unwrap();
    let placed = exchange
        .place(&order("m", Side::Buy, OrderType::Market, dec!(1)))
        .await;
    assert!(matches!(placed, PlaceOutcome::Accepted(_)));
    exchange
        .feed_candle(&candle(1, 101.0, 101.0, 101.0, 101.0))
        .await
        .unwrap();
    assert!(
        matches!(events.recv().await, Some(UserEvent::Order(r)) if r.status == OrderStatus::New)
    );
    assert!(matches!(events.recv().await, Some(UserEvent::Fill(f)) if f.price.get() == dec!(101)));
    assert!(
        matches!(events.recv().await, Some(UserEvent::Order(r)) if r.status == OrderStatus::Filled)
    );
    assert_eq!(candles.recv().await.unwrap().open_time_ms, 0);
    assert_eq!(candles.recv().await.unwrap().open_time_ms, 60_000);
    let id = ClientOrderId::new("m").unwrap();
    assert_eq!(exchange.fills(&btc(), &id).await.unwrap().len(), 1);
    assert_eq!(exchange.positions().await.unwrap()[0].qty, dec!(1));
}

#[test]
fn an_order_placed_at_a_candles_open_fills_at_that_open_once() {
    let config = PaperConfig {
        partial_fill_probability: 0.9,
        ..fee_free()
    };
    let mut engine = PaperEngine::new(config, [rules()]);
    engine
        .on_candle(&candle(0, 100.0, 105.0, 95.0, 104.0))
        .unwrap();
    engine.place(&order("exit", Side::Buy, OrderType::Market, dec!(1)));
    let next = candle(1, 110.0, 112.0, 108.0, 111.0);
    engine.on_open(&next).unwrap();
    let at_open = fills(&mut engine);
    assert!(!at_open.is_empty());
    assert!(at_open.iter().all(|f| f.price.get() == dec!(110)));
    // Placed on hearing of that fill: active at the same open, filled at it when fed.
    engine.place(&order("entry", Side::Sell, OrderType::Market, dec!(2)));
    engine.on_candle(&next).unwrap();
    let fed = fills(&mut engine);
    let entry: Vec<_> = fed
        .iter()
        .filter(|f| f.client_order_id.as_str() == "entry")
        .collect();
    assert!(!entry.is_empty(), "{fed:?}");
    assert!(entry.iter().all(|f| f.price.get() == dec!(110)));
    // The order the open matched is not matched again by the same candle: a partial fill's
    // rest waits for the next candle.
    assert!(
        fed.iter().all(|f| f.client_order_id.as_str() != "exit"),
        "{fed:?}"
    );
}

#[test]
fn with_margin_checked_at_fill_an_entry_beyond_the_margin_expires_unfilled() {
    let config = PaperConfig {
        margin_checked_at_fill: true,
        initial_balance: keel_kernel::money::Amount::new(dec!(1000)).unwrap(),
        ..fee_free()
    };
    let mut engine = PaperEngine::new(config, [rules()]);
    engine
        .on_candle(&candle(0, 100.0, 105.0, 95.0, 100.0))
        .unwrap();
    // 10 at the close would cost all the margin; the next open gapped up.
    engine.place(&order("gap", Side::Buy, OrderType::Market, dec!(10)));
    engine
        .on_candle(&candle(1, 102.0, 103.0, 101.0, 102.0))
        .unwrap();
    assert!(fills(&mut engine).is_empty());
    assert_eq!(status(&engine, "gap"), OrderStatus::Expired);
    // Within the margin, the same order fills.
    engine.place(&order("fits", Side::Buy, OrderType::Market, dec!(9.5)));
    engine
        .on_candle(&candle(2, 104.0, 105.0, 103.0, 104.0))
        .unwrap();
    assert_eq!(fills(&mut engine).len(), 1);
    assert_eq!(status(&engine, "fits"), OrderStatus::Filled);
    // Closing never needs margin: a sell of what is held fills even after a fall.
    engine.place(&order("close", Side::Sell, OrderType::Market, dec!(9.5)));
    engine
        .on_candle(&candle(3, 50.0, 51.0, 49.0, 50.0))
        .unwrap();
    assert_eq!(status(&engine, "close"), OrderStatus::Filled);
}
