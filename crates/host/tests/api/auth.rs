//! Tokens that must not pass (expired, wrong key, `alg: none`, missing `sub`), bad input that
//! must get a specific 4xx, and the OpenAPI document describing every route.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keel_api::auth::JwtKeys;
use keel_kernel::ids::UserId;
use serde_json::json;

use crate::{Api, Db, SECRET, risk_limits};

crate::api_tests!(
    bad_tokens_get_401_with_the_reason,
    bad_input_gets_a_specific_4xx_and_writes_nothing,
    values_out_of_range_and_unprintable_names_get_422_naming_the_field,
    the_openapi_document_describes_every_route,
);

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn bad_tokens_get_401_with_the_reason(db: &Db) {
    let api = Api::new(db.store());
    let user = UserId::new_random();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let hs256 = |claims: serde_json::Value| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    };
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no header", None, "missing bearer token"),
        (
            "expired",
            Some(api.keys.mint(user, false, now() - 7200, 3600)),
            "expired",
        ),
        (
            "wrong key",
            Some(
                JwtKeys::new(b"another-secret-that-is-32-bytes-long!!")
                    .unwrap()
                    .mint(user, true, now(), 3600),
            ),
            "signature",
        ),
        (
            "alg none",
            Some(format!(
                "{}.{}.",
                b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
                b64.encode(json!({"sub": user.to_string(), "exp": now() + 3600}).to_string())
            )),
            "",
        ),
        (
            "missing sub",
            Some(hs256(json!({"exp": now() + 3600}))),
            "sub",
        ),
        (
            "sub not a uuid",
            Some(hs256(json!({"sub": "alice", "exp": now() + 3600}))),
            "sub",
        ),
        (
            "missing exp",
            Some(hs256(json!({"sub": user.to_string()}))),
            "exp",
        ),
        ("garbage", Some("not.a.jwt".to_owned()), "malformed"),
    ];
    let before = db.fingerprint().await;
    for (case, token, reason) in cases {
        for (method, path) in [
            ("GET", "/api/v1/profiles"),
            ("POST", "/api/v1/profiles"),
            ("GET", "/api/v1/operator/profiles"),
        ] {
            let body = (method == "POST").then(|| json!({"name": "x"}));
            let reply = api.send(method, path, token.as_deref(), body).await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{case}: {method} {path}: {reply:?}"
            );
            assert_eq!(reply.body["code"], "unauthorized");
            assert!(
                reply.error().contains(reason),
                "{case}: {:?} should say {reason:?}",
                reply.error()
            );
        }
    }
    let basic = Request::get("/api/v1/profiles")
        .header(header::AUTHORIZATION, "Basic YWxpY2U6cGFzcw==")
        .body(Body::empty())
        .unwrap();
    assert_eq!(api.raw(basic).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        before,
        db.fingerprint().await,
        "no refused request wrote anything"
    );
}

