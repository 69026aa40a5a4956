//! `keel bench paper`: how many candles per second the paper exchange takes.

use std::time::Instant;

use keel_kernel::exchange::{OrderRequest, OrderType, PlaceOutcome, SymbolRules};
use keel_kernel::ids::{ClientOrderId, Symbol};
use keel_kernel::market::{Candle, Side};
use keel_kernel::money::{Price, Qty};
use rust_decimal::Decimal;
use serde_json::json;

use keel_exchange::paper::{PaperConfig, PaperEngine, PaperExchange};

/// Arguments of `keel bench paper`.
#[derive(Debug, clap::Args)]
pub struct PaperBenchArgs {
    /// How many candles each measurement feeds.
    #[arg(long, default_value_t = 2_000_000)]
    pub candles: u64,
}

fn rules() -> SymbolRules {
    SymbolRules {
        symbol: Symbol::new("BTCUSDT").expect("valid"),
        tick_size: Decimal::new(1, 1),
        step_size: Decimal::new(1, 3),
        min_qty: Decimal::new(1, 3),
        max_qty: Decimal::new(1000, 0),
        market_step_size: Decimal::new(1, 3),
        market_min_qty: Decimal::new(1, 3),
        market_max_qty: Decimal::new(1000, 0),
        min_notional: Decimal::new(5, 0),
    }
}

fn candle(symbol: &Symbol, n: u64) -> Candle {
    let price = 100.0 + (n % 50) as f64 * 0.1;
    let open_time_ms = i64::try_from(n).expect("fits") * 60_000;
    Candle {
        symbol: symbol.clone(),
        open_time_ms,
        close_time_ms: open_time_ms + 60_000,
        open: price,
        high: price + 0.5,
        low: price - 0.5,
        close: price,
        volume: 1.0,
    }
}

fn rate(candles: u64, started: Instant) -> f64 {
    candles as f64 / started.elapsed().as_secs_f64()
}

/// Feeds `candles` candles with no orders into the bare engine and through the `Exchange`
/// wrapper, then with one resting limit order and a market order every 100 candles, and prints
/// candles per second as JSON.
pub async fn run(args: PaperBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.candles > 0, "--candles must be positive");
    let symbol = rules().symbol;
    let feed: Vec<Candle> = (0..args.candles).map(|n| candle(&symbol, n)).collect();

    let mut engine = PaperEngine::new(PaperConfig::default(), [rules()]);
    let started = Instant::now();
    for c in &feed {
        engine.on_candle(c)?;
    }
    let engine_idle = rate(args.candles, started);

    let exchange = PaperExchange::new(PaperConfig::default(), [rules()]);
    let started = Instant::now();
    for c in &feed {
        exchange.feed_candle(c).await?;
    }
    let exchange_idle = rate(args.candles, started);

    let mut engine = PaperEngine::new(PaperConfig::default(), [rules()]);
    let resting = request(
        "rest",
        OrderType::Limit {
            price: Price::new(Decimal::ONE)?,
        },
        10,
    );
    assert!(matches!(engine.place(&resting), PlaceOutcome::Accepted(_)));
    let started = Instant::now();
    for (n, c) in feed.iter().enumerate() {
        if n % 100 == 0 {
            let placed = engine.place(&request(&format!("m{n}"), OrderType::Market, 1));
            assert!(matches!(placed, PlaceOutcome::Accepted(_)), "{placed:?}");
        }
        engine.on_candle(c)?;
        drop(engine.take_events());
    }
    let engine_trading = rate(args.candles, started);
    let report = json!({
        "bench": "paper",
        "candles": args.candles,
        "engine_no_orders_candles_per_s": engine_idle.round(),
        "exchange_no_orders_candles_per_s": exchange_idle.round(),
        "engine_resting_order_and_market_every_100_candles_per_s": engine_trading.round(),
    });
    println!("{report}");
    Ok(())
}

fn request(id: &str, order_type: OrderType, qty: i64) -> OrderRequest {
    OrderRequest {
        client_order_id: ClientOrderId::new(id).expect("valid"),
        symbol: rules().symbol,
        side: Side::Buy,
        order_type,
        qty: Qty::new(Decimal::from(qty)).expect("positive"),
        reduce_only: false,
    }
}
