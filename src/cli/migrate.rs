//! `keel migrate`: applies the store's migrations.

use anyhow::{Context, bail};
use keel_kernel::store::Store;

/// Where to apply migrations.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// PostgreSQL URL of the owner role (`database.admin_url`): it runs the migrations, the host
    /// role never does.
    #[arg(long, env = "KEEL_DATABASE_ADMIN_URL")]
    pub admin_url: Option<String>,
    /// `sqlite:PATH` of an embedded store (created if missing). Ignored when --admin-url is set.
    #[arg(long, env = "KEEL_DATABASE_URL")]
    pub database_url: Option<String>,
}

/// Applies the migrations of the database the arguments name.
pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    match (args.admin_url, args.database_url) {
        (Some(admin_url), _) => {
            Store::migrate_postgres(&admin_url)
                .await
                .context("applying the PostgreSQL migrations as the owner role")?;
            println!("postgres migrations applied");
        }
        (None, Some(url)) if url.starts_with("sqlite:") => {
            let store = Store::open(&url)
                .await
                .with_context(|| format!("opening and migrating {url}"))?;
            store.close().await;
            println!("sqlite migrations applied to {url}");
        }
        (None, Some(url)) => bail!(
            "--database-url {url:?} is not sqlite:PATH; PostgreSQL migrations run as the owner \
             role: pass --admin-url"
        ),
        (None, None) => {
            bail!("pass --admin-url (PostgreSQL owner role) or --database-url sqlite:PATH")
        }
    }
    Ok(())
}
