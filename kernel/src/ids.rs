//! Identifiers of the trading domain, each a newtype with a checked constructor.

use std::fmt;

use arrayvec::ArrayString;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Why a string was refused as an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The symbol is empty, too long, or has characters outside `[A-Z0-9]`.
    #[error("invalid symbol {0:?}: expected 1 to {max} characters of A-Z and 0-9", max = Symbol::LEN_MAX)]
    Symbol(String),
    /// The client order id breaks Binance's `^[\.A-Z\:/a-z0-9_-]{1,36}$`.
    #[error("invalid client order id {0:?}: expected 1 to 36 characters of [.A-Z:/a-z0-9_-]")]
    ClientOrderId(String),
    /// The text is not a UUID.
    #[error("invalid {what} {text:?}: expected a UUID")]
    Uuid {
        /// Which id was being parsed.
        what: &'static str,
        /// The refused text.
        text: String,
    },
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh random id.
            pub fn new_random() -> Self {
                Self(Uuid::new_v4())
            }

            /// Wraps an existing UUID.
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The UUID inside.
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }

            /// Parses the canonical text form of a UUID.
            pub fn parse(text: &str) -> Result<Self, IdError> {
                Uuid::parse_str(text).map(Self).map_err(|_| IdError::Uuid {
                    what: $what,
                    text: text.to_owned(),
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<Self, IdError> {
                Self::parse(text)
            }
        }
    };
}

uuid_id!(
    /// A tenant: the `sub` of the user's JWT. Every tenant row carries it.
    UserId,
    "user id"
);
uuid_id!(
    /// A trading profile: one strategy, one capital account, one exchange account, one owner.
    ProfileId,
    "profile id"
);
uuid_id!(
    /// An uploaded plugin version of one user.
    PluginId,
    "plugin id"
);

/// The longest symbol accepted.
const SYMBOL_LEN_MAX: usize = 32;

/// An instrument on an exchange, such as `BTCUSDT`. Kept inline, without a heap allocation: a
/// candle, a price or an order carrying it is cloned without one (one candle reaches every
/// profile engine trading its symbol).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Symbol(ArrayString<SYMBOL_LEN_MAX>);

impl Symbol {
    /// The longest symbol accepted.
    pub const LEN_MAX: usize = SYMBOL_LEN_MAX;

    /// Checks that `text` is 1 to [`Symbol::LEN_MAX`] characters of `A-Z` and `0-9`.
    pub fn new(text: &str) -> Result<Self, IdError> {
        let valid = !text.is_empty()
            && text.len() <= Self::LEN_MAX
            && text
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        match ArrayString::from(text) {
            Ok(inline) if valid => Ok(Self(inline)),
            _ => Err(IdError::Symbol(text.to_owned())),
        }
    }

    /// The symbol as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Symbol {
    type Error = IdError;
    fn try_from(text: String) -> Result<Self, IdError> {
        Self::new(&text)
    }
}

