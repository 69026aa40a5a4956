//! The user-data and kline streams: reconnect with backoff, re-fetch over REST after every
//! (re)connect, and filter what goes out so it is monotonic and free of duplicate trades.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use keel_kernel::exchange::{
    CANDLE_QUEUE_MAX, Interval, USER_EVENT_QUEUE_MAX, UpdateFilter, UserEvent,
};
use keel_kernel::ids::{ClientOrderId, Symbol};
use keel_kernel::market::Candle;
use reqwest::Method;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::{CallError, Client, Security, wire};

/// The first wait before reconnecting a stream; it doubles up to the maximum.
pub const RECONNECT_BACKOFF_MIN_MS: u64 = 100;
/// The longest wait between reconnect attempts.
pub const RECONNECT_BACKOFF_MAX_MS: u64 = 30_000;
/// A listen key is kept alive this often (Binance expires it after 60 minutes).
pub const LISTEN_KEY_KEEPALIVE_MS: u64 = 30 * 60 * 1000;
/// How many orders and trade ids the user stream's filter remembers.
pub const FILTER_REMEMBERED_MAX: usize = 100_000;
/// How many orders the stream tracks as open for re-fetching after a reconnect.
pub const TRACKED_ORDERS_MAX: usize = 10_000;
/// A stream silent this long is treated as dead and reconnected (Binance pings every 3 minutes).
pub const STREAM_IDLE_MAX_MS: u64 = 10 * 60 * 1000;

