//! The simulator's WebSocket streams: `/ws/<listenKey>` (user data) and
//! `/ws/<symbol>@kline_<interval>`, with dropped, duplicated and reordered events and
//! disconnects injected.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keel_kernel::ids::Symbol;
use tokio::sync::broadcast;

use super::SimState;

pub(crate) async fn stream(
    State(state): State<SimState>,
    Path(stream): Path<String>,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Some((symbol, _interval)) = parse_kline_stream(&stream) {
        let rx = state.0.klines.subscribe();
        return upgrade.on_upgrade(move |socket| kline_session(state, socket, rx, symbol));
    }
    let now = state.now_ms();
    let account = state
        .0
        .listen_keys
        .lock()
        .expect("lock poisoned")
        .get(&stream)
        .filter(|(_, expiry)| *expiry > now)
        .map(|(account, _)| account.clone());
    let Some(account) = account else {
        return (
            StatusCode::BAD_REQUEST,
            "unknown stream or expired listenKey",
        )
            .into_response();
    };
    let rx = state.0.user_stream.subscribe();
    upgrade.on_upgrade(move |socket| user_session(state, socket, rx, account))
}

fn parse_kline_stream(stream: &str) -> Option<(Symbol, String)> {
    let (symbol, interval) = stream.split_once("@kline_")?;
    let symbol = Symbol::new(&symbol.to_ascii_uppercase()).ok()?;
    keel_kernel::exchange::Interval::parse(interval)?;
    Some((symbol, interval.to_owned()))
}

/// What the fault draws make of one event.
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

async fn user_session(
    state: SimState,
    mut socket: WebSocket,
    mut rx: broadcast::Receiver<(String, String)>,
    account: String,
) {
    let mut held: Option<String> = None;
    loop {
        let text = tokio::select! {
            received = rx.recv() => match received {
                Ok((of, _)) if of != account => continue,
                Ok((_, text)) => text,
                // A client this far behind is cut off, as Binance does; it must resync.
                Err(_) => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => continue,
            },
        };
        let delivered = match fate(&state) {
            Fate::Drop => true,
            Fate::Disconnect => false,
            // The held event goes out after the next one: the two arrive swapped.
            Fate::HoldBack if held.is_none() => {
                held = Some(text);
                true
            }
            Fate::Duplicate => {
                send(&mut socket, &text).await
                    && send(&mut socket, &text).await
                    && flush(&mut socket, &mut held).await
            }
            Fate::Send | Fate::HoldBack => {
                send(&mut socket, &text).await && flush(&mut socket, &mut held).await
            }
        };
        if !delivered {
            break;
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

async fn flush(socket: &mut WebSocket, held: &mut Option<String>) -> bool {
    match held.take() {
        Some(text) => send(socket, &text).await,
        None => true,
    }
}

async fn kline_session(
    state: SimState,
    mut socket: WebSocket,
    mut rx: broadcast::Receiver<(Symbol, String)>,
    symbol: Symbol,
) {
    loop {
        let (of, text) = tokio::select! {
            received = rx.recv() => match received {
                Ok(message) => message,
                Err(_) => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => continue,
            },
        };
        if of != symbol {
            continue;
        }
        let faults = state.faults();
        if state.draw(faults.stream_disconnect_rate) || !send(&mut socket, &text).await {
            break;
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}
