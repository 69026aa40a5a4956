//! Uploaded plugin versions, the plugin bound to each profile, and each profile's sealed
//! exchange credentials. The kernel stores bytes and text; checking a plugin and sealing
//! credentials belong to the host.

use sqlx::Row;

use crate::ids::{PluginId, ProfileId};

use super::StoreError;
use super::backend::{RowExt, with_tx};
use super::tenant::TenantTx;

/// Most plugins one listing returns.
pub const PLUGINS_LISTED_MAX: i64 = 1_000;

/// A stored plugin version, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRow {
    /// The plugin version.
    pub plugin: PluginId,
    /// The name its uploader gave it.
    pub name: String,
    /// The sha256 of its bytes, in hex.
    pub sha256: String,
    /// Its size.
    pub size_bytes: i64,
    /// The host's load report, as JSON text.
    pub report: String,
    /// When it was uploaded, ms since the epoch.
    pub created_at_ms: i64,
}

/// A plugin to store.
#[derive(Debug, Clone, Copy)]
pub struct NewPlugin<'a> {
    /// The name its uploader gave it.
    pub name: &'a str,
    /// The sha256 of `wasm`, in hex.
    pub sha256: &'a str,
    /// The host's load report, as JSON text.
    pub report: &'a str,
    /// The component's bytes.
    pub wasm: &'a [u8],
}

/// The plugin version and configuration a profile runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingRow {
    /// The plugin version.
    pub plugin: PluginId,
    /// Its sha256.
    pub sha256: String,
    /// The configuration given to `init`, as JSON text of an object of strings.
    pub config: String,
    /// When it was bound, ms since the epoch.
    pub bound_at_ms: i64,
}

/// A profile's exchange credentials as stored: sealed by the host.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedCredentials {
    /// Which exchange they are for.
    pub exchange: String,
    /// The AEAD nonce.
    pub nonce: Vec<u8>,
    /// The sealed secret.
    pub ciphertext: Vec<u8>,
    /// When they were last set, ms since the epoch (0 before they are stored).
    pub updated_at_ms: i64,
}

impl std::fmt::Debug for SealedCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedCredentials")
            .field("exchange", &self.exchange)
            .field(
                "ciphertext",
                &format_args!("<{} bytes>", self.ciphertext.len()),
            )
            .finish_non_exhaustive()
    }
}

const PLUGIN_COLUMNS: &str = "plugin_id, name, sha256, size_bytes, report, created_at_ms";

fn decode_plugin(row: &impl RowExt) -> Result<PluginRow, StoreError> {
    Ok(PluginRow {
        plugin: PluginId::from_uuid(row.uuid("plugin_id")?),
        name: row.text("name")?,
        sha256: row.text("sha256")?,
        size_bytes: row.int("size_bytes")?,
        report: row.text("report")?,
        created_at_ms: row.int("created_at_ms")?,
    })
}

impl TenantTx {
    /// Stores a plugin version, once per (user, sha256): the same bytes uploaded again return
    /// the stored row and `false`. One INSERT, so an upload is stored whole or not at all.
    pub async fn insert_plugin(
        &mut self,
        plugin: NewPlugin<'_>,
    ) -> Result<(PluginRow, bool), StoreError> {
        assert_eq!(plugin.sha256.len(), 64, "a sha256 in hex");
        let user = self.user_uuid();
        let id = PluginId::new_random();
        let inserted = with_tx!(&mut self.tx, c, b => {
            let done = sqlx::query(
                "INSERT INTO plugins (plugin_id, user_id, name, sha256, size_bytes, report, wasm) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (user_id, sha256) DO NOTHING",
            )
            .bind(id.as_uuid()).bind(user).bind(plugin.name).bind(plugin.sha256)
            .bind(plugin.wasm.len() as i64).bind(plugin.report).bind(plugin.wasm)
            .execute(&mut **c).await?;
            done.rows_affected() == 1
        }, memory => unsupported("insert plugin"));
        let row = with_tx!(&mut self.tx, c, b => {
            let sql = format!("SELECT {PLUGIN_COLUMNS} FROM plugins WHERE user_id = $1 AND sha256 = $2");
            let row = sqlx::query(&sql).bind(user).bind(plugin.sha256)
                .fetch_one(&mut **c).await?;
            decode_plugin(&row)?
        }, memory => unsupported("insert plugin"));
        Ok((row, inserted))
    }

    /// This user's plugins, newest first.
    pub async fn plugins(&mut self) -> Result<Vec<PluginRow>, StoreError> {
        let user = self.user_uuid();
        with_tx!(&mut self.tx, c, b => {
            let sql = format!(
                "SELECT {PLUGIN_COLUMNS} FROM plugins WHERE user_id = $1 \
                 ORDER BY created_at_ms DESC, plugin_id LIMIT $2"
            );
            let rows = sqlx::query(&sql).bind(user).bind(PLUGINS_LISTED_MAX)
                .fetch_all(&mut **c).await?;
            rows.iter().map(decode_plugin).collect()
        }, memory => unsupported("plugins"))
    }

    /// The plugin, unless it is another user's.
    pub async fn plugin(&mut self, plugin: PluginId) -> Result<Option<PluginRow>, StoreError> {
        let user = self.user_uuid();
        with_tx!(&mut self.tx, c, b => {
            let sql = format!("SELECT {PLUGIN_COLUMNS} FROM plugins WHERE plugin_id = $1 AND user_id = $2");
            let row = sqlx::query(&sql).bind(plugin.as_uuid()).bind(user)
                .fetch_optional(&mut **c).await?;
            row.as_ref().map(decode_plugin).transpose()
        }, memory => unsupported("plugin"))
    }

