//! Tenant isolation on PostgreSQL, checked below the store API: row-level security as the host
//! role sees it, and the catalog facts it rests on.

use keel_kernel::ids::{ProfileId, UserId};
use keel_kernel::store::{NewPlugin, QuarantineEvidence, SealedCredentials, Store};
use sqlx::Row;

use crate::fixtures::*;
use crate::support::{HOST_ROLE, OWNER_ROLE, PgTestDb};

/// Every table that carries tenant rows. The catalog test checks that no other table has a
/// `user_id` column, so a new tenant table cannot be added without landing here.
const TENANT_TABLES: [&str; 11] = [
    "profiles",
    "capital_accounts",
    "orders",
    "fills",
    "lifecycles",
    "trade_history",
    "ledger_entries",
    "plugins",
    "profile_bindings",
    "profile_credentials",
    "profile_quarantines",
];

/// Tenant tables only operators write (through the store's operator scope; on
/// `capital_budgets` only the owner's triggers): a tenant's claims read their own rows and
/// write none.
const OPERATOR_WRITTEN_TABLES: [&str; 3] = [
    "budget_grants",
    "capital_budgets",
    "host_account_assignments",
];

/// SQLSTATE of both "permission denied" and "new row violates row-level security policy".
const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// A user with one profile that went through a full ENTRY and a partial EXIT, with a plugin
/// bound, credentials stored and a quarantine, so that every tenant table has rows.
async fn trading_user(store: &Store) -> (UserId, ProfileId) {
    let user = UserId::new_random();
    let profile = funded_profile(store, user, "1000").await;
    let s = sym("BTCUSDT");
    let lease = entry_lock(store, profile, &s).await;
    let tenant = store.tenant(user);
    let request = entry(&lease, profile, &s, 1, "2", "100");
    tenant.write_ahead_entry(&request).await.unwrap();
    tenant
        .record_fill(&fill(&request.client_order_id, "t1", "2", "100", "0.1"))
        .await
        .unwrap();
    let exit_request = exit(profile, &s, 2, "1", "105");
    tenant.write_ahead_exit(&exit_request).await.unwrap();
    tenant
        .record_fill(&fill(
            &exit_request.client_order_id,
            "t2",
            "1",
            "105",
            "0.1",
        ))
        .await
        .unwrap();
    let mut tx = tenant.begin().await.unwrap();
    let (plugin, _) = tx
        .insert_plugin(NewPlugin {
            name: "p",
            sha256: &"ab".repeat(32),
            report: "{}",
            wasm: b"\0asm",
        })
        .await
        .unwrap();
    tx.bind_plugin(profile, plugin.plugin, "{}").await.unwrap();
    let sealed = SealedCredentials {
        exchange: "paper".to_owned(),
        nonce: vec![0; 24],
        ciphertext: vec![1; 32],
        updated_at_ms: 0,
    };
    tx.put_credentials(profile, &sealed).await.unwrap();
    let evidence = [QuarantineEvidence::new(
        "position_mismatch",
        "BTCUSDT",
        "position 1",
        "position 0",
    )];
    tx.enter_quarantine(profile, "position_mismatch x1", &evidence, 0)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    (user, profile)
}

/// Row counts of every tenant table as `user` sees them, plus the user's rows as JSON.
async fn snapshot(store: &Store, user: UserId) -> Vec<(i64, String)> {
    let mut tx = store.tenant(user).begin().await.unwrap();
    let conn = tx.pg_connection().unwrap();
    let mut out = Vec::new();
    for table in TENANT_TABLES {
        let row = sqlx::query(&format!(
            "SELECT count(*) AS n, coalesce(json_agg(t ORDER BY t::text)::text, '') AS rows FROM {table} t"
        ))
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        out.push((row.get("n"), row.get("rows")));
    }
    out
}

