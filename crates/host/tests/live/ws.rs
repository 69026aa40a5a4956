//! `/api/v1/ws` over real sockets: many connections of several users under a stream of events,
//! not one event to the wrong user; host events for subscribed operators only; a client that
//! stops reading is dropped with a close reason while the others keep receiving; refused
//! tokens never upgrade.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use keel_api::auth::JwtKeys;
use keel_api::health::LoopConfig;
use keel_api::live::{Bus, HostEvent, ProfileEvent, ProfileInfo};
use keel_kernel::ids::{ProfileId, UserId};
use keel_kernel::store::Store;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

const SECRET: &[u8] = b"live-test-secret-of-at-least-32-bytes";
const USERS: usize = 4;
const PROFILES_PER_USER: usize = 2;
const CONNECTIONS_PER_USER: usize = 6;
/// Events per user per round; the slow client's user gets `HEAVY` more, each large.
const PER_ROUND: usize = 25;
const HEAVY: usize = 200;
const QUEUE_MAX: usize = 256;
/// At least this many events are published.
const EVENTS_MIN: u64 = 20_000;
/// A generous bound on rounds: the slow client's socket buffers fill long before.
const ROUNDS_MAX: usize = 5_000;
/// Bound on every wait, for a shared and busy machine.
const WAIT_MAX: Duration = Duration::from_secs(120);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Host {
    bus: Arc<Bus>,
    keys: JwtKeys,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start_host() -> Host {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("keel.db"))
        .await
        .unwrap();
    let config = LoopConfig {
        reconcile_interval_ms: 1_000,
        trading_stall_ms: 5_000,
        monitor_stall_ms: 5_000,
        reconciliation_stall_ms: 5_000,
    };
    let bus = Bus::new(store, config, QUEUE_MAX);
    let keys = JwtKeys::new(SECRET).unwrap();
    let app = keel_api::live::router(bus.clone(), keys.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Host {
        bus,
        keys,
        addr,
        _dir: dir,
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Host {
    fn token(&self, user: UserId, operator: bool) -> String {
        self.keys.mint(user, operator, now(), 600)
    }

    fn url(&self) -> String {
        format!("ws://{}/api/v1/ws", self.addr)
    }

    /// Connects with the token in the header (`header`) or in `?access_token=`.
    async fn connect(&self, token: &str, header: bool) -> Ws {
        let request = if header {
            let mut request = self.url().into_client_request().unwrap();
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            request
        } else {
            format!("{}?access_token={token}", self.url())
                .into_client_request()
                .unwrap()
        };
        let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        assert_eq!(response.status(), 101);
        ws
    }

    /// Connects over a socket with a small receive buffer, so that a client that does not read
    /// fills it quickly.
    async fn connect_small_buffer(&self, token: &str) -> Ws {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(self.addr).await.unwrap();
        let request = format!("{}?access_token={token}", self.url())
            .into_client_request()
            .unwrap();
        let (ws, _) = tokio_tungstenite::client_async(
            request,
            tokio_tungstenite::MaybeTlsStream::Plain(stream),
        )
        .await
        .unwrap();
        ws
    }
}

async fn next_json(ws: &mut Ws) -> serde_json::Value {
    loop {
        let message = tokio::time::timeout(WAIT_MAX, ws.next())
            .await
            .expect("a message")
            .expect("the connection is open")
            .unwrap();
        match message {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// What one reading connection saw.
#[derive(Default)]
struct Seen {
    events: AtomicU64,
}

/// Reads a connection to its end, checking every event belongs to `profiles` (and, through
/// the fault text, to `user`). Returns the number of profile events.
fn spawn_reader(
    mut ws: Ws,
    user: UserId,
    profiles: BTreeSet<String>,
    seen: Arc<Seen>,
    wrong: Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let snapshot = next_json(&mut ws).await;
        read_events(ws, user, profiles, snapshot, seen, wrong).await;
    })
}

/// Checks a snapshot, then every event that follows it.
async fn read_events(
    mut ws: Ws,
    user: UserId,
    profiles: BTreeSet<String>,
    snapshot: serde_json::Value,
    seen: Arc<Seen>,
    wrong: Arc<Mutex<Vec<String>>>,
) {
    {
        assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
        assert_eq!(snapshot["user"], user.to_string());
        let listed: BTreeSet<String> = snapshot["profiles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["profile"].as_str().unwrap().to_owned())
            .collect();
        if listed != profiles {
            wrong
                .lock()
                .unwrap()
                .push(format!("snapshot of {user} lists {listed:?}"));
        }
        let mut last_seq = snapshot["seq"].as_u64().unwrap();
        while let Some(Ok(message)) = ws.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            let event: serde_json::Value = serde_json::from_str(&text).unwrap();
            let seq = event["seq"].as_u64().unwrap_or(0);
            let profile = event["profile"].as_str().unwrap_or("");
            let owner_ok = event["fault"]
                .as_str()
                .is_some_and(|f| f.starts_with(&user.to_string()));
            if !profiles.contains(profile) || !owner_ok || seq <= last_seq {
                wrong
                    .lock()
                    .unwrap()
                    .push(format!("{user} got {}", &text[..text.len().min(200)]));
            }
            last_seq = seq;
            seen.events.fetch_add(1, Ordering::Release);
        }
    }
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !condition() {
        assert!(started.elapsed() < WAIT_MAX, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_their_owner_only_and_a_slow_client_is_dropped() {
    let host = start_host().await;
    let users: Vec<UserId> = (0..USERS).map(|_| UserId::new_random()).collect();
    let mut profiles: HashMap<UserId, Vec<ProfileId>> = HashMap::new();
    for (u, user) in users.iter().enumerate() {
        for p in 0..PROFILES_PER_USER {
            let profile = ProfileId::new_random();
            host.bus.register(ProfileInfo {
                profile,
                user: *user,
                name: format!("user{u}-profile{p}"),
                plugin: "sma_cross.wasm".into(),
                plugin_version: "0".repeat(64),
                symbols: vec![],
            });
            profiles.entry(*user).or_default().push(profile);
        }
    }
    let wrong = Arc::new(Mutex::new(Vec::new()));
    let mut readers = Vec::new();
    let mut seen: HashMap<UserId, Vec<Arc<Seen>>> = HashMap::new();
    for user in &users {
        let ids: BTreeSet<String> = profiles[user].iter().map(|p| p.to_string()).collect();
        for c in 0..CONNECTIONS_PER_USER {
            let ws = host.connect(&host.token(*user, false), c % 2 == 0).await;
            let counter = Arc::new(Seen::default());
            seen.entry(*user).or_default().push(counter.clone());
            readers.push(spawn_reader(ws, *user, ids.clone(), counter, wrong.clone()));
        }
    }
    // The slow client: the first user's, never read until it has been dropped.
    let heavy_user = users[0];
    let mut slow = host
        .connect_small_buffer(&host.token(heavy_user, false))
        .await;
    // An operator (with no profiles) subscribes to host events; a user asking is refused.
    let operator = UserId::new_random();
    let mut op = host.connect(&host.token(operator, true), true).await;
    assert_eq!(next_json(&mut op).await["operator"], true);
    op.send(Message::text(r#"{"type":"subscribe","topic":"host"}"#))
        .await
        .unwrap();
    let subscribed = next_json(&mut op).await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    let mut nosy = host.connect(&host.token(users[1], false), true).await;
    let nosy_snapshot = next_json(&mut nosy).await;
    nosy.send(Message::text(r#"{"type":"subscribe","topic":"host"}"#))
        .await
        .unwrap();
    let refused = next_json(&mut nosy).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("operators"),
        "{refused}"
    );
    let nosy_counter = Arc::new(Seen::default());
    let nosy_ids = profiles[&users[1]].iter().map(|p| p.to_string()).collect();
    readers.push(tokio::spawn(read_events(
        nosy,
        users[1],
        nosy_ids,
        nosy_snapshot,
        nosy_counter.clone(),
        wrong.clone(),
    )));
    seen.get_mut(&users[1]).unwrap().push(nosy_counter);
    wait_until("every connection to subscribe", || {
        host.bus.stats().connections.load(Ordering::Relaxed)
            == (USERS * CONNECTIONS_PER_USER + 3) as u64
    })
    .await;

    let mut published: HashMap<UserId, u64> = HashMap::new();
    let mut sequence = 0u64;
    let padding = "x".repeat(1000);
    let mut publish = |published: &mut HashMap<UserId, u64>, user: UserId, profile, pad: &str| {
        sequence += 1;
        host.bus.publish(
            user,
            profile,
            ProfileEvent::Fault {
                at_ms: sequence as i64,
                fault: format!("{user}/{sequence}/{pad}"),
            },
        );
        *published.entry(user).or_default() += 1;
    };
    let mut rounds = 0;
    let mut rounds_after_drop = 0;
    // Many events, and a few rounds after the drop to show the others keep receiving.
    while rounds_after_drop < 5 || published.values().sum::<u64>() < EVENTS_MIN {
        rounds += 1;
        assert!(rounds < ROUNDS_MAX, "the slow client was never dropped");
        for user in &users {
            for i in 0..PER_ROUND {
                let profile = profiles[user][i % PROFILES_PER_USER];
                publish(&mut published, *user, profile, "");
            }
        }
        for i in 0..HEAVY {
            let profile = profiles[&heavy_user][i % PROFILES_PER_USER];
            publish(&mut published, heavy_user, profile, &padding);
        }
        // The readers keep up: wait until each has everything so far.
        for user in &users {
            let expected = published[user];
            for counter in &seen[user] {
                wait_until("readers to catch up", || {
                    counter.events.load(Ordering::Acquire) >= expected
                })
                .await;
            }
        }
        if host.bus.stats().slow_dropped.load(Ordering::Relaxed) > 0 {
            rounds_after_drop += 1;
        }
    }
    assert_eq!(host.bus.stats().slow_dropped.load(Ordering::Relaxed), 1);

    // The slow client finds its backlog, all its own, then the close frame with the reason.
    let heavy_ids: BTreeSet<String> = profiles[&heavy_user]
        .iter()
        .map(|p| p.to_string())
        .collect();
    let mut close = None;
    let mut backlog = 0;
    while let Some(message) = tokio::time::timeout(WAIT_MAX, slow.next())
        .await
        .expect("the slow client's socket ends")
    {
        match message {
            Ok(Message::Text(text)) => {
                let value: serde_json::Value = serde_json::from_str(&text).unwrap();
                if value["type"] != "snapshot" {
                    assert!(
                        heavy_ids.contains(value["profile"].as_str().unwrap()),
                        "{value}"
                    );
                    backlog += 1;
                }
            }
            Ok(Message::Close(frame)) => {
                close = frame;
                break;
            }
            Ok(_) => {}
            Err(error) => panic!("the slow client got {error} instead of a close frame"),
        }
    }
    let close = close.expect("a close frame with a reason");
    assert_eq!(close.code, CloseCode::Policy);
    assert!(close.reason.contains("slow client"), "{}", close.reason);
    assert!(backlog > 0);

    // Host events go to the subscribed operator only.
    host.bus.publish_host(HostEvent::HostKill { on: true });
    let event = next_json(&mut op).await;
    assert_eq!(event["type"], "host", "{event}");
    assert_eq!(event["event"], "host_kill");
    assert_eq!(event["on"], true);

    // Stop: every reader ends; none saw another user's event or a host event.
    for user in &users {
        let expected = published[user];
        for counter in &seen[user] {
            assert_eq!(counter.events.load(Ordering::Acquire), expected);
        }
    }
    drop(op);
    drop(slow);
    for reader in readers {
        reader.abort();
    }
    let wrong = wrong.lock().unwrap();
    assert!(
        wrong.is_empty(),
        "{} misdelivered: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
}

/// The status and JSON error of a refused upgrade.
async fn refused(request: tungstenite::handshake::client::Request) -> (u16, String) {
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => panic!("the upgrade was accepted"),
        Err(tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (response.status().as_u16(), body)
        }
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[tokio::test]
async fn refused_tokens_never_upgrade() {
    use base64::Engine as _;
    let host = start_host().await;
    let user = UserId::new_random();
    let url = host.url();
    let (status, body) = refused(url.clone().into_client_request().unwrap()).await;
    assert_eq!(status, 401);
    assert!(body.contains("access_token"), "{body}");

    let expired = host.keys.mint(user, false, now() - 600, 60);
    let other = JwtKeys::new(b"another-secret-of-at-least-32-bytes!").unwrap();
    let forged = other.mint(user, true, now(), 600);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let unsigned = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(format!(r#"{{"sub":"{user}","exp":{}}}"#, now() + 600))
    );
    for (token, says) in [
        (expired, "expired"),
        (forged, "signature"),
        (unsigned, "HS256"),
        ("not-a-jwt".to_owned(), "malformed"),
    ] {
        let (status, body) = refused(
            format!("{url}?access_token={token}")
                .into_client_request()
                .unwrap(),
        )
        .await;
        assert_eq!(status, 401, "{says}: {body}");
        assert!(body.contains(says), "{says}: {body}");
        let mut request = url.clone().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (status, body) = refused(request).await;
        assert_eq!(status, 401, "{says}: {body}");
    }
    // A valid token on a plain GET is not an upgrade.
    let response = reqwest::Client::new()
        .get(format!("http://{}/api/v1/ws", host.addr))
        .bearer_auth(host.token(user, false))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error(), "{}", response.status());
    // A connection with a valid token gets a snapshot, answers pings and explains bad messages.
    let mut ws = host.connect(&host.token(user, false), false).await;
    let snapshot = next_json(&mut ws).await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["profiles"], serde_json::json!([]));
    ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "pong");
    ws.send(Message::text(r#"{"type":"subscribe"}"#))
        .await
        .unwrap();
    let error = next_json(&mut ws).await;
    assert_eq!(error["type"], "error");
    assert!(
        error["error"].as_str().unwrap().contains("topic"),
        "{error}"
    );
}
