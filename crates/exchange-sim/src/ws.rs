//! The simulator's WebSocket streams, reached as on Binance USDⓈ-M:
//!
//! - raw streams at `/ws/<stream>[/<stream>...]`, and a bare `/ws` to subscribe on later;
//! - combined streams at `/stream?streams=<stream>/<stream>`, each event wrapped as
//!   `{"stream": "<stream>", "data": <event>}`;
//! - the same under Binance's entry points `/public`, `/market` and `/private`, where
//!   `/private/ws?listenKey=<key>&events=<event>/<event>` opens a user-data stream whose
//!   `events` (when given) is the list of event types delivered.
//!
//! On every connection a client may send `SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`,
//! `SET_PROPERTY` and `GET_PROPERTY` (`combined`), answered `{"result": ..., "id": ...}` or
//! with Binance's `{"code", "msg"}` errors.
//!
//! A stream is a kline stream `<symbol>@kline_<interval>` (every USDⓈ-M interval and the
//! simulator's own: the forming candle on every played candle, `x` true once it closes) or a
//! listen key: its account's
//! `ORDER_TRADE_UPDATE`, `TRADE_LITE` and `ACCOUNT_UPDATE` events, then `listenKeyExpired`
//! once the key expires or is deleted. Any other name is accepted and carries nothing, as
//! Binance does with a name it does not publish; a listen key the simulator issued and no
//! longer honours is refused, at connect (HTTP 400) and in `SUBSCRIBE`. Dropped, duplicated
//! and reordered user events and disconnects are injected.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use axum::Json;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::SinkExt;
use keel_exchange::codes;
use keel_kernel::ids::Symbol;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::{SimState, events};

/// The most streams one connection holds, as on Binance USDⓈ-M.
pub const STREAMS_PER_CONNECTION_MAX: usize = 1024;
/// How often a connection checks that its listen keys are still live.
pub const LISTEN_KEY_CHECK_MS: u64 = 1_000;
/// The prefix of every listen key the simulator issues.
pub(crate) const LISTEN_KEY_PREFIX: &str = "simlistenkey";

type Params = HashMap<String, String>;

/// `/ws`, `/public/ws`, `/market/ws`, `/private/ws`: raw payloads, streams from the query
/// (`listenKey`) or subscribed later.
pub(crate) async fn raw(
    State(state): State<SimState>,
    Query(query): Query<Params>,
    upgrade: WebSocketUpgrade,
) -> Response {
    open(state, false, Vec::new(), &query, upgrade)
}

/// `/ws/<stream>/<stream>...`: raw payloads of the streams in the path.
pub(crate) async fn raw_path(
    State(state): State<SimState>,
    Path(streams): Path<String>,
    Query(query): Query<Params>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let names = split(&streams);
    open(state, false, names, &query, upgrade)
}

/// `/stream?streams=<stream>/<stream>`: payloads wrapped with their stream's name.
pub(crate) async fn combined(
    State(state): State<SimState>,
    Query(query): Query<Params>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let names = query.get("streams").map_or_else(Vec::new, |s| split(s));
    open(state, true, names, &query, upgrade)
}

fn split(streams: &str) -> Vec<String> {
    streams
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Why streams cannot be added to a connection.
#[derive(Debug)]
enum Unservable {
    /// A listen key the simulator issued and no longer honours.
    DeadListenKey(String),
    /// More than [`STREAMS_PER_CONNECTION_MAX`] streams.
    TooManyStreams,
}

impl std::fmt::Display for Unservable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unservable::DeadListenKey(key) => write!(
                f,
                "listenKey {key} does not exist or has expired; create one with POST \
                 /fapi/v1/listenKey"
            ),
            Unservable::TooManyStreams => write!(
                f,
                "a connection holds at most {STREAMS_PER_CONNECTION_MAX} streams"
            ),
        }
    }
}

