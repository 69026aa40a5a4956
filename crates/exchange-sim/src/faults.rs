//! The faults the simulator injects, settable at start and at run time (`PUT /admin/faults`).

use serde::{Deserialize, Serialize};

/// The simulator's fault knobs. Rates are probabilities from 0 to 1, drawn from the
/// simulator's seeded RNG.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added to every REST answer.
    pub latency_ms: u64,
    /// Orders that are placed, then answered 503 with Binance's `TIMEOUT` code (status unknown).
    pub unknown_rate: f64,
    /// Orders that are placed, then answered only after `lost_response_hold_ms` (the client
    /// times out first: a lost response).
    pub lost_response_rate: f64,
    /// How long a lost response is held.
    pub lost_response_hold_ms: u64,
    /// Requests refused with `503 Service Unavailable.` before anything is executed (a failure
    /// Binance documents as certain).
    pub unavailable_rate: f64,
    /// Requests refused with `429` and a `Retry-After` header before anything is executed.
    pub rate_limit_rate: f64,
    /// The `Retry-After` of injected 429 answers, in seconds.
    pub retry_after_s: u64,
    /// Added to the server's clock (its `serverTime` and its timestamp check).
    pub clock_skew_ms: i64,
    /// Stream events silently dropped.
    pub stream_drop_rate: f64,
    /// Stream events sent twice.
    pub stream_duplicate_rate: f64,
    /// Stream events held back and sent after the next one.
    pub stream_reorder_rate: f64,
    /// Chance, per stream event, that the server closes the connection instead of sending it.
    pub stream_disconnect_rate: f64,
}

impl Faults {
    /// Checks that every rate is a probability.
    pub fn validate(&self) -> Result<(), String> {
        let rates = [
            ("unknown_rate", self.unknown_rate),
            ("lost_response_rate", self.lost_response_rate),
            ("unavailable_rate", self.unavailable_rate),
            ("rate_limit_rate", self.rate_limit_rate),
            ("stream_drop_rate", self.stream_drop_rate),
            ("stream_duplicate_rate", self.stream_duplicate_rate),
            ("stream_reorder_rate", self.stream_reorder_rate),
            ("stream_disconnect_rate", self.stream_disconnect_rate),
        ];
        for (name, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1, got {rate}"));
            }
        }
        Ok(())
    }

    /// Parses `key=value,key=value` (as given to `keel exchange-sim --faults`), or JSON.
    pub fn parse(text: &str) -> Result<Faults, String> {
        let text = text.trim();
        let faults: Faults = if text.starts_with('{') {
            serde_json::from_str(text).map_err(|e| format!("fault JSON: {e}"))?
        } else {
            let mut object = serde_json::Map::new();
            for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
                let (key, value) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("fault {pair:?} is not key=value"))?;
                let number: serde_json::Value = serde_json::from_str(value.trim())
                    .map_err(|_| format!("fault {key} has a non-numeric value {value:?}"))?;
                object.insert(key.trim().to_owned(), number);
            }
            serde_json::from_value(serde_json::Value::Object(object))
                .map_err(|e| format!("faults: {e}"))?
        };
        faults.validate()?;
        Ok(faults)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_lists_parse_and_bad_ones_are_named() {
        let faults = Faults::parse("unknown_rate=0.25,latency_ms=10").unwrap();
        assert_eq!(faults.unknown_rate, 0.25);
        assert_eq!(faults.latency_ms, 10);
        assert!(
            Faults::parse("unknown_rate=2")
                .unwrap_err()
                .contains("unknown_rate")
        );
        assert!(
            Faults::parse("typo_rate=0.1")
                .unwrap_err()
                .contains("typo_rate")
        );
        assert!(Faults::parse("latency_ms").is_err());
    }
}
