//! The pure logic of Keel's example strategies: numbers in, signals out, no I/O.
//!
//! The same code is compiled into the Wasm plugins (`sma-cross`, `rsi-reversion`) and natively
//! into Keel's host, so `keel bench plugin` compares like with like.

/// Tag of an exit request made by the moving-average cross.
pub const SMA_EXIT_TAG: &str = "sma-cross exit";
/// Tag of a long entry made by the moving-average cross.
pub const SMA_LONG_TAG: &str = "sma-cross long";
/// Tag of a short entry made by the moving-average cross.
pub const SMA_SHORT_TAG: &str = "sma-cross short";

/// Refuses a config key the strategy does not read: a misspelt `fats=10` would otherwise leave
/// `fast` at its default without a word. The error names the key, the nearest known one when
/// it is a likely misspelling, and every key the strategy reads.
pub fn refuse_unknown_keys(pairs: &[(String, String)], known: &[&str]) -> Result<(), String> {
    let Some((key, _)) = pairs.iter().find(|(k, _)| !known.contains(&k.as_str())) else {
        return Ok(());
    };
    let nearest = known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .min()
        .filter(|(distance, _)| *distance <= 2)
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default();
    Err(format!(
        "unknown config key `{key}`{nearest}; the keys are {}",
        known.join(", ")
    ))
}

/// The Levenshtein distance between two short keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substituted = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substituted.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// `key` of the config pairs parsed as `T`, or `default` when absent (the last occurrence wins);
/// the error names the key.
pub fn config_value<T: std::str::FromStr>(
    pairs: &[(String, String)],
    key: &str,
    default: T,
) -> Result<T, String> {
    match pairs.iter().rev().find(|(k, _)| k == key) {
        None => Ok(default),
        Some((_, text)) => text
            .trim()
            .parse()
            .map_err(|_| format!("config key `{key}`: cannot parse {text:?}")),
    }
}

/// Which positions a strategy may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only long positions; a bearish signal only closes a long.
    LongOnly,
    /// Long and short; a signal closes the opposite position and opens its own.
    LongShort,
}

impl Mode {
    /// Parses `long-only` or `long-short`.
    pub fn parse(text: &str) -> Result<Mode, String> {
        match text.trim() {
            "long-only" => Ok(Mode::LongOnly),
            "long-short" => Ok(Mode::LongShort),
            other => Err(format!(
                "mode must be `long-only` or `long-short`, not {other:?}"
            )),
        }
    }
}

/// The position a strategy holds on one instrument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// No position.
    Flat,
    /// A long position.
    Long,
    /// A short position.
    Short,
}

/// What a strategy wants after one candle: close the current position, open a new one, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Signal {
    /// Close the position held on this side.
    pub exit: Option<Holding>,
    /// Open a position on this side.
    pub enter: Option<Holding>,
}

/// A bullish or bearish turn of an indicator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Price momentum turned up.
    Up,
    /// Price momentum turned down.
    Down,
}

/// Turns an indicator turn into a signal for the position held.
pub fn decide(turn: Turn, holding: Holding, mode: Mode) -> Signal {
    match (turn, holding, mode) {
        (Turn::Up, Holding::Flat, _) => Signal {
            exit: None,
            enter: Some(Holding::Long),
        },
        (Turn::Up, Holding::Short, _) => Signal {
            exit: Some(Holding::Short),
            enter: Some(Holding::Long),
        },
        (Turn::Down, Holding::Long, Mode::LongOnly) => Signal {
            exit: Some(Holding::Long),
            enter: None,
        },
        (Turn::Down, Holding::Long, Mode::LongShort) => Signal {
            exit: Some(Holding::Long),
            enter: Some(Holding::Short),
        },
        (Turn::Down, Holding::Flat, Mode::LongShort) => Signal {
            exit: None,
            enter: Some(Holding::Short),
        },
        _ => Signal::default(),
    }
}

/// The largest window an indicator accepts; bounds the memory one instrument costs.
pub const WINDOW_MAX: usize = 10_000;

/// A simple moving average over a fixed window, O(1) per value.
#[derive(Debug, Clone)]
struct Sma {
    window: Vec<f64>,
    next: usize,
    filled: usize,
    sum: f64,
}

impl Sma {
    fn new(len: usize) -> Sma {
        Sma {
            window: vec![0.0; len],
            next: 0,
            filled: 0,
            sum: 0.0,
        }
    }

    fn push(&mut self, value: f64) -> Option<f64> {
        let len = self.window.len();
        self.sum += value - self.window[self.next];
        self.window[self.next] = value;
        self.next = (self.next + 1) % len;
        self.filled = (self.filled + 1).min(len);
        (self.filled == len).then(|| self.sum / len as f64)
    }
}