/// A hostile tenant's values: a leverage that overflowed the kernel's arithmetic, amounts out
/// of range, names with NUL bytes, bidirectional overrides or nothing visible. Each is a 422
/// whose message names the field, and nothing is written.
async fn values_out_of_range_and_unprintable_names_get_422_naming_the_field(db: &Db) {
    let api = Api::new(db.store());
    let token = api.token(UserId::new_random(), false);
    let profile = api.create_profile(&token, "target").await;
    let before = db.fingerprint().await;
    let limits = |field: &str, value: serde_json::Value| {
        let mut limits = risk_limits(&["BTCUSDT"]);
        limits[field] = value;
        limits
    };
    let huge = "79228162514264337593543950335";
    // (case, method, path, body, the field the message names, what else it says)
    let mut cases: Vec<(String, &str, String, serde_json::Value, &str, &str)> = Vec::new();
    for (field, value, says) in [
        ("leverage_max", json!(huge), "(0, 125]"),
        ("leverage_max", json!("0"), "(0, 125]"),
        ("leverage_max", json!("125.5"), "(0, 125]"),
        ("leverage_max", json!("1e30"), "decimal"),
        ("leverage_max", json!("0.000000001"), "decimal places"),
        ("entry_notional_max", json!(huge), "(0, 1000000000]"),
        ("entry_notional_max", json!("-5"), "(0, 1000000000]"),
        ("daily_loss_max", json!("-1"), "[0, 1000000000]"),
        ("daily_loss_max", json!(huge), "[0, 1000000000]"),
        ("positions_open_max", json!(4_294_967_295u32), "[0, 1000]"),
        ("limit_price_band_bps", json!(10_001), "[0, 10000]"),
        ("intents_per_minute_max", json!(0), "[1, 6000]"),
        (
            "intents_per_minute_max",
            json!(4_294_967_295u32),
            "[1, 6000]",
        ),
    ] {
        let body = json!({"name": "p", "risk_limits": limits(field, value.clone())});
        cases.push((
            format!("create with {field} {value}"),
            "POST",
            "/api/v1/profiles".into(),
            body,
            field,
            says,
        ));
        let body = limits(field, value.clone());
        cases.push((
            format!("update with {field} {value}"),
            "PUT",
            format!("/api/v1/profiles/{profile}/risk"),
            body,
            field,
            says,
        ));
    }
    for amount in [
        "0",
        "-1",
        "-0.00000001",
        huge,
        "10000000000.5",
        "0.000000001",
    ] {
        cases.push((
            format!("allocation of {amount}"),
            "POST",
            format!("/api/v1/profiles/{profile}/allocations"),
            json!({"amount": amount}),
            "amount",
            "",
        ));
    }
    for name in [
        "a\0b",
        "\0",
        "   ",
        "\t\n",
        "\u{202E}cod.exe",
        "x\u{2066}y\u{2069}",
        "zero\u{200B}width",
        "\u{7}bell",
    ] {
        cases.push((
            format!("profile name {name:?}"),
            "POST",
            "/api/v1/profiles".into(),
            json!({"name": name}),
            "name: ",
            "the profile name",
        ));
    }
    for (case, method, path, body, field, says) in cases {
        let reply = api.send(method, &path, Some(&token), Some(body)).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{case}: {reply:?}"
        );
        assert!(
            reply.error().starts_with(field) && reply.error().contains(says),
            "{case}: {:?} should name {field:?} and say {says:?}",
            reply.error()
        );
    }
    for (case, name) in [
        ("NUL", "a%00b"),
        ("right-to-left override", "x%E2%80%AEexe.wasm"),
        ("only spaces", "%20%20"),
        ("escape", "%1B%5B31m"),
    ] {
        let reply = api.upload(&token, name, vec![0u8; 8]).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{case}: {reply:?}"
        );
        assert!(
            reply.error().contains("name: the plugin name"),
            "{case}: {:?}",
            reply.error()
        );
    }
    assert_eq!(
        before,
        db.fingerprint().await,
        "no refused request wrote anything"
    );
}