/// The answer to a connection that asks for what cannot be served: HTTP 400 with a Binance
/// error body (Binance's codes for a listen key that does not exist and for too many
/// parameters).
fn refuse(why: Unservable) -> Response {
    let code = match why {
        Unservable::DeadListenKey(_) => codes::INVALID_LISTEN_KEY,
        Unservable::TooManyStreams => codes::TOO_MANY_PARAMETERS,
    };
    let body = Json(json!({"code": code, "msg": why.to_string()}));
    (StatusCode::BAD_REQUEST, body).into_response()
}

fn open(
    state: SimState,
    combined: bool,
    mut names: Vec<String>,
    query: &Params,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Some(keys) = query.get("listenKey") {
        names.extend(split(keys));
    }
    let events = query
        .get("events")
        .map(|events| split(events).into_iter().collect::<HashSet<String>>());
    // Subscribed before the handshake, so nothing published after it is missed.
    let klines = state.0.klines.subscribe();
    let users = state.0.user_stream.subscribe();
    let mut session = Session {
        state,
        klines,
        users,
        combined,
        streams: Vec::new(),
        events,
        held: None,
    };
    if let Err(why) = session.subscribe(names) {
        return refuse(why);
    }
    upgrade.on_upgrade(move |socket| session.run(socket))
}

/// What a subscribed stream carries.
#[derive(Debug, Clone)]
enum Stream {
    /// The candles of a symbol and interval: each update of the forming one, and the closed.
    Kline(Symbol, String),
    /// The user-data events of an account, while the key lives.
    User { key: String, account: String },
    /// Nothing: a name the simulator does not publish.
    Silent,
}

fn parse_kline_stream(state: &SimState, stream: &str) -> Option<Stream> {
    let (symbol, interval) = stream.split_once("@kline_")?;
    let symbol = Symbol::new(&symbol.to_ascii_uppercase()).ok()?;
    super::market::is_interval(state, interval).then(|| Stream::Kline(symbol, interval.to_owned()))
}

/// The account of a live listen key.
fn live_account(state: &SimState, key: &str) -> Option<String> {
    let now = state.now_ms();
    state
        .0
        .listen_keys
        .lock()
        .expect("lock poisoned")
        .get(key)
        .filter(|(_, expiry)| *expiry > now)
        .map(|(account, _)| account.clone())
}

fn classify(state: &SimState, name: &str) -> Result<Stream, Unservable> {
    if let Some(stream) = parse_kline_stream(state, name) {
        return Ok(stream);
    }
    if let Some(account) = live_account(state, name) {
        return Ok(Stream::User {
            key: name.to_owned(),
            account,
        });
    }
    if name.starts_with(LISTEN_KEY_PREFIX) {
        return Err(Unservable::DeadListenKey(name.to_owned()));
    }
    Ok(Stream::Silent)
}

/// A control message: `{"method": ..., "params": [...], "id": ...}`.
#[derive(Deserialize)]
struct Request {
    method: Method,
    #[serde(default)]
    params: Vec<Value>,
    #[serde(default)]
    id: Value,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum Method {
    Subscribe,
    Unsubscribe,
    ListSubscriptions,
    SetProperty,
    GetProperty,
}

/// A refused control message: Binance's code and message.
struct Refusal(u8, String);

fn invalid(msg: impl std::fmt::Display) -> Refusal {
    Refusal(2, format!("Invalid request: {msg}"))
}

/// What the draws of the fault RNG make of one user event.
enum Fate {
    Send,
    Drop,
    Duplicate,
    HoldBack,
    Disconnect,
}

fn fate(state: &SimState) -> Fate {
    let faults = state.faults();
    if state.draw(faults.stream_disconnect_rate) {
        Fate::Disconnect
    } else if state.draw(faults.stream_drop_rate) {
        Fate::Drop
    } else if state.draw(faults.stream_duplicate_rate) {
        Fate::Duplicate
    } else if state.draw(faults.stream_reorder_rate) {
        Fate::HoldBack
    } else {
        Fate::Send
    }
}

async fn send(socket: &mut WebSocket, text: &str) -> bool {
    socket
        .send(Message::Text(text.to_owned().into()))
        .await
        .is_ok()
}

/// One connection: its streams, its properties, and the user event held back to be
/// delivered out of order.
struct Session {
    state: SimState,
    klines: broadcast::Receiver<(Symbol, &'static str, String)>,
    users: broadcast::Receiver<(String, String)>,
    combined: bool,
    /// Subscribed stream names in subscription order, with what each carries.
    streams: Vec<(String, Stream)>,
    /// The user event types delivered, when the connection named them.
    events: Option<HashSet<String>>,
    held: Option<String>,
}

impl Session {
    /// Adds streams, all or none.
    fn subscribe(&mut self, names: Vec<String>) -> Result<(), Unservable> {
        // Checked first too, so a huge list costs nothing to refuse.
        if names.len() > STREAMS_PER_CONNECTION_MAX {
            return Err(Unservable::TooManyStreams);
        }
        let mut added: Vec<(String, Stream)> = Vec::new();
        for name in names {
            if self.streams.iter().chain(&added).any(|(n, _)| *n == name) {
                continue;
            }
            let stream = classify(&self.state, &name)?;
            added.push((name, stream));
        }
        if self.streams.len() + added.len() > STREAMS_PER_CONNECTION_MAX {
            return Err(Unservable::TooManyStreams);
        }
        self.streams.extend(added);
        Ok(())
    }