/// Settings of the moving-average cross.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SmaCrossConfig {
    /// Length of the fast average, in candles.
    pub fast: usize,
    /// Length of the slow average, in candles; greater than `fast`.
    pub slow: usize,
    /// Long only or long and short.
    pub mode: Mode,
    /// Fraction of free capital committed per entry, in (0, 1].
    pub size_fraction: f64,
}

impl SmaCrossConfig {
    /// Reads `fast` (10), `slow` (30), `mode` (`long-only`) and `size_fraction` (0.1) from the
    /// config pairs, and checks them.
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<SmaCrossConfig, String> {
        refuse_unknown_keys(pairs, &["fast", "slow", "mode", "size_fraction"])?;
        let mode: String = config_value(pairs, "mode", "long-only".to_string())?;
        SmaCrossConfig {
            fast: config_value(pairs, "fast", 10)?,
            slow: config_value(pairs, "slow", 30)?,
            mode: Mode::parse(&mode)?,
            size_fraction: config_value(pairs, "size_fraction", 0.1)?,
        }
        .validate()
    }

    /// Checks the settings; the error says which one is wrong.
    pub fn validate(self) -> Result<SmaCrossConfig, String> {
        if self.fast == 0 || self.slow > WINDOW_MAX {
            return Err(format!("fast and slow must be in 1..={WINDOW_MAX}"));
        }
        if self.fast >= self.slow {
            return Err(format!(
                "fast ({}) must be less than slow ({})",
                self.fast, self.slow
            ));
        }
        if !(self.size_fraction > 0.0 && self.size_fraction <= 1.0) {
            return Err(format!(
                "size_fraction must be in (0, 1], not {}",
                self.size_fraction
            ));
        }
        Ok(self)
    }
}

/// A moving-average cross on one instrument: a turn when the fast average crosses the slow one.
#[derive(Debug, Clone)]
pub struct SmaCross {
    fast: Sma,
    slow: Sma,
    fast_above: Option<bool>,
}

impl SmaCross {
    /// A cross with no history yet.
    pub fn new(config: &SmaCrossConfig) -> SmaCross {
        SmaCross {
            fast: Sma::new(config.fast),
            slow: Sma::new(config.slow),
            fast_above: None,
        }
    }

    /// Feeds one close price; returns a turn when the averages cross.
    pub fn on_close(&mut self, close: f64) -> Option<Turn> {
        let fast = self.fast.push(close);
        let slow = self.slow.push(close)?;
        let above = fast? > slow;
        let previous = self.fast_above.replace(above)?;
        match (previous, above) {
            (false, true) => Some(Turn::Up),
            (true, false) => Some(Turn::Down),
            _ => None,
        }
    }
}

/// Settings of the RSI mean reversion.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RsiConfig {
    /// RSI period, in candles.
    pub period: usize,
    /// Below this RSI the market is oversold: a turn up.
    pub oversold: f64,
    /// Above this RSI the market is overbought: a turn down.
    pub overbought: f64,
    /// Long only or long and short.
    pub mode: Mode,
    /// Fraction of free capital committed per entry, in (0, 1].
    pub size_fraction: f64,
}

impl RsiConfig {
    /// Reads `period` (14), `oversold` (30), `overbought` (70), `mode` (`long-only`) and
    /// `size_fraction` (0.1) from the config pairs, and checks them.
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<RsiConfig, String> {
        refuse_unknown_keys(
            pairs,
            &["period", "oversold", "overbought", "mode", "size_fraction"],
        )?;
        let mode: String = config_value(pairs, "mode", "long-only".to_string())?;
        RsiConfig {
            period: config_value(pairs, "period", 14)?,
            oversold: config_value(pairs, "oversold", 30.0)?,
            overbought: config_value(pairs, "overbought", 70.0)?,
            mode: Mode::parse(&mode)?,
            size_fraction: config_value(pairs, "size_fraction", 0.1)?,
        }
        .validate()
    }

    /// Checks the settings; the error says which one is wrong.
    pub fn validate(self) -> Result<RsiConfig, String> {
        if self.period < 2 || self.period > WINDOW_MAX {
            return Err(format!("period must be in 2..={WINDOW_MAX}"));
        }
        if !(0.0 < self.oversold && self.oversold < self.overbought && self.overbought < 100.0) {
            return Err("need 0 < oversold < overbought < 100".to_string());
        }
        if !(self.size_fraction > 0.0 && self.size_fraction <= 1.0) {
            return Err(format!(
                "size_fraction must be in (0, 1], not {}",
                self.size_fraction
            ));
        }
        Ok(self)
    }
}