impl From<Symbol> for String {
    fn from(symbol: Symbol) -> String {
        symbol.0.to_string()
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an order does to a position: open it or close it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IntentKind {
    /// Opens or adds to a position.
    Entry,
    /// Reduces or closes a position (reduce-only).
    Exit,
}

impl IntentKind {
    fn letter(self) -> char {
        match self {
            IntentKind::Entry => 'E',
            IntentKind::Exit => 'X',
        }
    }
}

/// The longest client order id Binance accepts.
const CLIENT_ORDER_ID_LEN_MAX: usize = 36;

/// The SHA-256 of (profile, symbol) that derived client order ids carry, in lowercase hex. A
/// thread remembers the last one it computed: an engine derives and attributes its ids for one
/// profile and mostly one symbol, and the digest is the most of what a derivation costs.
fn profile_symbol_hex(profile: ProfileId, symbol: &Symbol) -> [u8; 64] {
    thread_local! {
        static LAST: std::cell::Cell<Option<(ProfileId, Symbol, [u8; 64])>> =
            const { std::cell::Cell::new(None) };
    }
    LAST.with(|last| {
        let kept = last.take();
        let hex = match kept {
            Some((p, s, hex)) if p == profile && s == *symbol => hex,
            _ => {
                let mut hasher = Sha256::new();
                hasher.update(profile.as_uuid().as_bytes());
                hasher.update(symbol.as_str().as_bytes());
                let mut hex = [0_u8; 64];
                hex::encode_to_slice(hasher.finalize(), &mut hex)
                    .expect("64 hex digits for 32 bytes");
                hex
            }
        };
        last.set(Some((profile, symbol.clone(), hex)));
        hex
    })
}

/// The id the kernel gives an order before the exchange sees it.
///
/// It is derived, not random: the same decision re-made after a crash yields the same id, so the
/// kernel can ask the exchange whether the order exists instead of sending it twice. Kept
/// inline like [`Symbol`]: an order, its fills and its events carry it, and copy it without a
/// heap allocation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClientOrderId(ArrayString<CLIENT_ORDER_ID_LEN_MAX>);

impl ClientOrderId {
    /// The longest id Binance accepts.
    pub const LEN_MAX: usize = CLIENT_ORDER_ID_LEN_MAX;

    /// Checks `text` against Binance's `^[\.A-Z\:/a-z0-9_-]{1,36}$`.
    pub fn new(text: &str) -> Result<Self, IdError> {
        match ArrayString::from(text) {
            Ok(inline) if Self::is_valid(text) => Ok(Self(inline)),
            _ => Err(IdError::ClientOrderId(text.to_owned())),
        }
    }

    fn is_valid(text: &str) -> bool {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b".:/_-".contains(&b);
        !text.is_empty() && text.len() <= Self::LEN_MAX && text.bytes().all(allowed)
    }

    /// Derives the id of decision `sequence` of `kind` for `profile` on `symbol`.
    ///
    /// The form is `k{E|X}{sequence}-{digest}`: readable enough to grep for, and the digest of
    /// (profile, symbol), in lowercase hex cut to what fits, keeps ids of different profiles
    /// apart on a shared exchange account. Written in place, without a heap allocation: every
    /// order and every attributed exchange event derives one.
    pub fn derive(profile: ProfileId, symbol: &Symbol, sequence: u64, kind: IntentKind) -> Self {
        let hex = profile_symbol_hex(profile, symbol);
        let mut id = ArrayString::new();
        // At most 23 characters: `k`, the letter, 20 digits of a u64 and the dash.
        id.push('k');
        id.push(kind.letter());
        id.push_str(itoa::Buffer::new().format(sequence));
        id.push('-');
        let digits = &hex[..Self::LEN_MAX - id.len()];
        id.push_str(std::str::from_utf8(digits).expect("hex digits are ASCII"));
        assert!(
            Self::is_valid(&id),
            "a derived client order id is always valid: {id:?}"
        );
        Self(id)
    }

    /// Whether this id is one [`ClientOrderId::derive`] makes for `profile` on `symbol`.
    ///
    /// This is how an exchange event is attributed: an account may be shared by several
    /// profiles (and owners), and the id is the only part of an order or a fill that says whose
    /// it is. An id the kernel did not derive (an order placed by hand on the account) belongs
    /// to no profile.
    pub fn is_derived_for(&self, profile: ProfileId, symbol: &Symbol) -> bool {
        let Some((kind, sequence)) = self.decision() else {
            return false;
        };
        *self == Self::derive(profile, symbol, sequence, kind)
    }

    /// The (kind, sequence) in the head `k{E|X}{sequence}-` of a derived id.
    fn decision(&self) -> Option<(IntentKind, u64)> {
        let rest = self.0.strip_prefix('k')?;
        let kind = match rest.as_bytes().first()? {
            b'E' => IntentKind::Entry,
            b'X' => IntentKind::Exit,
            _ => return None,
        };
        let (sequence, _digest) = rest[1..].split_once('-')?;
        if sequence.is_empty() || !sequence.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((kind, sequence.parse().ok()?))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ClientOrderId {
    type Error = IdError;
    fn try_from(text: String) -> Result<Self, IdError> {
        Self::new(&text)
    }
}

impl From<ClientOrderId> for String {
    fn from(id: ClientOrderId) -> String {
        id.0.to_string()
    }
}

impl fmt::Display for ClientOrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a name a person gave (a profile's, a plugin's) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty, or longer than the limit.
    #[error("must be 1 to {chars_max} characters")]
    Length {
        /// The most characters accepted.
        chars_max: usize,
    },
    /// Only white space.
    #[error("must contain a visible character")]
    Blank,
    /// A control character (NUL included), a line or paragraph separator, or an invisible
    /// formatting character such as a bidirectional override.
    #[error("must not contain {0:?} (a control or invisible formatting character)")]
    Forbidden(char),
}

/// Checks a name a person gives and others read (in lists, logs, the dashboard): 1 to
/// `chars_max` characters, not only white space, and none that is a control character, a line
/// or paragraph separator or an invisible formatting one (bidirectional overrides and
/// isolates, zero-width characters), which could hide or disguise what the name says.
pub fn check_name(text: &str, chars_max: usize) -> Result<(), NameError> {
    let chars = text.chars().count();
    if chars == 0 || chars > chars_max {
        return Err(NameError::Length { chars_max });
    }
    if let Some(c) = text.chars().find(|c| is_forbidden_in_name(*c)) {
        return Err(NameError::Forbidden(c));
    }
    if text.chars().all(char::is_whitespace) {
        return Err(NameError::Blank);
    }
    Ok(())
}

/// `text` with every character a name may not hold (see [`check_name`]: control characters,
/// line separators, invisible formatting) written as its escape (`\n`, `\u{1b}`): how text
/// from an untrusted source (a plugin's init error, its log lines, an intent's tag) is printed
/// to a terminal, a log or a page, so it cannot forge lines or hide what it says.
pub fn escape_unprintable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(is_forbidden_in_name) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_forbidden_in_name(c) {
            // `escape_debug` writes `\n` and `\t`, and leaves some formatting characters as
            // they are: those get their code point.
            let debug = c.escape_debug();
            if debug.len() > 1 {
                escaped.extend(debug);
            } else {
                escaped.extend(c.escape_unicode());
            }
        } else {
            escaped.push(c);
        }
    }
    std::borrow::Cow::Owned(escaped)
}

/// Whether `text` holds only characters a name may hold (see [`check_name`]); any length.
pub fn is_printable(text: &str) -> bool {
    !text.chars().any(is_forbidden_in_name)
}

fn is_forbidden_in_name(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // Zero-width space, non-joiner, joiner; left-to-right and right-to-left marks.
            '\u{200B}'..='\u{200F}'
            // Line and paragraph separators; bidirectional embeddings and overrides.
            | '\u{2028}'..='\u{202E}'
            // Word joiner, invisible operators, bidirectional isolates, deprecated formatting.
            | '\u{2060}'..='\u{206F}'
            // Arabic letter mark, byte order mark, interlinear annotation.
            | '\u{061C}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}'
        )
}

