//! Generated candles for tests and benchmarks: a seeded random walk, the same for the same seed.

use std::fmt::Write as _;

use keel_kernel::ids::Symbol;
use keel_kernel::market::Candle;
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

/// Length of a generated candle: one minute.
pub const CANDLE_MS: i64 = 60_000;
/// Open time of the first generated candle: 2024-01-01T00:00:00Z.
pub const START_MS: i64 = 1_704_067_200_000;

/// `count` one-minute candles of a random walk starting at 100, with slow trends so that trend
/// and reversion strategies both trade.
pub fn random_walk(symbol: &Symbol, count: usize, seed: u64) -> Vec<Candle> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut price: f64 = 100.0;
    let mut drift: f64 = 0.0;
    (0..count)
        .map(|i| {
            if i % 500 == 0 {
                drift = rng.gen_range(-0.0004..0.0004);
            }
            let open = price;
            let step: f64 = rng.gen_range(-0.002..0.002) + drift;
            // Rounded to cents so the CSV text and the candle agree exactly.
            let close = ((open * (1.0 + step)).max(1.0) * 100.0).round() / 100.0;
            price = close;
            let wick = rng.gen_range(0.0..0.001) * open;
            let open_time_ms = START_MS + i as i64 * CANDLE_MS;
            Candle {
                symbol: symbol.clone(),
                open_time_ms,
                close_time_ms: open_time_ms + CANDLE_MS,
                open,
                high: ((open.max(close) + wick) * 100.0).round() / 100.0,
                low: ((open.min(close) - wick) * 100.0).round() / 100.0,
                close,
                volume: 10.0,
            }
        })
        .collect()
}

/// The candles as a plain `timestamp,open,high,low,close,volume` CSV with a header.
pub fn to_plain_csv(candles: &[Candle]) -> String {
    let mut out = String::from("timestamp,open,high,low,close,volume\n");
    for c in candles {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{}",
            c.open_time_ms, c.open, c.high, c.low, c.close, c.volume
        );
    }
    out
}
