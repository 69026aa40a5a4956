//! Recent closed candles, kept for warm-up.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use crate::ids::Symbol;
use crate::market::Candle;

/// The last closed candles the engines holding it were fed, ordered by open time (then symbol),
/// at most `max` of them: what a strategy instance that starts fresh is replayed before its first
/// live call.
///
/// Each engine has its own unless it is given a shared one ([`super::ProfileEngine::share_history`]).
/// Engines fed the same candles share one (`keel serve` keeps one per host): a candle is kept
/// once however many engines see it, so the memory does not grow with the number of profiles.
#[derive(Debug)]
pub struct CandleHistory {
    max: usize,
    candles: Mutex<VecDeque<Candle>>,
}

fn key(candle: &Candle) -> (i64, &str) {
    (candle.open_time_ms, candle.symbol.as_str())
}

impl CandleHistory {
    /// An empty history of at most `max` candles; 0 keeps none (warm-up off).
    pub fn new(max: usize) -> CandleHistory {
        CandleHistory {
            max,
            candles: Mutex::new(VecDeque::new()),
        }
    }

    fn kept(&self) -> MutexGuard<'_, VecDeque<Candle>> {
        // A panic while holding the lock leaves a consistent deque (every change is one call).
        self.candles.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a candle, once: one already kept is skipped, and when full the oldest goes.
    pub fn record(&self, candle: &Candle) {
        if self.max == 0 {
            return;
        }
        let mut kept = self.kept();
        let at = match kept.back() {
            Some(last) if key(last) >= key(candle) => {
                match kept.binary_search_by(|c| key(c).cmp(&key(candle))) {
                    Ok(_) => return,
                    Err(at) => at,
                }
            }
            _ => kept.len(),
        };
        if at == 0 && kept.len() == self.max {
            // Older than everything kept, and no room.
            return;
        }
        kept.insert(at, candle.clone());
        if kept.len() > self.max {
            kept.pop_front();
        }
    }

    /// Keeps candles from elsewhere (the exchange's recent history), in any order; those already
    /// kept are skipped, and only the newest `max` of all stay.
    pub fn extend(&self, candles: impl IntoIterator<Item = Candle>) {
        let mut kept = self.kept();
        let mut all: Vec<Candle> = kept.drain(..).chain(candles).collect();
        all.sort_by(|a, b| key(a).cmp(&key(b)));
        all.dedup_by(|a, b| key(a) == key(b));
        let skip = all.len().saturating_sub(self.max);
        kept.extend(all.into_iter().skip(skip));
    }

    /// A copy of the candles that opened before `before_open_ms` (all with `None`), oldest first.
    pub fn before(&self, before_open_ms: Option<i64>) -> Vec<Candle> {
        self.kept()
            .iter()
            .filter(|c| before_open_ms.is_none_or(|t| c.open_time_ms < t))
            .cloned()
            .collect()
    }

    /// The open time of the newest candle of `symbol` kept.
    pub fn latest_open_ms(&self, symbol: &Symbol) -> Option<i64> {
        self.kept()
            .iter()
            .rev()
            .find(|c| &c.symbol == symbol)
            .map(|c| c.open_time_ms)
    }

    /// Candles kept.
    pub fn len(&self) -> usize {
        self.kept().len()
    }

    /// True when no candle is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candle(symbol: &str, minute: i64) -> Candle {
        Candle {
            symbol: Symbol::new(symbol).unwrap(),
            open_time_ms: minute * 60_000,
            close_time_ms: (minute + 1) * 60_000,
            open: 1.0,
            high: 1.0,
            low: 1.0,
            close: 1.0,
            volume: 1.0,
        }
    }

    fn keys(history: &CandleHistory) -> Vec<(i64, String)> {
        history
            .before(None)
            .iter()
            .map(|c| (c.open_time_ms / 60_000, c.symbol.to_string()))
            .collect()
    }

    #[test]
    fn keeps_each_candle_once_in_order_and_at_most_max() {
        let history = CandleHistory::new(3);
        for minute in [1, 2, 2, 4, 3, 3, 1] {
            history.record(&candle("BTCUSDT", minute));
        }
        let btc = |m| (m, "BTCUSDT".to_owned());
        assert_eq!(keys(&history), vec![btc(2), btc(3), btc(4)]);
        history.record(&candle("ETHUSDT", 4));
        history.record(&candle("ETHUSDT", 4));
        assert_eq!(
            keys(&history),
            vec![btc(3), btc(4), (4, "ETHUSDT".to_owned())]
        );
        assert_eq!(
            history.latest_open_ms(&Symbol::new("BTCUSDT").unwrap()),
            Some(4 * 60_000)
        );
        assert_eq!(history.before(Some(4 * 60_000)).len(), 1);
    }

    #[test]
    fn extend_merges_and_keeps_the_newest() {
        let history = CandleHistory::new(4);
        history.record(&candle("BTCUSDT", 5));
        history.extend((1..=5).rev().map(|m| candle("BTCUSDT", m)));
        let minutes: Vec<i64> = keys(&history).into_iter().map(|(m, _)| m).collect();
        assert_eq!(minutes, vec![2, 3, 4, 5]);
        let off = CandleHistory::new(0);
        off.record(&candle("BTCUSDT", 1));
        off.extend([candle("BTCUSDT", 2)]);
        assert!(off.is_empty());
    }
}