async fn next_message(ws: &mut Ws) -> Option<Result<Message, String>> {
    let idle = Duration::from_millis(STREAM_IDLE_MAX_MS);
    match tokio::time::timeout(idle, ws.next()).await {
        Ok(message) => message.map(|m| m.map_err(|e| e.to_string())),
        Err(_) => Some(Err("no message within the idle limit".to_owned())),
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(client: &Client, path: &str) -> Result<Ws, String> {
    let url = format!("{}/ws/{path}", client.config.ws_url);
    let timeout = Duration::from_millis(client.config.request_timeout_ms);
    match tokio::time::timeout(timeout, tokio_tungstenite::connect_async(url)).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(format!("connecting the stream: {e}")),
        Err(_) => Err("connecting the stream timed out".to_owned()),
    }
}

/// What the user stream knows, carried across reconnects.
struct UserStream {
    client: Arc<Client>,
    tx: mpsc::Sender<UserEvent>,
    filter: UpdateFilter,
    /// Orders last seen open, by client order id: re-queried after a reconnect.
    open: HashMap<ClientOrderId, Symbol>,
    /// The highest trade id delivered per symbol: trades after it are re-fetched.
    last_trade_id: HashMap<Symbol, i64>,
    /// Which client order id an exchange order id belongs to (trades carry only the latter).
    order_ids: HashMap<(Symbol, i64), ClientOrderId>,
    /// The event types already warned about as unreadable.
    warned: HashSet<&'static str>,
}

pub(crate) fn spawn_user_stream(client: Arc<Client>) -> mpsc::Receiver<UserEvent> {
    let (tx, rx) = mpsc::channel(USER_EVENT_QUEUE_MAX);
    let stream = UserStream {
        client,
        tx,
        filter: UpdateFilter::new(FILTER_REMEMBERED_MAX),
        open: HashMap::new(),
        last_trade_id: HashMap::new(),
        order_ids: HashMap::new(),
        warned: HashSet::new(),
    };
    tokio::spawn(stream.run());
    rx
}

/// Why a session ended.
enum End {
    /// The subscriber went away: stop for good.
    Closed,
    /// The connection or the listen key failed: reconnect.
    Failed(String),
}

impl UserStream {
    async fn run(mut self) {
        let mut backoff_ms = RECONNECT_BACKOFF_MIN_MS;
        loop {
            match self.session(&mut backoff_ms).await {
                End::Closed => return,
                End::Failed(reason) => tracing::warn!(%reason, "user-data stream reconnecting"),
            }
            tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
            backoff_ms = (backoff_ms * 2).min(RECONNECT_BACKOFF_MAX_MS);
        }
    }

    async fn session(&mut self, backoff_ms: &mut u64) -> End {
        let key = match self.listen_key(Method::POST).await {
            Ok(key) => key,
            Err(e) => return End::Failed(format!("creating a listen key: {e:?}")),
        };
        let mut ws = match connect(&self.client, &key).await {
            Ok(ws) => ws,
            Err(e) => return End::Failed(e),
        };
        // Whatever happened while disconnected is fetched before the stream is trusted.
        if let Err(end) = self.resync().await {
            return end;
        }
        *backoff_ms = RECONNECT_BACKOFF_MIN_MS;
        let mut keepalive = tokio::time::interval(Duration::from_millis(LISTEN_KEY_KEEPALIVE_MS));
        let mut resync =
            tokio::time::interval(Duration::from_millis(self.client.config.resync_interval_ms));
        keepalive.tick().await;
        resync.tick().await;
        loop {
            tokio::select! {
                message = next_message(&mut ws) => match message {
                    Some(Ok(Message::Text(text))) => {
                        if let Err(end) = self.on_message(&text).await {
                            return end;
                        }
                    }
                    Some(Ok(Message::Ping(payload))) => {
                        let _ = ws.send(Message::Pong(payload)).await;
                    }
                    Some(Ok(Message::Close(_))) | None => return End::Failed("stream closed".to_owned()),
                    Some(Err(e)) => return End::Failed(format!("stream error: {e}")),
                    Some(Ok(_)) => {}
                },
                _ = keepalive.tick() => {
                    if let Err(e) = self.listen_key(Method::PUT).await {
                        return End::Failed(format!("keeping the listen key alive: {e:?}"));
                    }
                }
                _ = resync.tick() => {
                    if let Err(end) = self.resync().await {
                        return end;
                    }
                }
                _ = self.tx.closed() => return End::Closed,
            }
        }
    }

    async fn listen_key(&self, method: Method) -> Result<String, CallError> {
        let body = self
            .client
            .request(method, "/fapi/v1/listenKey", &[], Security::ApiKey, 1)
            .await?;
        let key: wire::ListenKey = super::parse_json(&body)?;
        Ok(key.listen_key)
    }

    async fn on_message(&mut self, text: &str) -> Result<(), End> {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(text) else {
            return Ok(());
        };
        match event["e"].as_str() {
            Some("ORDER_TRADE_UPDATE") => match wire::parse_order_trade_update(&event) {
                Ok((report, fill)) => {
                    if let Some(fill) = fill {
                        self.emit(UserEvent::Fill(fill)).await?;
                    }
                    self.emit(UserEvent::Order(report)).await
                }
                Err(e) => {
                    self.unreadable("ORDER_TRADE_UPDATE", &e);
                    Ok(())
                }
            },
            // Balances and positions are read over REST when the kernel reconciles, and a
            // fill's effect on them reaches the ledger through ORDER_TRADE_UPDATE: the event
            // is checked and dropped.
            Some("ACCOUNT_UPDATE") => {
                match wire::parse_account_update(&event) {
                    Ok(update) => tracing::trace!(
                        reason = %update.data.reason,
                        positions = update.data.positions.len(),
                        "ACCOUNT_UPDATE read; balances and positions come over REST"
                    ),
                    Err(e) => self.unreadable("ACCOUNT_UPDATE", &e),
                }
                Ok(())
            }
            // A fill without its fee or realised PnL, sent ahead of the ORDER_TRADE_UPDATE
            // that carries it in full: that one is what the kernel gets.
            Some("TRADE_LITE") => {
                match wire::parse_trade_lite(&event) {
                    Ok(trade) => tracing::trace!(
                        trade_id = trade.trade_id,
                        "TRADE_LITE read; the fill is delivered from ORDER_TRADE_UPDATE"
                    ),
                    Err(e) => self.unreadable("TRADE_LITE", &e),
                }
                Ok(())
            }
            // No event follows on this key: a new key, a new connection and a resync.
            Some("listenKeyExpired") => Err(End::Failed("listen key expired".to_owned())),
            // Binance adds event types without notice; the ones Keel does not act on
            // (ACCOUNT_CONFIG_UPDATE, MARGIN_CALL, ...) are dropped.
            _ => Ok(()),
        }
    }

    /// Logs an event that does not read as Binance documents it: a warning the first time
    /// for each event type, then at debug level, so a changed format cannot flood the log.
    fn unreadable(&mut self, kind: &'static str, error: &anyhow::Error) {
        if self.warned.insert(kind) {
            tracing::warn!(event = kind, error = %format!("{error:#}"), "unreadable event skipped; further ones are logged at debug level");
        } else {
            tracing::debug!(event = kind, error = %format!("{error:#}"), "unreadable event skipped");
        }
    }

    async fn emit(&mut self, event: UserEvent) -> Result<(), End> {
        match &event {
            UserEvent::Order(report) => {
                let key = (report.symbol.clone(), report.exchange_order_id.0);
                if self.order_ids.len() < TRACKED_ORDERS_MAX {
                    self.order_ids.insert(key, report.client_order_id.clone());
                }
                if report.status.is_open() && self.open.len() < TRACKED_ORDERS_MAX {
                    self.open
                        .insert(report.client_order_id.clone(), report.symbol.clone());
                } else if report.status.is_terminal() {
                    self.open.remove(&report.client_order_id);
                }
            }
            UserEvent::Fill(fill) => {
                let last = self.last_trade_id.entry(fill.symbol.clone()).or_insert(0);
                *last = (*last).max(fill.trade_id.0);
            }
        }
        if !self.filter.admit(&event) {
            return Ok(());
        }
        self.tx.send(event).await.map_err(|_| End::Closed)
    }

    /// Re-fetches over REST what the stream may have missed: open orders, the orders last
    /// seen open, and every trade after the last one delivered.
    async fn resync(&mut self) -> Result<(), End> {
        let failed = |what: &str, e: CallError| End::Failed(format!("resync: {what}: {e:?}"));
        let open = self
            .client
            .open_orders(None)
            .await
            .map_err(|e| failed("open orders", e))?;
        let still_open: Vec<ClientOrderId> =
            open.iter().map(|r| r.client_order_id.clone()).collect();
        let closed: Vec<(ClientOrderId, Symbol)> = self
            .open
            .iter()
            .filter(|(id, _)| !still_open.contains(id))
            .map(|(id, s)| (id.clone(), s.clone()))
            .collect();
        let mut traded: Vec<Symbol> = self
            .client
            .traded
            .lock()
            .expect("lock poisoned")
            .iter()
            .cloned()
            .collect();
        traded.sort();
        for symbol in &traded {
            self.resync_trades(symbol).await?;
        }
        for report in open {
            self.emit(UserEvent::Order(report)).await?;
        }
        for (id, symbol) in closed {
            match self.client.query_order(&symbol, &id).await {
                Ok(Some(report)) => self.emit(UserEvent::Order(report)).await?,
                Ok(None) => {
                    self.open.remove(&id);
                }
                Err(e) => return Err(failed("order", e)),
            }
        }
        Ok(())
    }

    async fn resync_trades(&mut self, symbol: &Symbol) -> Result<(), End> {
        let from = self.last_trade_id.get(symbol).map_or(0, |last| last + 1);
        let trades = self
            .client
            .trades(symbol, ("fromId", from.to_string()))
            .await
            .map_err(|e| End::Failed(format!("resync: trades: {e:?}")))?;
        for trade in trades {
            let key = (symbol.clone(), trade.order_id);
            let id = match self.order_ids.get(&key) {
                Some(id) => id.clone(),
                None => self.client_order_id_of(symbol, trade.order_id).await?,
            };
            match trade.to_fill(id) {
                Ok(fill) => self.emit(UserEvent::Fill(fill)).await?,
                Err(e) => tracing::warn!(error = %e, "unreadable trade skipped"),
            }
        }
        Ok(())
    }

    async fn client_order_id_of(
        &mut self,
        symbol: &Symbol,
        order_id: i64,
    ) -> Result<ClientOrderId, End> {
        let params = [
            ("symbol", symbol.to_string()),
            ("orderId", order_id.to_string()),
        ];
        let body = self
            .client
            .request(Method::GET, "/fapi/v1/order", &params, Security::Signed, 1)
            .await
            .map_err(|e| End::Failed(format!("resync: order {order_id}: {e:?}")))?;
        let report = super::parse_order(&body).map_err(|e| End::Failed(format!("{e:?}")))?;
        self.order_ids
            .insert((symbol.clone(), order_id), report.client_order_id.clone());
        Ok(report.client_order_id)
    }
}

pub(crate) fn spawn_kline_stream(
    client: Arc<Client>,
    symbol: Symbol,
    interval: Interval,
) -> mpsc::Receiver<Candle> {
    let (tx, rx) = mpsc::channel(CANDLE_QUEUE_MAX);
    tokio::spawn(run_klines(client, symbol, interval, tx));
    rx
}

/// Streams closed candles; after a reconnect a candle already sent is never sent again.
async fn run_klines(
    client: Arc<Client>,
    symbol: Symbol,
    interval: Interval,
    tx: mpsc::Sender<Candle>,
) {
    let path = format!(
        "{}@kline_{}",
        symbol.as_str().to_ascii_lowercase(),
        interval.as_str()
    );
    let mut backoff_ms = RECONNECT_BACKOFF_MIN_MS;
    let mut last_open_ms = i64::MIN;
    loop {
        match connect(&client, &path).await {
            Ok(mut ws) => {
                backoff_ms = RECONNECT_BACKOFF_MIN_MS;
                loop {
                    let message = tokio::select! {
                        message = next_message(&mut ws) => message,
                        _ = tx.closed() => return,
                    };
                    let text = match message {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Ping(payload))) => {
                            let _ = ws.send(Message::Pong(payload)).await;
                            continue;
                        }
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                        Some(Ok(_)) => continue,
                    };
                    let Ok(event) = serde_json::from_str::<serde_json::Value>(&text) else {
                        continue;
                    };
                    let Ok((candle, closed)) = wire::parse_kline(&event) else {
                        continue;
                    };
                    if closed && candle.open_time_ms > last_open_ms {
                        last_open_ms = candle.open_time_ms;
                        if tx.send(candle).await.is_err() {
                            return;
                        }
                    }
                }
                tracing::warn!(%symbol, "kline stream reconnecting");
            }
            Err(e) => tracing::warn!(%symbol, error = %e, "kline stream connect failed"),
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
        backoff_ms = (backoff_ms * 2).min(RECONNECT_BACKOFF_MAX_MS);
    }
}