fn assert_refused_or_no_rows(
    result: Result<sqlx::postgres::PgQueryResult, sqlx::Error>,
    what: &str,
) {
    match result {
        Ok(done) => assert_eq!(done.rows_affected(), 0, "{what} changed rows"),
        Err(e) => assert_eq!(
            e.as_database_error().and_then(|d| d.code()).as_deref(),
            Some(INSUFFICIENT_PRIVILEGE),
            "{what}: {e}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_tenant_matrix_user_a_sees_and_changes_nothing_of_user_b() {
    let db = PgTestDb::create().await;
    let store = db.store.clone();
    let (alice, _) = trading_user(&store).await;
    let (bob, _) = trading_user(&store).await;
    let bob_before = snapshot(&store, bob).await;
    let alice_before = snapshot(&store, alice).await;
    assert!(
        bob_before.iter().all(|(n, _)| *n > 0),
        "every table has rows"
    );
    // One row of each of Bob's tables, as Bob sees it.
    let mut bob_rows = Vec::new();
    {
        let mut tx = store.tenant(bob).begin().await.unwrap();
        let conn = tx.pg_connection().unwrap();
        for table in TENANT_TABLES {
            let row: String = sqlx::query_scalar(&format!(
                "SELECT row_to_json(t)::text FROM {table} t LIMIT 1"
            ))
            .fetch_one(&mut *conn)
            .await
            .unwrap();
            bob_rows.push(row);
        }
    }
    let bob_id = bob.to_string();
    for (table, bob_row) in TENANT_TABLES.iter().zip(&bob_rows) {
        let mut tx = store.tenant(alice).begin().await.unwrap();
        let conn = tx.pg_connection().unwrap();
        let seen: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} WHERE user_id = $1::uuid"
        ))
        .bind(&bob_id)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert_eq!(seen, 0, "SELECT on {table} sees Bob's rows");
        let update = sqlx::query(&format!(
            "UPDATE {table} SET user_id = user_id WHERE user_id = $1::uuid"
        ))
        .bind(&bob_id)
        .execute(&mut *conn)
        .await;
        assert_refused_or_no_rows(update, &format!("UPDATE {table}"));
        drop(tx);
        let mut tx = store.tenant(alice).begin().await.unwrap();
        let conn = tx.pg_connection().unwrap();
        let delete = sqlx::query(&format!("DELETE FROM {table} WHERE user_id = $1::uuid"))
            .bind(&bob_id)
            .execute(&mut *conn)
            .await;
        assert_refused_or_no_rows(delete, &format!("DELETE {table}"));
        drop(tx);
        let mut tx = store.tenant(alice).begin().await.unwrap();
        let conn = tx.pg_connection().unwrap();
        let insert = sqlx::query(&format!(
            "INSERT INTO {table} OVERRIDING SYSTEM VALUE SELECT * FROM json_populate_record(NULL::{table}, $1::json)"
        ))
        .bind(bob_row)
        .execute(&mut *conn)
        .await;
        let error = insert.expect_err(&format!("INSERT of Bob's row into {table} as Alice"));
        assert_eq!(
            error.as_database_error().and_then(|d| d.code()).as_deref(),
            Some(INSUFFICIENT_PRIVILEGE),
            "INSERT {table}: {error}"
        );
    }
    assert_eq!(
        snapshot(&store, bob).await,
        bob_before,
        "Bob's rows unchanged"
    );
    assert_eq!(snapshot(&store, alice).await, alice_before);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_a_row_to_another_user_is_refused_and_no_claims_means_no_rows() {
    let db = PgTestDb::create().await;
    let store = db.store.clone();
    let (alice, _) = trading_user(&store).await;
    let bob = UserId::new_random();
    for table in TENANT_TABLES {
        let mut tx = store.tenant(alice).begin().await.unwrap();
        let conn = tx.pg_connection().unwrap();
        let moved = sqlx::query(&format!("UPDATE {table} SET user_id = $1::uuid"))
            .bind(bob.to_string())
            .execute(&mut *conn)
            .await
            .expect_err(&format!("moving {table} rows to another user"));
        assert_eq!(
            moved.as_database_error().and_then(|d| d.code()).as_deref(),
            Some(INSUFFICIENT_PRIVILEGE),
            "{table}: {moved}"
        );
    }
    let pool = store.pg_pool().unwrap();
    for table in TENANT_TABLES {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(n, 0, "{table} shows rows without claims");
    }
    assert!(snapshot(&store, alice).await.iter().all(|(n, _)| *n > 0));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_role_owns_nothing_bypasses_nothing_and_every_tenant_table_forces_rls() {
    let db = PgTestDb::create().await;
    let pool = db.store.pg_pool().unwrap();
    let me: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(me, HOST_ROLE);
    let (superuser, bypass): (bool, bool) =
        sqlx::query_as("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
            .fetch_one(pool)
            .await
            .unwrap();
    assert!(
        !superuser && !bypass,
        "the host role must be neither SUPERUSER nor BYPASSRLS"
    );
    let owned: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM pg_class WHERE relowner = r.oid) \
              + (SELECT count(*) FROM pg_proc WHERE proowner = r.oid) \
              + (SELECT count(*) FROM pg_namespace WHERE nspowner = r.oid) \
              + (SELECT count(*) FROM pg_type WHERE typowner = r.oid) \
         FROM pg_roles r WHERE r.rolname = current_user",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(owned, 0, "the host role owns objects");
    let can_become_owner: bool =
        sqlx::query_scalar("SELECT pg_has_role(current_user, $1, 'MEMBER')")
            .bind(OWNER_ROLE)
            .fetch_one(pool)
            .await
            .unwrap();
    assert!(!can_become_owner, "the host role can SET ROLE to the owner");
    let with_user_id: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'user_id' AND NOT a.attisdropped \
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    // The profile directory names owners without RLS, so instances can list every profile: it
    // must stay ids only and read-only for the host role.
    let mut expected: Vec<String> = TENANT_TABLES
        .iter()
        .chain(&OPERATOR_WRITTEN_TABLES)
        .map(|t| t.to_string())
        .collect();
    expected.push("profile_directory".to_string());
    expected.sort();
    assert_eq!(with_user_id, expected, "tenant tables in the schema");
    let directory_columns: Vec<String> = sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = 'profile_directory'::regclass \
         AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        directory_columns,
        ["profile_id", "user_id", "created_at_ms"],
        "the profile directory holds ids only"
    );
    for privilege in ["INSERT", "UPDATE", "DELETE", "TRUNCATE"] {
        let granted: bool =
            sqlx::query_scalar("SELECT has_table_privilege(current_user, 'profile_directory', $1)")
                .bind(privilege)
                .fetch_one(pool)
                .await
                .unwrap();
        assert!(
            !granted,
            "the host role may {privilege} the profile directory"
        );
    }
    for table in TENANT_TABLES {
        let (enabled, forced, policies): (bool, bool, i64) = sqlx::query_as(
            "SELECT c.relrowsecurity, c.relforcerowsecurity, \
             (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid AND p.polcmd = '*' \
              AND p.polqual IS NOT NULL AND p.polwithcheck IS NOT NULL \
              AND pg_get_expr(p.polqual, p.polrelid) LIKE '%request.jwt.claims%' \
              AND pg_get_expr(p.polwithcheck, p.polrelid) LIKE '%request.jwt.claims%') \
             FROM pg_class c WHERE c.oid = $1::regclass",
        )
        .bind(table)
        .fetch_one(pool)
        .await
        .unwrap();
        assert!(
            enabled && forced,
            "{table}: RLS enabled {enabled}, forced {forced}"
        );
        assert_eq!(
            policies, 1,
            "{table}: one policy with USING and WITH CHECK on the claims"
        );
    }
    db.drop_db().await;
}