    /// The payload as this connection delivers it: raw, or wrapped with its stream's name.
    fn frame(&self, stream: &str, payload: &str) -> String {
        if self.combined {
            let name = Value::String(stream.to_owned());
            format!(r#"{{"stream":{name},"data":{payload}}}"#)
        } else {
            payload.to_owned()
        }
    }

    async fn run(mut self, mut socket: WebSocket) {
        let mut check = tokio::time::interval(Duration::from_millis(LISTEN_KEY_CHECK_MS));
        loop {
            let delivered = tokio::select! {
                received = self.klines.recv() => match received {
                    Ok((symbol, interval, text)) => {
                        self.on_kline(&mut socket, &symbol, interval, &text).await
                    }
                    // A client this far behind is cut off, as Binance does; it must resync.
                    Err(_) => false,
                },
                received = self.users.recv() => match received {
                    Ok((account, text)) => self.on_user(&mut socket, &account, &text).await,
                    Err(_) => false,
                },
                _ = check.tick() => self.expire_keys(&mut socket).await,
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Text(text))) => {
                        let reply = self.control(text.as_str());
                        send(&mut socket, &reply.to_string()).await
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => false,
                    Some(Ok(_)) => true,
                },
            };
            if !delivered {
                break;
            }
        }
        // Sends the closing handshake's frame: ours, or the answer to the client's (which a
        // second Close message would not send).
        let _ = SinkExt::close(&mut socket).await;
    }

    async fn on_kline(
        &mut self,
        socket: &mut WebSocket,
        symbol: &Symbol,
        interval: &str,
        text: &str,
    ) -> bool {
        let names: Vec<String> = self
            .streams
            .iter()
            .filter(|(_, s)| matches!(s, Stream::Kline(of, at) if of == symbol && at == interval))
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let faults = self.state.faults();
            if self.state.draw(faults.stream_disconnect_rate)
                || !send(socket, &self.frame(&name, text)).await
            {
                return false;
            }
        }
        true
    }

    fn admits(&self, text: &str) -> bool {
        let Some(events) = &self.events else {
            return true;
        };
        let event: Value = serde_json::from_str(text).unwrap_or_default();
        event["e"].as_str().is_some_and(|e| events.contains(e))
    }

    async fn on_user(&mut self, socket: &mut WebSocket, account: &str, text: &str) -> bool {
        let names: Vec<String> = self
            .streams
            .iter()
            .filter(|(_, s)| matches!(s, Stream::User { account: of, .. } if of == account))
            .map(|(n, _)| n.clone())
            .collect();
        if names.is_empty() || !self.admits(text) {
            return true;
        }
        for name in names {
            let framed = self.frame(&name, text);
            let delivered = match fate(&self.state) {
                Fate::Drop => true,
                Fate::Disconnect => false,
                // The held event goes out after the next one: the two arrive swapped.
                Fate::HoldBack if self.held.is_none() => {
                    self.held = Some(framed);
                    true
                }
                Fate::Duplicate => {
                    send(socket, &framed).await
                        && send(socket, &framed).await
                        && self.flush(socket).await
                }
                Fate::Send | Fate::HoldBack => {
                    send(socket, &framed).await && self.flush(socket).await
                }
            };
            if !delivered {
                return false;
            }
        }
        true
    }