/// A fencing token: grows with every acquisition of a lock, never reset.
///
/// A write made under a lock carries the fence it was granted; the store refuses a write whose
/// fence is older than the lock's current one, so a holder that lost its lock cannot write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fence(pub i64);

impl fmt::Display for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_client_order_id_is_deterministic_and_valid() {
        let profile = ProfileId::parse("7d1f3e8a-5b2c-4c4e-9a51-0f6f0d3c2b1a").unwrap();
        let symbol = Symbol::new("BTCUSDT").unwrap();
        let a = ClientOrderId::derive(profile, &symbol, u64::MAX, IntentKind::Entry);
        let b = ClientOrderId::derive(profile, &symbol, u64::MAX, IntentKind::Entry);
        assert_eq!(a, b);
        assert!(a.as_str().len() <= ClientOrderId::LEN_MAX);
        let exit = ClientOrderId::derive(profile, &symbol, u64::MAX, IntentKind::Exit);
        assert_ne!(a, exit);
        let other = Symbol::new("ETHUSDT").unwrap();
        assert_ne!(
            a,
            ClientOrderId::derive(profile, &other, u64::MAX, IntentKind::Entry)
        );
    }

    /// The ids of orders already placed must stay the ids derived for them: a restarted kernel
    /// asks the exchange for them by the id it derives again. Pinned against the digest written
    /// out whole in hex and cut to fit.
    #[test]
    fn a_derived_id_is_the_head_and_the_hex_digest_cut_to_36_characters() {
        let profile = ProfileId::parse("7d1f3e8a-5b2c-4c4e-9a51-0f6f0d3c2b1a").unwrap();
        let symbol = Symbol::new("BTCUSDT").unwrap();
        let mut hasher = Sha256::new();
        hasher.update(profile.as_uuid().as_bytes());
        hasher.update(symbol.as_str().as_bytes());
        let digest = hex::encode(hasher.finalize());
        for sequence in [0, 7, 1_700_000_000_000, u64::MAX] {
            for kind in [IntentKind::Entry, IntentKind::Exit] {
                let head = format!("k{}{sequence}-", kind.letter());
                let expected = format!("{head}{}", &digest[..36 - head.len()]);
                let id = ClientOrderId::derive(profile, &symbol, sequence, kind);
                assert_eq!(id.as_str(), expected);
            }
        }
        assert_eq!(
            ClientOrderId::derive(profile, &symbol, 7, IntentKind::Entry).as_str(),
            format!("kE7-{}", &digest[..32])
        );
    }

    #[test]
    fn a_derived_id_is_attributed_to_its_profile_and_symbol_only() {
        let profile = ProfileId::parse("7d1f3e8a-5b2c-4c4e-9a51-0f6f0d3c2b1a").unwrap();
        let other = ProfileId::parse("0b7c2a1e-3f4d-4e5a-8b6c-7d8e9f0a1b2c").unwrap();
        let btc = Symbol::new("BTCUSDT").unwrap();
        let eth = Symbol::new("ETHUSDT").unwrap();
        for sequence in [0, 7, 1_700_000_000_000, u64::MAX] {
            for kind in [IntentKind::Entry, IntentKind::Exit] {
                let id = ClientOrderId::derive(profile, &btc, sequence, kind);
                assert!(id.is_derived_for(profile, &btc), "{id}");
                assert!(!id.is_derived_for(other, &btc), "{id}");
                assert!(!id.is_derived_for(profile, &eth), "{id}");
            }
        }
        for foreign in [
            "manual-order-1",
            "kE",
            "kE-",
            "kE12",
            "kQ1-abc",
            "kE1.5-abc",
            "x",
        ] {
            let id = ClientOrderId::new(foreign).unwrap();
            assert!(!id.is_derived_for(profile, &btc), "{foreign}");
        }
    }

    #[test]
    fn unprintable_text_is_escaped_and_printable_text_kept() {
        assert_eq!(escape_unprintable("plain text é"), "plain text é");
        assert_eq!(
            escape_unprintable("a\nforged line\u{1b}[2J"),
            "a\\nforged line\\u{1b}[2J"
        );
        assert_eq!(
            escape_unprintable("x\u{202E}y\u{200B}"),
            "x\\u{202e}y\\u{200b}"
        );
        assert!(is_printable("momentum entry"));
        assert!(!is_printable("tag\rnext"));
    }

    #[test]
    fn names_refuse_control_blank_and_bidi_text() {
        assert_eq!(check_name("momentum BTC", 64), Ok(()));
        assert_eq!(check_name("Ünïcødé 名前 ✓", 64), Ok(()));
        assert_eq!(check_name(&"n".repeat(64), 64), Ok(()));
        assert_eq!(
            check_name(&"n".repeat(65), 64),
            Err(NameError::Length { chars_max: 64 })
        );
        assert_eq!(check_name("", 64), Err(NameError::Length { chars_max: 64 }));
        assert_eq!(check_name("   ", 64), Err(NameError::Blank));
        assert_eq!(check_name("\u{3000}\u{a0}", 64), Err(NameError::Blank));
        for bad in [
            "a\0b",
            "tab\there",
            "line\n",
            "\u{7f}",
            "\u{85}",
            "x\u{202E}gpj.exe",
            "\u{2066}a",
            "zero\u{200B}width",
            "\u{FEFF}bom",
        ] {
            assert!(
                matches!(check_name(bad, 64), Err(NameError::Forbidden(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn client_order_id_refuses_binance_invalid_text() {
        assert!(ClientOrderId::new("").is_err());
        assert!(ClientOrderId::new(&"a".repeat(37)).is_err());
        assert!(ClientOrderId::new("has space").is_err());
        assert!(ClientOrderId::new("ok.A:z/0_9-").is_ok());
    }

    #[test]
    fn symbol_refuses_lowercase_and_empty() {
        assert!(Symbol::new("btcusdt").is_err());
        assert!(Symbol::new("").is_err());
        assert_eq!(Symbol::new("BTCUSDT").unwrap().as_str(), "BTCUSDT");
    }
}