/// Wilder's relative strength index, with a turn when it leaves an extreme zone.
#[derive(Debug, Clone)]
pub struct RsiReversion {
    config: RsiConfig,
    previous_close: Option<f64>,
    seen: usize,
    average_gain: f64,
    average_loss: f64,
    zone: i8,
}

impl RsiReversion {
    /// An RSI with no history yet.
    pub fn new(config: RsiConfig) -> RsiReversion {
        RsiReversion {
            config,
            previous_close: None,
            seen: 0,
            average_gain: 0.0,
            average_loss: 0.0,
            zone: 0,
        }
    }

    /// Feeds one close price; returns the RSI once the period is full.
    pub fn rsi(&mut self, close: f64) -> Option<f64> {
        let previous = self.previous_close.replace(close)?;
        let change = close - previous;
        let period = self.config.period as f64;
        self.seen += 1;
        let weight = if self.seen <= self.config.period {
            self.seen as f64
        } else {
            period
        };
        self.average_gain += (change.max(0.0) - self.average_gain) / weight;
        self.average_loss += ((-change).max(0.0) - self.average_loss) / weight;
        if self.seen < self.config.period {
            return None;
        }
        if self.average_loss == 0.0 {
            return Some(100.0);
        }
        Some(100.0 - 100.0 / (1.0 + self.average_gain / self.average_loss))
    }

    /// Feeds one close price; a turn up when the RSI enters the oversold zone, down when it
    /// enters the overbought zone (once per visit to a zone).
    pub fn on_close(&mut self, close: f64) -> Option<Turn> {
        let rsi = self.rsi(close)?;
        let zone = if rsi < self.config.oversold {
            -1
        } else if rsi > self.config.overbought {
            1
        } else {
            0
        };
        let entered = zone != self.zone;
        self.zone = zone;
        match (entered, zone) {
            (true, -1) => Some(Turn::Up),
            (true, 1) => Some(Turn::Down),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SmaCrossConfig {
        SmaCrossConfig {
            fast: 2,
            slow: 4,
            mode: Mode::LongOnly,
            size_fraction: 0.5,
        }
    }

    #[test]
    fn sma_cross_turns_up_when_prices_rise_after_a_fall() {
        let mut cross = SmaCross::new(&config());
        let turns: Vec<_> = [10.0, 9.0, 8.0, 7.0, 6.0, 8.0, 10.0, 12.0]
            .map(|p| cross.on_close(p))
            .to_vec();
        assert_eq!(turns.iter().flatten().collect::<Vec<_>>(), vec![&Turn::Up]);
    }

    #[test]
    fn a_misspelt_key_is_refused_naming_the_nearest_one() {
        let pairs = |k: &str| vec![(k.to_owned(), "10".to_owned())];
        let error = SmaCrossConfig::from_pairs(&pairs("fats")).unwrap_err();
        assert_eq!(
            error,
            "unknown config key `fats` (did you mean `fast`?); the keys are fast, slow, mode, \
             size_fraction"
        );
        let error = RsiConfig::from_pairs(&pairs("threshold")).unwrap_err();
        assert!(
            error.starts_with("unknown config key `threshold`; the keys are period"),
            "{error}"
        );
        assert!(SmaCrossConfig::from_pairs(&pairs("fast")).is_ok());
        assert_eq!(edit_distance("size_fraction", "size_fraction"), 0);
        assert_eq!(edit_distance("slwo", "slow"), 2);
        assert_eq!(edit_distance("", "mode"), 4);
    }

    #[test]
    fn sma_cross_refuses_fast_not_below_slow() {
        let bad = SmaCrossConfig {
            fast: 4,
            ..config()
        };
        assert!(bad.validate().unwrap_err().contains("less than slow"));
    }

    #[test]
    fn long_only_never_opens_a_short() {
        assert_eq!(
            decide(Turn::Down, Holding::Flat, Mode::LongOnly),
            Signal::default()
        );
        assert_eq!(
            decide(Turn::Down, Holding::Flat, Mode::LongShort).enter,
            Some(Holding::Short)
        );
    }

    #[test]
    fn rsi_turns_up_after_a_steady_fall() {
        let config = RsiConfig {
            period: 3,
            oversold: 30.0,
            overbought: 70.0,
            mode: Mode::LongOnly,
            size_fraction: 0.1,
        };
        let mut rsi = RsiReversion::new(config.validate().unwrap());
        let turns: Vec<_> = [10.0, 9.0, 8.0, 7.0, 6.0]
            .iter()
            .filter_map(|p| rsi.on_close(*p))
            .collect();
        assert_eq!(turns, vec![Turn::Up]);
    }
}