    async fn flush(&mut self, socket: &mut WebSocket) -> bool {
        match self.held.take() {
            Some(text) => send(socket, &text).await,
            None => true,
        }
    }

    /// Sends `listenKeyExpired` for each subscribed key no longer live, and drops it: the
    /// connection stays open, as on Binance.
    async fn expire_keys(&mut self, socket: &mut WebSocket) -> bool {
        let expired: Vec<String> = self
            .streams
            .iter()
            .filter_map(|(name, s)| match s {
                Stream::User { key, .. } if live_account(&self.state, key).is_none() => {
                    Some(name.clone())
                }
                _ => None,
            })
            .collect();
        for name in expired {
            self.streams.retain(|(n, _)| *n != name);
            let event = events::listen_key_expired(&name, self.state.now_ms()).to_string();
            if self.admits(&event) && !send(socket, &self.frame(&name, &event)).await {
                return false;
            }
        }
        true
    }

    /// Answers a control message.
    fn control(&mut self, text: &str) -> Value {
        if let Err(e) = serde_json::from_str::<Value>(text) {
            return json!({"code": 3, "msg": format!("Invalid JSON: {e}")});
        }
        let request = match serde_json::from_str::<Request>(text) {
            Ok(request) => request,
            Err(e) => {
                let id = serde_json::from_str::<Value>(text)
                    .ok()
                    .map(|v| v["id"].clone());
                return refusal(invalid(e), id.and_then(|id| id.as_u64()));
            }
        };
        let Some(id) = request.id.as_u64() else {
            return refusal(invalid("request ID must be an unsigned integer"), None);
        };
        match self.answer(request.method, &request.params) {
            Ok(result) => json!({"result": result, "id": id}),
            Err(refused) => refusal(refused, Some(id)),
        }
    }

    fn answer(&mut self, method: Method, params: &[Value]) -> Result<Value, Refusal> {
        let names = || -> Result<Vec<String>, Refusal> {
            params
                .iter()
                .map(|p| {
                    p.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| invalid(format!("stream names are strings, not {p}")))
                })
                .collect()
        };
        let property = || -> Result<(), Refusal> {
            match params.first().and_then(Value::as_str) {
                None => Err(invalid("property name must be a string")),
                Some("combined") => Ok(()),
                Some(_) => Err(Refusal(0, "Unknown property".to_owned())),
            }
        };
        match method {
            Method::Subscribe => {
                let names = names()?;
                self.subscribe(names).map_err(invalid)?;
                Ok(Value::Null)
            }
            Method::Unsubscribe => {
                let names = names()?;
                self.streams.retain(|(n, _)| !names.contains(n));
                Ok(Value::Null)
            }
            Method::ListSubscriptions if params.is_empty() => Ok(json!(
                self.streams
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
            )),
            Method::SetProperty if params.len() <= 2 => {
                property()?;
                let value = params
                    .get(1)
                    .and_then(Value::as_bool)
                    .ok_or_else(|| Refusal(1, "Invalid value type: expected Boolean".to_owned()))?;
                self.combined = value;
                Ok(Value::Null)
            }
            Method::GetProperty if params.len() <= 1 => {
                property()?;
                Ok(Value::Bool(self.combined))
            }
            Method::ListSubscriptions | Method::SetProperty | Method::GetProperty => {
                Err(invalid("too many parameters"))
            }
        }
    }
}

fn refusal(Refusal(code, msg): Refusal, id: Option<u64>) -> Value {
    match id {
        Some(id) => json!({"code": code, "msg": msg, "id": id}),
        None => json!({"code": code, "msg": msg}),
    }
}