async fn bad_input_gets_a_specific_4xx_and_writes_nothing(db: &Db) {
    let api = Api::new(db.store());
    let token = api.token(UserId::new_random(), false);
    let profile = api.create_profile(&token, "target").await;
    let before = db.fingerprint().await;
    let post = |path: &str, content_type: &str, body: Vec<u8>| {
        Request::post(path.to_owned())
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .unwrap()
    };
    let json_type = "application/json";
    let cases: Vec<(&str, Request<Body>, StatusCode, &str)> = vec![
        ("malformed JSON", post("/api/v1/profiles", json_type, b"{\"name\": ".to_vec()), StatusCode::BAD_REQUEST, "malformed JSON"),
        ("wrong type", post("/api/v1/profiles", json_type, br#"{"name": 5}"#.to_vec()), StatusCode::UNPROCESSABLE_ENTITY, "invalid type"),
        ("unknown field", post("/api/v1/profiles", json_type, br#"{"name": "a", "owner": "me"}"#.to_vec()), StatusCode::UNPROCESSABLE_ENTITY, "unknown field `owner`"),
        ("missing field", post("/api/v1/profiles", json_type, b"{}".to_vec()), StatusCode::UNPROCESSABLE_ENTITY, "missing field `name`"),
        ("not JSON", post("/api/v1/profiles", "text/plain", b"name=a".to_vec()), StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type: application/json"),
        ("too large", post("/api/v1/profiles", json_type, format!("{{\"name\": \"{}\"}}", "a".repeat(70_000)).into_bytes()), StatusCode::PAYLOAD_TOO_LARGE, "larger"),
        ("empty name", post("/api/v1/profiles", json_type, br#"{"name": ""}"#.to_vec()), StatusCode::UNPROCESSABLE_ENTITY, "profile name"),
        ("long name", post("/api/v1/profiles", json_type, format!("{{\"name\": \"{}\"}}", "n".repeat(65)).into_bytes()), StatusCode::UNPROCESSABLE_ENTITY, "profile name"),
        ("incomplete risk limits", post("/api/v1/profiles", json_type, json!({"name": "a", "risk_limits": {"symbols_allowed": []}}).to_string().into_bytes()), StatusCode::UNPROCESSABLE_ENTITY, "missing field"),
        ("bad symbol", post("/api/v1/profiles", json_type, json!({"name": "a", "risk_limits": risk_limits(&["btc usdt"])}).to_string().into_bytes()), StatusCode::UNPROCESSABLE_ENTITY, "symbols_allowed"),
        ("negative leverage", post("/api/v1/profiles", json_type, json!({"name": "a", "risk_limits": {
            "symbols_allowed": [], "entry_notional_max": "10", "positions_open_max": 1, "leverage_max": "-1",
            "limit_price_band_bps": 1, "intents_per_minute_max": 1, "daily_loss_max": "0"}}).to_string().into_bytes()), StatusCode::UNPROCESSABLE_ENTITY, "leverage_max"),
        ("bad path id", post("/api/v1/profiles/not-a-uuid/pause", json_type, Vec::new()), StatusCode::BAD_REQUEST, "invalid path"),
        ("no such route", post("/api/v1/nothing", json_type, Vec::new()), StatusCode::NOT_FOUND, "no such API route"),
        ("allocation number", post(&format!("/api/v1/profiles/{profile}/allocations"), json_type, br#"{"amount": 5}"#.to_vec()), StatusCode::UNPROCESSABLE_ENTITY, "invalid type"),
        ("empty upload", post("/api/v1/plugins", "application/wasm", Vec::new()), StatusCode::UNPROCESSABLE_ENTITY, ".wasm bytes"),
        ("oversized upload", post("/api/v1/plugins", "application/wasm", vec![0u8; keel_api::PLUGIN_UPLOAD_BYTES_DEFAULT + 1]), StatusCode::PAYLOAD_TOO_LARGE, "larger"),
        // A Python component is about 18 MB: its size is not what refuses this one.
        ("upload of a Python component's size", post("/api/v1/plugins", "application/wasm", vec![0u8; 20 << 20]), StatusCode::UNPROCESSABLE_ENTITY, "WebAssembly"),
        ("bad config", Request::put(format!("/api/v1/profiles/{profile}/plugin"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, json_type)
            .body(Body::from(json!({"plugin_id": uuid::Uuid::new_v4(), "config": {"fast": 3}}).to_string()))
            .unwrap(), StatusCode::UNPROCESSABLE_ENTITY, "invalid type"),
    ];
    for (case, request, status, says) in cases {
        let reply = api.raw(request).await;
        assert_eq!(reply.status, status, "{case}: {reply:?}");
        assert!(
            reply.error().contains(says),
            "{case}: {:?} should say {says:?}",
            reply.error()
        );
    }
    // `api.body_limit_bytes` and `api.upload_limit_bytes` of the configuration.
    let small = Api::with_limits(
        db.store(),
        std::sync::Arc::new(keel_host::serve::control::LoopControl::new(
            Default::default(),
        )),
        keel_api::BodyLimits {
            json_bytes: 1024,
            upload_bytes: 4096,
        },
    );
    let name = "x".repeat(2000);
    let limited: Vec<(&str, Request<Body>, StatusCode)> = vec![
        (
            "JSON over the configured limit",
            post(
                "/api/v1/profiles",
                json_type,
                json!({"name": name}).to_string().into_bytes(),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "upload over the configured limit",
            post("/api/v1/plugins", "application/wasm", vec![0u8; 5000]),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "upload under the configured limit",
            post("/api/v1/plugins", "application/wasm", vec![0u8; 3000]),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (case, request, status) in limited {
        assert_eq!(small.raw(request).await.status, status, "{case}");
    }
    assert_eq!(
        before,
        db.fingerprint().await,
        "no refused request wrote anything"
    );
}

async fn the_openapi_document_describes_every_route(db: &Db) {
    let api = Api::new(db.store());
    let doc = api.send("GET", "/openapi.json", None, None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc.body["components"]["securitySchemes"]["bearer"].is_object());
    let paths = doc.body["paths"].as_object().unwrap();
    let mut described = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            described.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    described.sort();
    // Every described route exists: without a token it answers 401 (or 403), never 404/405.
    let id = uuid::Uuid::new_v4().to_string();
    for route in &described {
        let (method, path) = route.split_once(' ').unwrap();
        let path = path
            .replace("{profile_id}", &id)
            .replace("{plugin_id}", &id);
        let reply = api.send(method, &path, None, None).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{route} is described but answers {reply:?}"
        );
    }
    let expected = [
        "DELETE /api/v1/operator/kill",
        "DELETE /api/v1/operator/profiles/{profile_id}/host-account",
        "DELETE /api/v1/profiles/{profile_id}",
        "DELETE /api/v1/profiles/{profile_id}/credentials",
        "DELETE /api/v1/profiles/{profile_id}/kill",
        "GET /api/v1/budget",
        "GET /api/v1/operator/kill",
        "GET /api/v1/operator/profiles",
        "GET /api/v1/operator/users/{user_id}/budget",
        "GET /api/v1/plugins",
        "GET /api/v1/plugins/{plugin_id}",
        "GET /api/v1/profiles",
        "GET /api/v1/profiles/{profile_id}",
        "GET /api/v1/profiles/{profile_id}/credentials",
        "GET /api/v1/profiles/{profile_id}/ledger",
        "GET /api/v1/profiles/{profile_id}/orders",
        "GET /api/v1/profiles/{profile_id}/plugin",
        "GET /api/v1/profiles/{profile_id}/positions",
        "GET /api/v1/profiles/{profile_id}/trades",
        "POST /api/v1/operator/kill",
        "POST /api/v1/operator/profiles/{profile_id}/quarantine/clear",
        "POST /api/v1/operator/reconcile",
        "POST /api/v1/operator/users/{user_id}/budget",
        "POST /api/v1/plugins",
        "POST /api/v1/profiles",
        "POST /api/v1/profiles/{profile_id}/allocations",
        "POST /api/v1/profiles/{profile_id}/kill",
        "POST /api/v1/profiles/{profile_id}/pause",
        "POST /api/v1/profiles/{profile_id}/resume",
        "PUT /api/v1/operator/profiles/{profile_id}/host-account",
        "PUT /api/v1/profiles/{profile_id}/credentials",
        "PUT /api/v1/profiles/{profile_id}/plugin",
        "PUT /api/v1/profiles/{profile_id}/risk",
    ];
    assert_eq!(
        described, expected,
        "the document lists exactly the API's routes"
    );
}