/// A tenant cannot grant itself capital or the host's exchange account, even with SQL of its
/// own on the host's connection: under a tenant's claims the operator-written tables refuse
/// every write and show only the tenant's rows; under an operator's claims grants and
/// assignments are written, and a grant moves the budget only through the owner's trigger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_grant_itself_capital_or_the_hosts_account() {
    let db = PgTestDb::create().await;
    let store = db.store.clone();
    let (alice, alice_profile) = trading_user(&store).await;
    let (bob, _) = trading_user(&store).await;
    store
        .operator(keel_kernel::store::HOST_OPERATOR)
        .assign_host_account(alice_profile, true)
        .await
        .unwrap();
    let writes = [
        format!(
            "INSERT INTO budget_grants (user_id, operator_id, amount) VALUES ('{bob}', '{bob}', 1000000)"
        ),
        format!("UPDATE capital_budgets SET granted = granted + 1000000 WHERE user_id = '{bob}'"),
        format!(
            "INSERT INTO capital_budgets (user_id, granted) VALUES ('{}', 1)",
            UserId::new_random()
        ),
        format!(
            "INSERT INTO host_account_assignments (profile_id, user_id, operator_id) \
             SELECT profile_id, user_id, user_id FROM profiles WHERE user_id = '{bob}'"
        ),
    ];
    for sql in &writes {
        let mut tx = store.tenant(bob).begin().await.unwrap();
        let conn = tx.pg_connection().unwrap();
        let refused = sqlx::query(sql).execute(&mut *conn).await.expect_err(sql);
        assert_eq!(
            refused
                .as_database_error()
                .and_then(|d| d.code())
                .as_deref(),
            Some(INSUFFICIENT_PRIVILEGE),
            "{sql}: {refused}"
        );
    }
    for table in OPERATOR_WRITTEN_TABLES {
        let mut tx = store.tenant(bob).begin().await.unwrap();
        let conn = tx.pg_connection().unwrap();
        let foreign: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} WHERE user_id <> '{bob}'"
        ))
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert_eq!(foreign, 0, "{table}: bob sees another user's rows");
    }
    let budget = store
        .operator(keel_kernel::store::HOST_OPERATOR)
        .budget(bob)
        .await
        .unwrap();
    assert_eq!(
        budget.granted.get(),
        d("10000000000"),
        "bob's budget is as granted"
    );
    // Alice cannot give her assignment up either (or take anyone's): no row is hers to delete.
    let mut tx = store.tenant(alice).begin().await.unwrap();
    let conn = tx.pg_connection().unwrap();
    let deleted = sqlx::query("DELETE FROM host_account_assignments")
        .execute(&mut *conn)
        .await
        .unwrap();
    assert_eq!(deleted.rows_affected(), 0);
    tx.commit().await.unwrap();
    let mut tx = store.tenant(alice).begin().await.unwrap();
    assert!(tx.host_account_assigned(alice_profile).await.unwrap());
    db.drop_db().await;
}
