//! Every endpoint once, as its owner uses it, with what it wrote checked in the database.

use axum::http::StatusCode;
use keel_kernel::ids::UserId;
use serde_json::json;

use crate::{Api, Db, plugin_bytes, risk_limits};

crate::api_tests!(
    profiles_are_created_listed_read_updated_and_deleted,
    capital_is_allocated_through_the_ledger,
    allocations_draw_on_a_budget_only_an_operator_grants,
    credentials_are_stored_sealed_and_never_returned,
    plugins_are_uploaded_once_listed_read_and_bound,
    switches_are_stored_and_history_is_readable,
    operator_routes_list_every_profile_and_switch_the_host,
    only_an_operator_assigns_the_hosts_account_and_only_to_a_flat_profile,
);

async fn profiles_are_created_listed_read_updated_and_deleted(db: &Db) {
    let api = Api::new(db.store());
    let token = api.token(UserId::new_random(), false);
    let created = api
        .send(
            "POST",
            "/api/v1/profiles",
            Some(&token),
            Some(json!({"name": "bare"})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    assert_eq!(created.body["risk_limits"], json!(null));
    assert_eq!(created.body["capital"]["allocated"], "0");
    assert_eq!(created.body["running"], false);
    let bare = created.body["profile_id"].as_str().unwrap().to_owned();
    let other = api.create_profile(&token, "btc").await;

    let list = api
        .send("GET", "/api/v1/profiles", Some(&token), None)
        .await;
    assert_eq!(list.status, StatusCode::OK);
    let ids: Vec<&str> = list
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["profile_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [bare.as_str(), other.as_str()]);

    let read = api
        .send(
            "GET",
            &format!("/api/v1/profiles/{other}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body["name"], "btc");
    assert_eq!(
        read.body["risk_limits"]["symbols_allowed"],
        json!(["BTCUSDT"])
    );

    let mut limits = risk_limits(&["ETHUSDT", "BTCUSDT"]);
    limits["entry_notional_max"] = json!("250.5");
    let updated = api
        .send(
            "PUT",
            &format!("/api/v1/profiles/{other}/risk"),
            Some(&token),
            Some(limits),
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{updated:?}");
    assert_eq!(updated.body["risk_limits"]["entry_notional_max"], "250.5");
    assert_eq!(
        updated.body["risk_limits"]["symbols_allowed"],
        json!(["BTCUSDT", "ETHUSDT"])
    );
    let stored = db
        .scalar_count(&format!(
            "SELECT count(*) FROM profiles WHERE risk_limits LIKE '%250.5%' AND risk_limits LIKE '%ETHUSDT%' AND {}",
            id_match(db, "profile_id", &other)
        ))
        .await;
    assert_eq!(stored, 1, "the new limits are in the database");

    let deleted = api
        .send(
            "DELETE",
            &format!("/api/v1/profiles/{bare}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let gone = api
        .send(
            "GET",
            &format!("/api/v1/profiles/{bare}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert!(gone.error().contains(&bare), "{gone:?}");
    let again = api
        .send(
            "DELETE",
            &format!("/api/v1/profiles/{bare}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    let list = api
        .send("GET", "/api/v1/profiles", Some(&token), None)
        .await;
    assert_eq!(list.body.as_array().unwrap().len(), 1);
    let kept = db
        .scalar_count(&format!(
            "SELECT count(*) FROM profiles WHERE deleted_at_ms IS NOT NULL AND {}",
            id_match(db, "profile_id", &bare)
        ))
        .await;
    assert_eq!(kept, 1, "a deleted profile keeps its row, marked deleted");
}

/// A SQL condition matching a UUID column to `id` on either backend.
pub fn id_match(db: &Db, column: &str, id: &str) -> String {
    match db {
        Db::Pg(..) => format!("{column} = '{id}'::uuid"),
        Db::Lite(_) => format!("hex({column}) = upper('{}')", id.replace('-', "")),
    }
}

async fn capital_is_allocated_through_the_ledger(db: &Db) {
    let api = Api::new(db.store());
    let user = UserId::new_random();
    let token = api.token(user, false);
    api.grant(user, "1500.25").await;
    let profile = api.create_profile(&token, "funded").await;
    let path = format!("/api/v1/profiles/{profile}/allocations");
    let first = api
        .send(
            "POST",
            &path,
            Some(&token),
            Some(json!({"amount": "1000.25"})),
        )
        .await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    assert_eq!(first.body["allocated"], "1000.25");
    assert_eq!(first.body["free"], "1000.25");
    let second = api
        .send("POST", &path, Some(&token), Some(json!({"amount": "500"})))
        .await;
    assert_eq!(second.body["allocated"], "1500.25");

    let ledger = api
        .send(
            "GET",
            &format!("/api/v1/profiles/{profile}/ledger"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(ledger.status, StatusCode::OK);
    let entries = ledger.body.as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["kind"], "ALLOCATE");
    assert_eq!(entries[0]["d_allocated"], "500", "newest first");
    let first_id = entries[0]["entry_id"].as_i64().unwrap();
    let older = api
        .send(
            "GET",
            &format!("/api/v1/profiles/{profile}/ledger?before={first_id}&limit=1"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(older.body.as_array().unwrap().len(), 1);
    assert_eq!(older.body[0]["d_allocated"], "1000.25");
    let journal = db
        .scalar_count(&format!(
            "SELECT count(*) FROM ledger_entries WHERE entry_kind = 'ALLOCATE' AND {}",
            id_match(db, "profile_id", &profile)
        ))
        .await;
    assert_eq!(journal, 2);

    for bad in [
        json!({"amount": "0"}),
        json!({"amount": "-5"}),
        json!({"amount": "1.000000001"}),
        json!({"amount": "lots"}),
    ] {
        let refused = api
            .send("POST", &path, Some(&token), Some(bad.clone()))
            .await;
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {refused:?}"
        );
    }
    let journal_after = db
        .scalar_count(&format!(
            "SELECT count(*) FROM ledger_entries WHERE {}",
            id_match(db, "profile_id", &profile)
        ))
        .await;
    assert_eq!(journal_after, 2, "refused allocations wrote nothing");
}

/// A user cannot give themselves capital: every allocation draws on a budget that only an
/// operator grants, the grants are journalled, and a refusal writes nothing.
async fn allocations_draw_on_a_budget_only_an_operator_grants(db: &Db) {
    let api = Api::new(db.store());
    let user = UserId::new_random();
    let token = api.token(user, false);
    let profile = api.create_profile(&token, "self-funded").await;
    let path = format!("/api/v1/profiles/{profile}/allocations");
    let allocate = |amount: &str| {
        let body = json!({ "amount": amount });
        let (api, path, token) = (&api, &path, &token);
        async move { api.send("POST", path, Some(token), Some(body)).await }
    };

    // Without a budget, nothing can be allocated.
    let refused = allocate("1000000").await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{refused:?}"
    );
    assert!(refused.error().contains("capital budget"), "{refused:?}");
    // A user's token cannot reach the operator's grant.
    let own_grant = api
        .send(
            "POST",
            &format!("/api/v1/operator/users/{user}/budget"),
            Some(&token),
            Some(json!({"amount": "1000000"})),
        )
        .await;
    assert_eq!(own_grant.status, StatusCode::FORBIDDEN, "{own_grant:?}");

    let granted = api.grant(user, "1000").await;
    assert_eq!(granted.body["granted"], "1000");
    assert_eq!(granted.body["available"], "1000");
    assert_eq!(allocate("600").await.status, StatusCode::OK);
    let beyond = allocate("400.00000001").await;
    assert_eq!(
        beyond.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{beyond:?}"
    );
    assert!(
        beyond
            .error()
            .contains("400.00000001 requested, 400 of the budget available"),
        "{beyond:?}"
    );
    // A second profile of the same user draws on the same budget.
    let second = api.create_profile(&token, "second").await;
    let second_path = format!("/api/v1/profiles/{second}/allocations");
    let rest = api
        .send(
            "POST",
            &second_path,
            Some(&token),
            Some(json!({"amount": "400"})),
        )
        .await;
    assert_eq!(rest.status, StatusCode::OK, "{rest:?}");
    let own = api.send("GET", "/api/v1/budget", Some(&token), None).await;
    assert_eq!(own.status, StatusCode::OK);
    assert_eq!(
        (
            own.body["granted"].as_str(),
            own.body["allocated"].as_str(),
            own.body["available"].as_str()
        ),
        (Some("1000"), Some("1000"), Some("0"))
    );

    // An operator may take back only what is not allocated.
    let operator = api.token(UserId::new_random(), true);
    let grant_path = format!("/api/v1/operator/users/{user}/budget");
    for (amount, status) in [
        ("-0.00000001", StatusCode::UNPROCESSABLE_ENTITY),
        ("0", StatusCode::UNPROCESSABLE_ENTITY),
        ("lots", StatusCode::UNPROCESSABLE_ENTITY),
        ("10000000000", StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let reply = api
            .send(
                "POST",
                &grant_path,
                Some(&operator),
                Some(json!({"amount": amount})),
            )
            .await;
        assert_eq!(reply.status, status, "{amount}: {reply:?}");
    }
    let read = api.send("GET", &grant_path, Some(&operator), None).await;
    assert_eq!(
        read.body["granted"], "1000",
        "refused grants changed nothing"
    );
    let grants = db
        .scalar_count(&format!(
            "SELECT count(*) FROM budget_grants WHERE {}",
            id_match(db, "user_id", &user.to_string())
        ))
        .await;
    assert_eq!(grants, 1, "one grant journalled");
    let journal = db
        .scalar_count(&format!(
            "SELECT count(*) FROM ledger_entries WHERE entry_kind = 'ALLOCATE' AND {}",
            id_match(db, "user_id", &user.to_string())
        ))
        .await;
    assert_eq!(journal, 2, "refused allocations wrote nothing");
}

async fn credentials_are_stored_sealed_and_never_returned(db: &Db) {
    let api = Api::new(db.store());
    let token = api.token(UserId::new_random(), false);
    let profile = api.create_profile(&token, "keys").await;
    let path = format!("/api/v1/profiles/{profile}/credentials");
    let none = api.send("GET", &path, Some(&token), None).await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    let body = json!({"exchange": "binance-usdm", "api_key": "AKIA-visible-key", "api_secret": "s3cr3t-never-shown"});
    let put = api.send("PUT", &path, Some(&token), Some(body)).await;
    assert_eq!(put.status, StatusCode::OK, "{put:?}");
    assert_eq!(put.body["configured"], true);
    assert_eq!(put.body["exchange"], "binance-usdm");
    let text = put.body.to_string();
    assert!(!text.contains("s3cr3t") && !text.contains("AKIA"), "{text}");
    let read = api.send("GET", &path, Some(&token), None).await;
    assert_eq!(read.status, StatusCode::OK);
    assert!(!read.body.to_string().contains("s3cr3t"));

    let plain = db
        .scalar_count(&match db {
            Db::Pg(..) => "SELECT count(*) FROM profile_credentials WHERE position('s3cr3t'::bytea in ciphertext) > 0 OR position('AKIA'::bytea in ciphertext) > 0".to_owned(),
            Db::Lite(_) => "SELECT count(*) FROM profile_credentials WHERE instr(ciphertext, CAST('s3cr3t' AS BLOB)) > 0 OR instr(ciphertext, CAST('AKIA' AS BLOB)) > 0".to_owned(),
        })
        .await;
    assert_eq!(plain, 0, "the database holds no clear text");
    let mut tx = db
        .store()
        .tenant(owner_of(&api, &token))
        .begin()
        .await
        .unwrap();
    let sealed = tx
        .credentials(keel_kernel::ids::ProfileId::parse(&profile).unwrap())
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();
    let opened = api
        .credentials
        .open(
            keel_kernel::ids::ProfileId::parse(&profile).unwrap(),
            owner_of(&api, &token),
            &sealed,
        )
        .unwrap();
    assert_eq!(opened.api_secret, "s3cr3t-never-shown");

    let unknown = api
        .send(
            "PUT",
            &path,
            Some(&token),
            Some(json!({"exchange": "mtgox", "api_key": "a", "api_secret": "b"})),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(unknown.error().contains("exchange"), "{unknown:?}");
    let deleted = api.send("DELETE", &path, Some(&token), None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let gone = api.send("GET", &path, Some(&token), None).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
}

fn owner_of(api: &Api, token: &str) -> UserId {
    api.keys.verify(token).unwrap().user
}

async fn plugins_are_uploaded_once_listed_read_and_bound(db: &Db) {
    let api = Api::new(db.store());
    let token = api.token(UserId::new_random(), false);
    let bytes = plugin_bytes("sma-cross");
    let uploaded = api.upload(&token, "sma", bytes.clone()).await;
    assert_eq!(uploaded.status, StatusCode::CREATED, "{uploaded:?}");
    let digest = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    assert_eq!(uploaded.body["sha256"], digest.as_str());
    assert_eq!(uploaded.body["size_bytes"], bytes.len());
    assert_eq!(
        uploaded.body["report"]["world"],
        "keel:strategy/strategy-with-params@0.1.1"
    );
    assert_eq!(uploaded.body["report"]["params"][0]["name"], "fast");
    assert_eq!(
        uploaded.body["report"]["params"][0]["default"],
        serde_json::json!({"type": "int", "value": 10})
    );
    let plugin = uploaded.body["plugin_id"].as_str().unwrap().to_owned();
    let again = api.upload(&token, "sma-again", bytes.clone()).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(
        again.body["plugin_id"],
        plugin.as_str(),
        "the same bytes are stored once"
    );
    let stored = db.scalar_count("SELECT count(*) FROM plugins").await;
    assert_eq!(stored, 1);

    let list = api.send("GET", "/api/v1/plugins", Some(&token), None).await;
    assert_eq!(list.body.as_array().unwrap().len(), 1);
    let read = api
        .send(
            "GET",
            &format!("/api/v1/plugins/{plugin}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body["name"], "sma");

    let profile = api.create_profile(&token, "bound").await;
    let path = format!("/api/v1/profiles/{profile}/plugin");
    let unbound = api.send("GET", &path, Some(&token), None).await;
    assert_eq!(unbound.status, StatusCode::NOT_FOUND);
    let refused = api
        .send(
            "PUT",
            &path,
            Some(&token),
            Some(json!({"plugin_id": plugin, "config": {"fast": "9", "slow": "3"}})),
        )
        .await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "init refuses fast >= slow: {refused:?}"
    );
    assert!(refused.error().contains("init"), "{refused:?}");
    // Checked against the declared parameters before `init`: the error names the plugin (by
    // its upload name), the key and what it takes.
    for (config, error) in [
        (
            json!({"fats": "9"}),
            "config: configuration refused: plugin sma has no parameter `fats` (did you mean \
             `fast`?); its parameters are fast, slow, mode, size_fraction",
        ),
        (
            json!({"fast": "3", "slow": "0"}),
            "config: configuration refused: plugin sma: parameter `slow` takes int in \
             [2, 10000], not \"0\"",
        ),
        (
            json!({"mode": "sideways"}),
            "config: configuration refused: plugin sma: parameter `mode` takes text: \
             long-only | long-short, not \"sideways\"",
        ),
    ] {
        let refused = api
            .send(
                "PUT",
                &path,
                Some(&token),
                Some(json!({"plugin_id": plugin, "config": config})),
            )
            .await;
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{refused:?}"
        );
        assert_eq!(refused.error(), error, "{refused:?}");
    }
    assert_eq!(
        db.scalar_count("SELECT count(*) FROM profile_bindings")
            .await,
        0
    );
    let bound = api
        .send(
            "PUT",
            &path,
            Some(&token),
            Some(json!({"plugin_id": plugin, "config": {"fast": "3", "slow": "8"}})),
        )
        .await;
    assert_eq!(bound.status, StatusCode::OK, "{bound:?}");
    assert_eq!(bound.body["swap"], "stored", "no loop runs this profile");
    assert_eq!(bound.body["binding"]["sha256"], digest.as_str());
    let read = api.send("GET", &path, Some(&token), None).await;
    assert_eq!(read.body["config"], json!({"fast": "3", "slow": "8"}));
    let profile_view = api
        .send(
            "GET",
            &format!("/api/v1/profiles/{profile}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(profile_view.body["plugin"]["plugin_id"], plugin.as_str());

    let junk = api
        .upload(&token, "junk", b"\0asm not really".to_vec())
        .await;
    assert_eq!(junk.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(junk.error().contains("invalid plugin"), "{junk:?}");
}

async fn switches_are_stored_and_history_is_readable(db: &Db) {
    let api = Api::new(db.store());
    let token = api.token(UserId::new_random(), false);
    let profile = api.create_profile(&token, "switched").await;
    let base = format!("/api/v1/profiles/{profile}");
    let paused = api
        .send("POST", &format!("{base}/pause"), Some(&token), None)
        .await;
    assert_eq!(paused.status, StatusCode::OK);
    assert_eq!(paused.body["paused"], true);
    let killed = api
        .send("POST", &format!("{base}/kill"), Some(&token), None)
        .await;
    assert_eq!(killed.body["killed"], true);
    let row = format!(
        "SELECT count(*) FROM profiles WHERE paused AND killed AND {}",
        id_match(db, "profile_id", &profile)
    );
    assert_eq!(db.scalar_count(&row).await, 1);
    let resumed = api
        .send("POST", &format!("{base}/resume"), Some(&token), None)
        .await;
    assert_eq!(resumed.body["paused"], false);
    assert_eq!(
        resumed.body["killed"], true,
        "resume leaves the kill switch"
    );
    let released = api
        .send("DELETE", &format!("{base}/kill"), Some(&token), None)
        .await;
    assert_eq!(released.body["killed"], false);

    for list in ["orders", "positions", "ledger", "trades"] {
        let reply = api
            .send("GET", &format!("{base}/{list}"), Some(&token), None)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{list}: {reply:?}");
        assert_eq!(reply.body, json!([]), "{list}");
    }
    let bad_page = api
        .send("GET", &format!("{base}/orders?limit=0"), Some(&token), None)
        .await;
    assert_eq!(bad_page.status, StatusCode::BAD_REQUEST);
    let too_big = api
        .send(
            "GET",
            &format!("{base}/trades?limit=501"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(too_big.status, StatusCode::BAD_REQUEST);
    assert!(too_big.error().contains("limit"), "{too_big:?}");
    let unknown = api
        .send("GET", &format!("{base}/ledger?page=2"), Some(&token), None)
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
}

async fn operator_routes_list_every_profile_and_switch_the_host(db: &Db) {
    let api = Api::new(db.store());
    let (alice, bob) = (UserId::new_random(), UserId::new_random());
    let a = api.create_profile(&api.token(alice, false), "alice").await;
    let b = api.create_profile(&api.token(bob, false), "bob").await;
    let operator = api.token(UserId::new_random(), true);
    let all = api
        .send("GET", "/api/v1/operator/profiles", Some(&operator), None)
        .await;
    assert_eq!(all.status, StatusCode::OK, "{all:?}");
    let mut seen: Vec<(String, String)> = all
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["profile_id"].as_str().unwrap().to_owned(),
                p["user_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    let mut expected = vec![(a, alice.to_string()), (b, bob.to_string())];
    expected.sort();
    assert_eq!(seen, expected);

    let state = api
        .send("GET", "/api/v1/operator/kill", Some(&operator), None)
        .await;
    assert_eq!(state.body["engaged"], false);
    let engaged = api
        .send("POST", "/api/v1/operator/kill", Some(&operator), None)
        .await;
    assert_eq!(engaged.body["engaged"], true);
    assert!(api.control_host_kill());
    let released = api
        .send("DELETE", "/api/v1/operator/kill", Some(&operator), None)
        .await;
    assert_eq!(released.body["engaged"], false);
    assert!(!api.control_host_kill());
    let reconciled = api
        .send("POST", "/api/v1/operator/reconcile", Some(&operator), None)
        .await;
    assert_eq!(reconciled.status, StatusCode::OK);
    assert_eq!(reconciled.body, json!([]), "no loop runs here");

    let tenant = api.token(alice, false);
    for (method, path) in [
        ("GET", "/api/v1/operator/profiles"),
        ("GET", "/api/v1/operator/kill"),
        ("POST", "/api/v1/operator/kill"),
        ("DELETE", "/api/v1/operator/kill"),
        ("POST", "/api/v1/operator/reconcile"),
    ] {
        let refused = api.send(method, path, Some(&tenant), None).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{method} {path}");
        assert!(refused.error().contains("operator"), "{refused:?}");
    }
    assert!(!api.control_host_kill());
}

impl Api {
    fn control_host_kill(&self) -> bool {
        use keel_api::ProfileControl as _;
        self.control.host_kill()
    }
}

/// A profile trades on paper until an operator assigns it the host's exchange account; a user
/// cannot assign it, and an account change is refused while the profile holds a position (it is
/// on the account it trades on now).
async fn only_an_operator_assigns_the_hosts_account_and_only_to_a_flat_profile(db: &Db) {
    use keel_kernel::ids::{ClientOrderId, IntentKind, ProfileId, Symbol};
    use keel_kernel::lifecycle::{EntryRequest, FillReport};
    use keel_kernel::lock::{LockKey, LockKind, OwnerToken};
    use keel_kernel::market::Side;
    use keel_kernel::money::{Price, Qty};
    use rust_decimal_macros::dec;

    let store = db.store();
    let api = Api::new(store.clone());
    let user = UserId::new_random();
    let token = api.token(user, false);
    let operator = api.token(UserId::new_random(), true);
    api.grant(user, "1000").await;
    let id = api.create_profile(&token, "flat").await;
    let view = api
        .send("GET", &format!("/api/v1/profiles/{id}"), Some(&token), None)
        .await;
    assert_eq!(view.body["account"], "paper");
    let path = format!("/api/v1/operator/profiles/{id}/host-account");
    let own = api.send("PUT", &path, Some(&token), None).await;
    assert_eq!(own.status, StatusCode::FORBIDDEN, "{own:?}");
    let unknown = api
        .send(
            "PUT",
            &format!(
                "/api/v1/operator/profiles/{}/host-account",
                ProfileId::new_random()
            ),
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{unknown:?}");
    let assigned = api.send("PUT", &path, Some(&operator), None).await;
    assert_eq!(assigned.status, StatusCode::OK, "{assigned:?}");
    assert_eq!(assigned.body["changed"], true);
    let again = api.send("PUT", &path, Some(&operator), None).await;
    assert_eq!(again.body["changed"], false);
    let view = api
        .send("GET", &format!("/api/v1/profiles/{id}"), Some(&token), None)
        .await;
    assert_eq!(view.body["account"], "host");

    // It opens a position: the account cannot be taken back until it is closed.
    let profile = ProfileId::parse(&id).unwrap();
    let funded = api
        .send(
            "POST",
            &format!("/api/v1/profiles/{id}/allocations"),
            Some(&token),
            Some(json!({"amount": "1000"})),
        )
        .await;
    assert_eq!(funded.status, StatusCode::OK, "{funded:?}");
    let btc = Symbol::new("BTCUSDT").unwrap();
    let lease = store
        .locks()
        .acquire(
            LockKind::Entry,
            &LockKey::entry(profile, &btc),
            OwnerToken::new_random(),
            60_000,
        )
        .await
        .unwrap()
        .unwrap();
    let coid = ClientOrderId::derive(profile, &btc, 1, IntentKind::Entry);
    let tenant = store.tenant(user);
    tenant
        .write_ahead_entry(&EntryRequest {
            profile,
            client_order_id: coid.clone(),
            symbol: btc.clone(),
            side: Side::Buy,
            qty: Qty::new(dec!(1)).unwrap(),
            price: Price::new(dec!(100)).unwrap(),
            lock: lease.fenced(),
        })
        .await
        .unwrap();
    tenant
        .record_fill(&FillReport {
            client_order_id: coid,
            exchange_trade_id: "1".to_owned(),
            qty: Qty::new(dec!(1)).unwrap(),
            price: Price::new(dec!(100)).unwrap(),
            fee: dec!(0),
            executed_at_ms: 0,
        })
        .await
        .unwrap();
    let held = api.send("DELETE", &path, Some(&operator), None).await;
    assert_eq!(held.status, StatusCode::CONFLICT, "{held:?}");
    assert!(held.error().contains("a position of 1 BTCUSDT"), "{held:?}");
    let view = api
        .send("GET", &format!("/api/v1/profiles/{id}"), Some(&token), None)
        .await;
    assert_eq!(view.body["account"], "host", "the refusal changed nothing");
}
