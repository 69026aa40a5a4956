//! What the store says a profile runs with: its row (risk rules, switches), the plugin bound
//! to it through the API, if any, and whether a request to end its quarantine stands. `keel serve` and `keel demo` start every profile from it, so
//! what an owner set survives a restart and follows the profile to another instance.

use std::collections::BTreeMap;

use anyhow::Context;
use keel_kernel::ids::{ProfileId, UserId};
use keel_kernel::store::{ProfileRow, SealedCredentials, Store};

/// A plugin bound to a profile: the component's bytes and the settings handed to its `init`.
pub struct BoundPlugin {
    /// The name its uploader gave it.
    pub name: String,
    /// The component, as uploaded.
    pub wasm: Vec<u8>,
    /// The settings of the binding.
    pub config: Vec<(String, String)>,
}

/// A profile as stored.
pub struct StoredProfile {
    /// The profile's row.
    pub row: ProfileRow,
    /// The plugin bound to it, if one is.
    pub binding: Option<BoundPlugin>,
    /// Its owner's exchange credentials, sealed, if the owner gave some.
    pub credentials: Option<SealedCredentials>,
    /// An operator assigned it the host's exchange account.
    pub host_account: bool,
    /// It is quarantined and its owner or an operator asked (through any instance) to end it.
    pub quarantine_clear_requested: bool,
}

/// Reads the profile's row, binding and credentials in one transaction of its owner's scope.
pub async fn stored_profile(
    store: &Store,
    user: UserId,
    profile: ProfileId,
) -> anyhow::Result<StoredProfile> {
    let mut tx = store.tenant(user).begin().await?;
    let row = tx
        .profile(profile, false)
        .await?
        .with_context(|| format!("profile {profile} is not in the store"))?;
    let binding = match tx.binding(profile).await? {
        Some(binding) => {
            let missing = || format!("plugin {} bound to {profile} is stored", binding.plugin);
            let name = tx.plugin(binding.plugin).await?.with_context(missing)?.name;
            let wasm = tx
                .plugin_wasm(binding.plugin)
                .await?
                .with_context(missing)?;
            let config = serde_json::from_str::<BTreeMap<String, String>>(&binding.config)
                .with_context(|| format!("reading the config bound to {profile}"))?
                .into_iter()
                .collect();
            Some(BoundPlugin { name, wasm, config })
        }
        None => None,
    };
    let credentials = tx.credentials(profile).await?;
    let host_account = tx.host_account_assigned(profile).await?;
    let quarantine_clear_requested = tx
        .quarantine(profile)
        .await?
        .is_some_and(|q| q.clear_requested_by.is_some());
    tx.commit().await?;
    Ok(StoredProfile {
        row,
        binding,
        credentials,
        host_account,
        quarantine_clear_requested,
    })
}
