//! `GET /api/v1/ws` and the dashboard page at `/`.
//!
//! Authentication happens before the upgrade: `Authorization: Bearer <JWT>`, or, because a
//! browser cannot set headers on a WebSocket, `?access_token=<JWT>`. A refused token answers
//! 401 with a JSON error and no upgrade. The protocol is described in docs/dashboard.md.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::json;

use super::Bus;
use crate::auth::{AuthError, Caller, JwtKeys};
use crate::health::LOOP_NAMES;

/// The dashboard, embedded in the binary.
const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// The chart library of the dashboard (uPlot, MIT licence; see vendor/uplot/README.md).
const UPLOT_JS: &str = include_str!("vendor/uplot/uPlot.iife.min.js");
/// uPlot's style sheet.
const UPLOT_CSS: &str = include_str!("vendor/uplot/uPlot.min.css");
/// Where the dashboard loads uPlot from: the version is in the path, so it may be cached.
pub const UPLOT_JS_PATH: &str = "/assets/uplot-1.6.32.min.js";
/// Where the dashboard loads uPlot's style sheet from.
pub const UPLOT_CSS_PATH: &str = "/assets/uplot-1.6.32.min.css";

/// How long a dropped connection's close frame may wait for the socket before the connection is
/// cut without it.
pub const CLOSE_SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Close code sent to a client dropped for being slow (1008: policy violation).
pub const CLOSE_CODE_SLOW: u16 = 1008;

/// Largest client message accepted; the protocol's messages are a few dozen bytes.
pub const CLIENT_MESSAGE_BYTES_MAX: usize = 4096;

#[derive(Clone)]
struct LiveState {
    bus: Arc<Bus>,
    auth: JwtKeys,
}

/// The live router: `GET /api/v1/ws` and the dashboard at `GET /`.
pub fn router(bus: Arc<Bus>, auth: JwtKeys) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route(
            UPLOT_JS_PATH,
            get(|| asset("text/javascript; charset=utf-8", UPLOT_JS)),
        )
        .route(
            UPLOT_CSS_PATH,
            get(|| asset("text/css; charset=utf-8", UPLOT_CSS)),
        )
        .route("/api/v1/ws", get(upgrade))
        .with_state(LiveState { bus, auth })
}

async fn dashboard() -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        Html(DASHBOARD_HTML),
    )
        .into_response()
}

/// A file embedded in the binary; its path names its version, so it never changes.
async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response()
}

/// The caller of a WebSocket request: the header first, then `?access_token=`.
fn authenticate(
    keys: &JwtKeys,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Caller, AuthError> {
    match headers.get(header::AUTHORIZATION) {
        Some(value) => {
            let value = value.to_str().map_err(|_| {
                AuthError::Malformed("the Authorization header is not ASCII".into())
            })?;
            keys.verify_header(Some(value))
        }
        None => match query.get("access_token") {
            Some(token) => keys.verify(token),
            None => Err(AuthError::Missing),
        },
    }
}

async fn upgrade(
    State(state): State<LiveState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let caller = match authenticate(&state.auth, &headers, &query) {
        Ok(caller) => caller,
        Err(error) => {
            let message = match error {
                AuthError::Missing => "missing bearer token: send `Authorization: Bearer <JWT>` or `?access_token=<JWT>`".to_owned(),
                other => other.to_string(),
            };
            return (StatusCode::UNAUTHORIZED, Json(json!({"error": message}))).into_response();
        }
    };
    match upgrade {
        Ok(upgrade) => upgrade
            .max_message_size(CLIENT_MESSAGE_BYTES_MAX)
            .on_upgrade(move |socket| connection(socket, state.bus, caller)),
        Err(rejection) => (
            rejection.status(),
            Json(json!({"error": format!("not a WebSocket upgrade: {}", rejection.body_text())})),
        )
            .into_response(),
    }
}

/// What a client may send.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMessage {
    /// Start receiving a topic's events (`host`: operators only).
    Subscribe { topic: String },
    /// Answered with `pong`.
    Ping,
}

async fn connection(socket: WebSocket, bus: Arc<Bus>, caller: Caller) {
    let mut sub = bus.subscribe(caller.user);
    bus.stats().connections.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = socket.split();
    let stall_ms: serde_json::Map<String, serde_json::Value> = LOOP_NAMES
        .iter()
        .map(|name| ((*name).to_owned(), json!(bus.loop_config().stall_ms(name))))
        .collect();
    let snapshot = json!({
        "type": "snapshot",
        "seq": sub.seq,
        "user": caller.user,
        "operator": caller.operator,
        "stall_ms": stall_ms,
        "server_now_ms": crate::health::wall_now_ms(),
        "profiles": sub.profiles,
    });
    let mut open = sink.send(text(&snapshot)).await.is_ok();
    while open {
        tokio::select! {
            biased;
            _ = sub.dropped.wait() => {
                close_slow(&mut sink, &bus).await;
                break;
            }
            incoming = stream.next() => {
                let reply = match incoming {
                    Some(Ok(Message::Text(message))) => answer(&bus, caller, sub.id, message.as_str()),
                    Some(Ok(Message::Binary(_))) => Some(json!({"type": "error", "error": "binary messages are not part of the protocol; send JSON text"})),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                };
                if let Some(reply) = reply {
                    open = sink.send(text(&reply)).await.is_ok();
                }
            }
            message = sub.rx.recv() => match message {
                Some(message) => {
                    tokio::select! {
                        biased;
                        _ = sub.dropped.wait() => {
                            close_slow(&mut sink, &bus).await;
                            break;
                        }
                        sent = sink.send(Message::Text(message)) => open = sent.is_ok(),
                    }
                }
                None => break,
            },
        }
    }
    bus.unsubscribe(caller.user, sub.id);
    bus.stats().connections.fetch_sub(1, Ordering::Relaxed);
}

fn text(value: &serde_json::Value) -> Message {
    Message::Text(Utf8Bytes::from(value.to_string()))
}

/// Answers one client message; `None` when there is nothing to say.
fn answer(bus: &Bus, caller: Caller, id: u64, message: &str) -> Option<serde_json::Value> {
    let message: ClientMessage = match serde_json::from_str(message) {
        Ok(message) => message,
        Err(error) => {
            return Some(json!({
                "type": "error",
                "error": format!("bad message: {error}; expected {{\"type\":\"subscribe\",\"topic\":\"host\"}} or {{\"type\":\"ping\"}}"),
            }));
        }
    };
    Some(match message {
        ClientMessage::Ping => json!({"type": "pong"}),
        ClientMessage::Subscribe { topic } if topic == "host" => {
            if !caller.operator {
                json!({"type": "error", "error": "host events are for operators"})
            } else {
                match bus.subscribe_host(caller.user, id) {
                    Some((seq, host)) => {
                        json!({"type": "subscribed", "topic": "host", "seq": seq, "host": host})
                    }
                    None => return None,
                }
            }
        }
        ClientMessage::Subscribe { topic } => {
            json!({"type": "error", "error": format!("unknown topic {topic:?}; the only topic is \"host\"")})
        }
    })
}

/// Tells a client it was dropped for being slow, waiting for its socket no longer than
/// [`CLOSE_SEND_TIMEOUT`].
async fn close_slow<S>(sink: &mut S, bus: &Bus)
where
    S: futures::Sink<Message> + Unpin,
{
    let reason = format!(
        "slow client: more than {} messages queued; dropped",
        bus.queue_max
    );
    let frame = Message::Close(Some(CloseFrame {
        code: CLOSE_CODE_SLOW,
        reason: reason.into(),
    }));
    let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, sink.send(frame)).await;
}
