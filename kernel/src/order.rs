//! The order status state machine: one exhaustive transition table.
//!
//! Order updates arrive late, twice and out of order (a REST "NEW" answered after the stream
//! said "FILLED"). The table makes status monotonic: a stale update never moves an order
//! backwards, and a contradictory one is an error for reconciliation to look at.

use serde::{Deserialize, Serialize};

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Written ahead by the kernel, not yet answered by the exchange. The recovery point: after a
    /// crash the kernel asks the exchange about this client order id instead of guessing.
    PendingSubmit,
    /// The exchange's answer was lost or ambiguous (timeout, 5xx, "unknown error"). Capital stays
    /// reserved and the entry lock stays held until a query or reconciliation resolves it.
    Unknown,
    /// Accepted by the exchange and resting.
    New,
    /// Some quantity filled, the rest resting.
    PartiallyFilled,
    /// Completely filled. Terminal.
    Filled,
    /// Cancelled, possibly after partial fills. Terminal.
    Canceled,
    /// Refused by the exchange; nothing filled. Terminal.
    Rejected,
    /// Expired by the exchange (time in force), possibly after partial fills. Terminal.
    Expired,
}

impl OrderStatus {
    /// Every status, for exhaustive tests and metrics.
    pub const ALL: [OrderStatus; 8] = [
        OrderStatus::PendingSubmit,
        OrderStatus::Unknown,
        OrderStatus::New,
        OrderStatus::PartiallyFilled,
        OrderStatus::Filled,
        OrderStatus::Canceled,
        OrderStatus::Rejected,
        OrderStatus::Expired,
    ];

    /// True when no further update can change the order.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            OrderStatus::Filled
                | OrderStatus::Canceled
                | OrderStatus::Rejected
                | OrderStatus::Expired
        )
    }

    /// True while the order may still fill or be cancelled: it holds a reservation.
    pub fn is_open(self) -> bool {
        !self.is_terminal()
    }

    /// The status as stored in the database and shown in APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::PendingSubmit => "PENDING_SUBMIT",
            OrderStatus::Unknown => "UNKNOWN",
            OrderStatus::New => "NEW",
            OrderStatus::PartiallyFilled => "PARTIALLY_FILLED",
            OrderStatus::Filled => "FILLED",
            OrderStatus::Canceled => "CANCELED",
            OrderStatus::Rejected => "REJECTED",
            OrderStatus::Expired => "EXPIRED",
        }
    }

    /// Parses the stored form written by [`OrderStatus::as_str`].
    pub fn parse(text: &str) -> Option<OrderStatus> {
        OrderStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Applies a reported status to the current one, by the transition table.
    pub fn apply(self, reported: OrderStatus) -> Result<Transition, InvalidTransition> {
        use OrderStatus::*;
        use Transition::*;
        let transition = match (self, reported) {
            (PendingSubmit, PendingSubmit)
            | (Unknown, Unknown)
            | (New, New)
            | (PartiallyFilled, PartiallyFilled)
            | (Filled, Filled)
            | (Canceled, Canceled)
            | (Rejected, Rejected)
            | (Expired, Expired) => Same,
            // The write-ahead row learns anything the exchange says.
            (PendingSubmit, _) => Advance(reported),
            // Only the kernel reports Unknown; after an answer, a late timeout changes nothing.
            (_, Unknown) => Stale,
            (_, PendingSubmit) => Stale,
            (Unknown, _) => Advance(reported),
            (New, PartiallyFilled | Filled | Canceled | Expired) => Advance(reported),
            (New, Rejected) => {
                return Err(InvalidTransition {
                    from: self,
                    to: reported,
                });
            }
            (PartiallyFilled, Filled | Canceled | Expired) => Advance(reported),
            (PartiallyFilled, New) => Stale,
            (PartiallyFilled, Rejected) => {
                return Err(InvalidTransition {
                    from: self,
                    to: reported,
                });
            }
            // A terminal order only hears echoes of its past (stale) or contradictions.
            (Filled | Canceled | Expired, New | PartiallyFilled) => Stale,
            (Filled | Canceled | Rejected | Expired, _) => {
                return Err(InvalidTransition {
                    from: self,
                    to: reported,
                });
            }
        };
        Ok(transition)
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What applying a reported status does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The order moves forward to this status.
    Advance(OrderStatus),
    /// The report repeats the current status (a fill may still carry news).
    Same,
    /// The report is older than what is known; it is ignored.
    Stale,
}

/// A report that contradicts what is known, such as "rejected" after "filled".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("order status cannot go from {from} to {to}")]
pub struct InvalidTransition {
    /// The current status.
    pub from: OrderStatus,
    /// The reported status.
    pub to: OrderStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rank(status: OrderStatus) -> u8 {
        match status {
            OrderStatus::PendingSubmit => 0,
            OrderStatus::Unknown => 1,
            OrderStatus::New => 2,
            OrderStatus::PartiallyFilled => 3,
            _ => 4,
        }
    }

    #[test]
    fn every_pair_is_decided_and_status_never_moves_backwards() {
        for from in OrderStatus::ALL {
            for to in OrderStatus::ALL {
                match from.apply(to) {
                    Ok(Transition::Advance(next)) => {
                        assert_eq!(next, to);
                        assert!(rank(next) > rank(from), "{from} -> {to} moves backwards");
                        assert!(!from.is_terminal(), "terminal {from} advanced to {to}");
                    }
                    Ok(Transition::Same) => assert_eq!(from, to),
                    Ok(Transition::Stale) => assert!(rank(to) <= rank(from), "{from} -> {to}"),
                    Err(e) => assert_eq!((e.from, e.to), (from, to)),
                }
            }
        }
    }

    #[test]
    fn late_new_after_filled_is_stale() {
        assert_eq!(
            OrderStatus::Filled.apply(OrderStatus::New),
            Ok(Transition::Stale)
        );
    }

    #[test]
    fn rejected_after_filled_is_a_contradiction() {
        assert!(OrderStatus::Filled.apply(OrderStatus::Rejected).is_err());
    }

    #[test]
    fn stored_form_round_trips() {
        for status in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
        }
    }
}