    /// The plugin's bytes, unless it is another user's.
    pub async fn plugin_wasm(&mut self, plugin: PluginId) -> Result<Option<Vec<u8>>, StoreError> {
        let user = self.user_uuid();
        with_tx!(&mut self.tx, c, b => {
            let row = sqlx::query("SELECT wasm FROM plugins WHERE plugin_id = $1 AND user_id = $2")
                .bind(plugin.as_uuid()).bind(user)
                .fetch_optional(&mut **c).await?;
            Ok(row.map(|r| r.try_get::<Vec<u8>, _>("wasm")).transpose()?)
        }, memory => unsupported("plugin wasm"))
    }

    /// Binds a plugin version and its configuration (JSON text) to a profile, replacing any
    /// earlier binding. Both must be this user's: the caller checks them first.
    pub async fn bind_plugin(
        &mut self,
        profile: ProfileId,
        plugin: PluginId,
        config: &str,
    ) -> Result<(), StoreError> {
        let user = self.user_uuid();
        with_tx!(&mut self.tx, c, b => {
            let sql = format!(
                "INSERT INTO profile_bindings (profile_id, user_id, plugin_id, config) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (profile_id) DO UPDATE SET plugin_id = excluded.plugin_id, \
                 config = excluded.config, bound_at_ms = {}",
                b::NOW_MS
            );
            sqlx::query(&sql)
                .bind(profile.as_uuid()).bind(user).bind(plugin.as_uuid()).bind(config)
                .execute(&mut **c).await?;
        }, memory => unsupported("bind plugin"));
        Ok(())
    }

    /// The plugin bound to the profile, if any.
    pub async fn binding(&mut self, profile: ProfileId) -> Result<Option<BindingRow>, StoreError> {
        let user = self.user_uuid();
        with_tx!(&mut self.tx, c, b => {
            let row = sqlx::query(
                "SELECT b.plugin_id, p.sha256, b.config, b.bound_at_ms FROM profile_bindings b \
                 JOIN plugins p ON p.plugin_id = b.plugin_id AND p.user_id = b.user_id \
                 WHERE b.profile_id = $1 AND b.user_id = $2",
            )
            .bind(profile.as_uuid()).bind(user)
            .fetch_optional(&mut **c).await?;
            row.map(|r| -> Result<BindingRow, StoreError> {
                Ok(BindingRow {
                    plugin: PluginId::from_uuid(r.uuid("plugin_id")?),
                    sha256: r.text("sha256")?,
                    config: r.text("config")?,
                    bound_at_ms: r.int("bound_at_ms")?,
                })
            })
            .transpose()
        }, memory => unsupported("binding"))
    }

    /// Stores (or replaces) the profile's sealed credentials. The caller checked the profile.
    pub async fn put_credentials(
        &mut self,
        profile: ProfileId,
        sealed: &SealedCredentials,
    ) -> Result<(), StoreError> {
        let user = self.user_uuid();
        with_tx!(&mut self.tx, c, b => {
            let sql = format!(
                "INSERT INTO profile_credentials (profile_id, user_id, exchange, nonce, ciphertext) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (profile_id) DO UPDATE SET \
                 exchange = excluded.exchange, nonce = excluded.nonce, \
                 ciphertext = excluded.ciphertext, updated_at_ms = {}",
                b::NOW_MS
            );
            sqlx::query(&sql)
                .bind(profile.as_uuid()).bind(user).bind(sealed.exchange.as_str())
                .bind(sealed.nonce.as_slice()).bind(sealed.ciphertext.as_slice())
                .execute(&mut **c).await?;
        }, memory => unsupported("put credentials"));
        Ok(())
    }

    /// The profile's sealed credentials, if any.
    pub async fn credentials(
        &mut self,
        profile: ProfileId,
    ) -> Result<Option<SealedCredentials>, StoreError> {
        let user = self.user_uuid();
        with_tx!(&mut self.tx, c, b => {
            let row = sqlx::query(
                "SELECT exchange, nonce, ciphertext, updated_at_ms FROM profile_credentials \
                 WHERE profile_id = $1 AND user_id = $2",
            )
            .bind(profile.as_uuid()).bind(user)
            .fetch_optional(&mut **c).await?;
            row.map(|r| -> Result<SealedCredentials, StoreError> {
                Ok(SealedCredentials {
                    exchange: r.text("exchange")?,
                    nonce: r.try_get("nonce")?,
                    ciphertext: r.try_get("ciphertext")?,
                    updated_at_ms: r.int("updated_at_ms")?,
                })
            })
            .transpose()
        }, memory => unsupported("credentials"))
    }

    /// Removes the profile's credentials; false when it had none.
    pub async fn delete_credentials(&mut self, profile: ProfileId) -> Result<bool, StoreError> {
        let user = self.user_uuid();
        with_tx!(&mut self.tx, c, b => {
            let done = sqlx::query("DELETE FROM profile_credentials WHERE profile_id = $1 AND user_id = $2")
                .bind(profile.as_uuid()).bind(user)
                .execute(&mut **c).await?;
            Ok(done.rows_affected() == 1)
        }, memory => unsupported("delete credentials"))
    }
}
