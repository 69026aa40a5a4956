//! Several `keel serve` instances on one database: which instance runs which profile.
//!
//! Each profile in the directory ([`Store::profile_directory`]) is run by the one instance that
//! holds its profile lease (`profile_leases`: a TTL by the database clock, an owner token per
//! instance, a fence from a sequence that only grows). Every `lease_renew_ms` an instance renews
//! its leases and reads the directory for profiles nobody holds — a new profile, or one whose
//! instance died and whose lease expired — and on PostgreSQL a notification on
//! [`PROFILES_CHANNEL`] makes it look at once.
//!
//! Instances share the profiles out evenly: each holds a presence lease (`instance:<owner>`, in
//! the same table and with the same TTL) while it runs, counts the live ones, and runs at most its
//! share — the directory's profiles divided by the live instances, rounded up, and at most
//! `profiles_max`. Only each user's oldest `running_per_user_max` profiles of the directory are
//! shared out ([`keel_api::quotas::within_running_quota`]); the others wait, logged once, until
//! one of their owner's running profiles is deleted. An instance over its share (another one
//! joined) stops one profile per round, letting its current step finish and releasing the
//! lease, and leaves it for an instance under its share to take (with the usual recovery
//! first); a dead instance's presence expires with its leases, and the survivors' shares grow
//! to cover its profiles.
//!
//! The lease's fence is carried into every write of the profile: the engine of a profile gets a
//! store [`Store::guarded_by`] the lease, whose tenant transactions first check (and hold until
//! commit) that the lease is still that fence's and unexpired. An instance that was stopped past
//! its TTL (a pause, a partition) and comes back cannot write: its transactions are refused
//! inside themselves, and its write-ahead rule means nothing reaches the exchange that the
//! database does not hold. It also stops the profile as soon as it sees the lease lost — by
//! a failed renewal, or by its own monotonic clock passing the TTL since the last renewal.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use keel_kernel::engine::HostSwitches;
use keel_kernel::ids::ProfileId;
use keel_kernel::lock::{Lease, LockError, LockKey, LockKind, OwnerToken};
use keel_kernel::metrics::Metrics;
use keel_kernel::store::{
    DirectoryEntry, HOST_CHANNEL, HostSwitchesRow, LeaseGuard, PROFILES_CHANNEL, SETTINGS_CHANNEL,
    Store, StoreError,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{Loops, ProfileLoops};
use keel_api::health::{LoopConfig, LoopHealth};
use keel_api::quotas::{running_quota_reason, within_running_quota};

/// How profiles are shared between instances.
#[derive(Debug, Clone, Copy)]
pub struct ClusterConfig {
    /// TTL of a profile lease.
    pub lease_ttl_ms: i64,
    /// Time between renewals and directory reads.
    pub lease_renew_ms: u64,
    /// Most profiles this instance runs.
    pub profiles_max: usize,
    /// Most profiles of one user that run (on all instances together).
    pub running_per_user_max: usize,
}

/// Builds the engine and channels of a profile this instance just took.
#[async_trait::async_trait]
pub trait ProfileStarter: Send + Sync {
    /// The loops' inputs for `entry`, whose engine must write through `store` (guarded by the
    /// profile's lease).
    async fn start(&self, entry: DirectoryEntry, store: Store) -> anyhow::Result<ProfileLoops>;

    /// The owner changed the running profile's settings (switches, risk rules, bound plugin,
    /// exchange credentials), possibly through another instance: re-read them through `store`
    /// and apply what can change under running loops.
    async fn refresh(&self, entry: DirectoryEntry, store: &Store) -> anyhow::Result<Refreshed>;

    /// The host switches every engine it builds reads.
    fn switches(&self) -> &HostSwitches;

    /// Profiles whose exchange account was changed through this process's API (credentials,
    /// the host's account): how a store without notifications (SQLite) learns of it.
    fn account_changes(&self) -> mpsc::UnboundedReceiver<ProfileId>;

    /// The profile's loops ended in this process (stopped, moved or failed): forget what was
    /// kept for them.
    fn stopped(&self, profile: ProfileId);
}

/// What re-reading a running profile's settings asks of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    /// Applied to the running loops.
    Applied,
    /// The profile now trades on another exchange account: its loops must stop and start again
    /// (the lease is released and taken again at the next directory read).
    Restart,
}

/// A profile this instance runs.
struct Owned {
    entry: DirectoryEntry,
    /// The store guarded by the lease, as the profile's engine writes through it.
    store: Store,
    lease: Lease,
    /// When the lease was last granted or renewed, by this process's monotonic clock: the lease
    /// is surely live until `renewed_at + ttl` (the database counts from a later instant).
    renewed_at: Instant,
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
}

/// The profile leases of one instance and the loops of the profiles it holds.
pub struct Cluster {
    store: Store,
    owner: OwnerToken,
    config: ClusterConfig,
    loop_config: LoopConfig,
    starter: Arc<dyn ProfileStarter>,
    metrics: Arc<Metrics>,
    health: Arc<LoopHealth>,
    owned: HashMap<ProfileId, Owned>,
    /// Profiles whose loops were told to stop and have not ended yet: not taken again before.
    stopping: HashMap<ProfileId, (Lease, JoinHandle<anyhow::Result<()>>)>,
    /// This instance's presence lease, while it holds one.
    presence: Option<Lease>,
    /// The stored host switches as this instance last read them.
    host_switches_seen: Option<HostSwitchesRow>,
    /// Profiles past their owner's running quota, as last logged.
    over_quota: std::collections::HashSet<ProfileId>,
}

impl Cluster {
    /// An instance identified by `owner` that has taken nothing yet.
    pub fn new(
        store: Store,
        owner: OwnerToken,
        config: ClusterConfig,
        loop_config: LoopConfig,
        starter: Arc<dyn ProfileStarter>,
        metrics: Arc<Metrics>,
        health: Arc<LoopHealth>,
    ) -> Cluster {
        Cluster {
            store,
            owner,
            config,
            loop_config,
            starter,
            metrics,
            health,
            owned: HashMap::new(),
            stopping: HashMap::new(),
            presence: None,
            host_switches_seen: None,
            over_quota: std::collections::HashSet::new(),
        }
    }

    /// Takes, renews and gives up profiles until `shutdown` turns true; then stops every
    /// profile's loops after their current step and releases the leases.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let (mut changes, mut settings) = self.listen().await;
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.lease_renew_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut first = true;
        loop {
            let settings_changed = tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => break,
                _ = tick.tick() => None,
                Some(()) = changes.recv() => None,
                Some(profile) = settings.recv() => Some(profile),
            };
            if let Some(profile) = settings_changed {
                self.refresh(profile).await;
                continue;
            }
            self.sync_host_switches().await;
            self.announce().await;
            self.renew().await;
            self.reap().await;
            if let Err(error) = self.scan().await {
                tracing::warn!(error = %format!("{error:#}"), "reading the profile directory failed; retrying");
            } else if first {
                first = false;
                self.health.expect_profiles(self.owned.len(), &self.metrics);
            }
        }
        self.shut_down().await
    }

    /// Re-reads and applies the settings of a profile this instance runs (others' are theirs).
    async fn refresh(&mut self, profile: ProfileId) {
        let Some(owned) = self.owned.get(&profile) else {
            return;
        };
        match self.starter.refresh(owned.entry, &owned.store).await {
            Ok(Refreshed::Applied) => {
                tracing::info!(profile_id = %profile, "profile settings re-read")
            }
            Ok(Refreshed::Restart) => {
                tracing::info!(profile_id = %profile, "the profile's exchange account changed: restarting it");
                self.stop_profile(profile);
            }
            Err(error) => {
                tracing::error!(profile_id = %profile, error = %format!("{error:#}"), "applying the profile's new settings failed");
            }
        }
    }

    /// Notifications (PostgreSQL): directory changes, coalesced into one pending wake-up at
    /// most, and the ids of profiles whose settings changed, each delivered. On SQLite (one
    /// instance) the API applies switches, limits and bindings to its own loops, and tells of
    /// credentials changes through the starter; the periodic scan finds directory changes. If
    /// LISTEN fails, settings are read at the next start.
    async fn listen(&self) -> (mpsc::Receiver<()>, mpsc::UnboundedReceiver<ProfileId>) {
        let (tx, rx) = mpsc::channel(1);
        let (settings_tx, settings_rx) = mpsc::unbounded_channel();
        let Some(pool) = self.store.pg_pool() else {
            return (rx, self.starter.account_changes());
        };
        let mut listener = match sqlx::postgres::PgListener::connect_with(pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "LISTEN unavailable; profile changes are found by polling");
                return (rx, settings_rx);
            }
        };
        if let Err(error) = listener
            .listen_all([PROFILES_CHANNEL, SETTINGS_CHANNEL, HOST_CHANNEL])
            .await
        {
            tracing::warn!(%error, "LISTEN unavailable; profile changes are found by polling");
            return (rx, settings_rx);
        }
        tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(note) if note.channel() == SETTINGS_CHANNEL => {
                        let Ok(id) = note.payload().parse::<uuid::Uuid>() else {
                            tracing::warn!(
                                payload = note.payload(),
                                "a settings notification without a profile id"
                            );
                            continue;
                        };
                        if settings_tx.send(ProfileId::from_uuid(id)).is_err() {
                            return;
                        }
                    }
                    // A directory or host-switch change wakes the loop, which reads both. A full
                    // channel already holds a wake-up: this change is seen by it.
                    Ok(_) => {
                        if let Err(mpsc::error::TrySendError::Closed(())) = tx.try_send(()) {
                            return;
                        }
                    }
                    Err(error) => {
                        // PgListener reconnects by itself on the next recv.
                        tracing::warn!(%error, "profile notifications interrupted");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        (rx, settings_rx)
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.config.lease_ttl_ms.unsigned_abs())
    }

    /// Renews every lease; a lease lost (or possibly expired by the local clock) stops its
    /// profile at once.
    async fn renew(&mut self) {
        let ids: Vec<ProfileId> = self.owned.keys().copied().collect();
        for profile in ids {
            let owned = &self.owned[&profile];
            if owned.renewed_at.elapsed() >= self.ttl() {
                tracing::warn!(profile_id = %profile, "profile lease may have expired before renewal: stopping the profile");
                self.stop_profile(profile);
                continue;
            }
            let asked_at = Instant::now();
            match self
                .store
                .locks()
                .renew(&owned.lease, self.config.lease_ttl_ms)
                .await
            {
                Ok(lease) => {
                    let owned = self.owned.get_mut(&profile).expect("listed above");
                    owned.lease = lease;
                    owned.renewed_at = asked_at;
                }
                Err(StoreError::Lock(LockError::Lost { .. })) => {
                    tracing::warn!(profile_id = %profile, "profile lease lost: stopping the profile");
                    self.stop_profile(profile);
                }
                Err(error) => {
                    // The database is unreachable: keep running until the local clock says the
                    // lease may have expired; the guarded writes refuse anything later anyway.
                    tracing::warn!(profile_id = %profile, %error, "renewing the profile lease failed");
                }
            }
        }
    }

    /// Applies the host switches an operator set through any instance (`host_switches`): at the
    /// first read the stored kill switch adds to this instance's own (`host.kill_switch` may
    /// engage it at start); after that each change an operator makes applies, engaged or
    /// released.
    async fn sync_host_switches(&mut self) {
        let row = match self.store.host_switches().await {
            Ok(row) => row,
            Err(error) => {
                tracing::warn!(%error, "reading the host switches failed");
                return;
            }
        };
        // The whole row, not the time alone: two changes within one millisecond differ in `kill`.
        if self.host_switches_seen == Some(row) {
            return;
        }
        let kill = &self.starter.switches().kill;
        let engaged = match self.host_switches_seen {
            None => kill.load(Ordering::Acquire) || row.kill,
            Some(_) => {
                tracing::warn!(
                    engaged = row.kill,
                    "host-wide kill switch changed by an operator"
                );
                row.kill
            }
        };
        kill.store(engaged, Ordering::Release);
        self.host_switches_seen = Some(row);
    }

    /// Renews this instance's presence lease, or takes it (at start, or after it was lost).
    async fn announce(&mut self) {
        let locks = self.store.locks();
        let ttl_ms = self.config.lease_ttl_ms;
        let renewed = match &self.presence {
            Some(lease) => locks.renew(lease, ttl_ms).await.ok(),
            None => None,
        };
        self.presence = match renewed {
            Some(lease) => Some(lease),
            None => {
                let key = LockKey::instance(self.owner);
                match locks
                    .acquire(LockKind::ProfileLease, &key, self.owner, ttl_ms)
                    .await
                {
                    Ok(lease) => lease,
                    Err(error) => {
                        tracing::warn!(%error, "taking the instance's presence lease failed");
                        None
                    }
                }
            }
        };
    }

    /// How many profiles this instance should run: its even share of the directory's
    /// `listed` profiles over the live instances, at most `profiles_max`.
    async fn share(&self, listed: usize) -> anyhow::Result<usize> {
        // The presence rows of instances that died without releasing theirs (`kill -9`).
        match self
            .store
            .locks()
            .remove_expired(LockKind::ProfileLease, LockKey::INSTANCE_PREFIX)
            .await
        {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "removed the presence of instances gone"),
            Err(error) => tracing::warn!(%error, "removing the presence of instances gone failed"),
        }
        let counted = self
            .store
            .locks()
            .live(LockKind::ProfileLease, LockKey::INSTANCE_PREFIX)
            .await
            .context("counting the live instances")?;
        // Without its own presence (not taken yet) this instance counts itself.
        let instances = counted + usize::from(self.presence.is_none());
        self.metrics
            .cluster_instances
            .set(i64::try_from(instances).unwrap_or(i64::MAX));
        Ok(listed
            .div_ceil(instances.max(1))
            .min(self.config.profiles_max))
    }

    /// Tells a profile's loops to stop; the lease is released once they have.
    fn stop_profile(&mut self, profile: ProfileId) {
        if let Some(owned) = self.owned.remove(&profile) {
            owned.stop.send_replace(true);
            self.stopping.insert(profile, (owned.lease, owned.task));
        }
        self.count_owned();
    }

    fn count_owned(&self) {
        self.metrics
            .profiles_owned
            .set(i64::try_from(self.owned.len()).unwrap_or(i64::MAX));
    }

    /// Collects profiles whose loops ended: stopped ones, and ones that failed on their own.
    async fn reap(&mut self) {
        let failed: Vec<ProfileId> = self
            .owned
            .iter()
            .filter(|(_, o)| o.task.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for profile in failed {
            self.stop_profile(profile);
        }
        let done: Vec<ProfileId> = self
            .stopping
            .iter()
            .filter(|(_, (_, task))| task.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for profile in done {
            let (lease, task) = self.stopping.remove(&profile).expect("listed above");
            self.finish(profile, lease, task).await;
        }
    }

    async fn finish(&self, profile: ProfileId, lease: Lease, task: JoinHandle<anyhow::Result<()>>) {
        match task.await {
            Ok(Ok(())) => tracing::info!(profile_id = %profile, "profile stopped"),
            Ok(Err(error)) => {
                tracing::error!(profile_id = %profile, error = %format!("{error:#}"), "profile loops failed");
            }
            Err(error) => tracing::error!(profile_id = %profile, %error, "profile task panicked"),
        }
        self.health.forget(profile);
        self.metrics.forget_profile_capital(profile);
        self.starter.stopped(profile);
        if let Err(error) = self.store.locks().release(&lease).await {
            // It expires by itself after its TTL.
            tracing::warn!(profile_id = %profile, %error, "releasing the profile lease failed");
        }
    }

    /// Reads the directory: stops profiles that left it, takes free ones up to the limit.
    async fn scan(&mut self) -> anyhow::Result<()> {
        let directory = self
            .store
            .profile_directory()
            .await
            .context("reading the profile directory")?;
        let listed: std::collections::HashSet<ProfileId> =
            directory.iter().map(|e| e.profile).collect();
        let (directory, waiting) =
            within_running_quota(directory, self.config.running_per_user_max);
        let waiting: std::collections::HashSet<ProfileId> =
            waiting.into_iter().map(|e| e.profile).collect();
        for profile in waiting.difference(&self.over_quota) {
            let reason = running_quota_reason(self.config.running_per_user_max);
            tracing::warn!(profile_id = %profile, %reason, "profile not started");
        }
        self.over_quota = waiting;
        let gone: Vec<ProfileId> = self
            .owned
            .keys()
            .filter(|p| !listed.contains(p) || self.over_quota.contains(p))
            .copied()
            .collect();
        for profile in gone {
            if listed.contains(&profile) {
                tracing::info!(profile_id = %profile, "profile past its owner's running quota: stopping it");
            } else {
                tracing::info!(profile_id = %profile, "profile left the directory: stopping it");
            }
            self.stop_profile(profile);
        }
        let share = self.share(directory.len()).await?;
        if self.owned.len() > share {
            // One per round: the instances under their share take it before the next is given.
            if let Some(&profile) = self.owned.keys().max() {
                tracing::info!(profile_id = %profile, share, "over this instance's share of the profiles: handing one over");
                self.stop_profile(profile);
            }
        }
        for entry in directory {
            if self.owned.len() >= share {
                break;
            }
            let busy = self.owned.contains_key(&entry.profile)
                || self.stopping.contains_key(&entry.profile);
            if !busy {
                self.try_take(entry).await?;
            }
        }
        Ok(())
    }

    /// Takes `entry`'s lease if it is free and starts its loops (recovery first).
    async fn try_take(&mut self, entry: DirectoryEntry) -> anyhow::Result<()> {
        let asked_at = Instant::now();
        let key = LockKey::profile(entry.profile);
        let granted = self
            .store
            .locks()
            .acquire(
                LockKind::ProfileLease,
                &key,
                self.owner,
                self.config.lease_ttl_ms,
            )
            .await
            .with_context(|| format!("acquiring the lease of profile {}", entry.profile))?;
        let Some(lease) = granted else {
            return Ok(()); // another instance runs it
        };
        tracing::info!(profile_id = %entry.profile, fence = %lease.fence, "profile lease taken");
        let store = self.store.guarded_by(LeaseGuard::of(entry.profile, &lease));
        let inputs = match self.starter.start(entry, store.clone()).await {
            Ok(inputs) => inputs,
            Err(error) => {
                tracing::error!(profile_id = %entry.profile, error = %format!("{error:#}"), "starting the profile failed");
                let _ = self.store.locks().release(&lease).await;
                return Ok(());
            }
        };
        let loops = Loops::start(
            vec![inputs],
            self.loop_config,
            self.metrics.clone(),
            self.health.clone(),
        );
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(supervise(loops, stop_rx));
        self.owned.insert(
            entry.profile,
            Owned {
                entry,
                store,
                lease,
                renewed_at: asked_at,
                stop,
                task,
            },
        );
        self.count_owned();
        Ok(())
    }

    async fn shut_down(mut self) -> anyhow::Result<()> {
        let ids: Vec<ProfileId> = self.owned.keys().copied().collect();
        for profile in ids {
            self.stop_profile(profile);
        }
        let stopping: Vec<_> = self.stopping.drain().collect();
        for (profile, (lease, task)) in stopping {
            self.finish(profile, lease, task).await;
        }
        if let Some(presence) = self.presence.take() {
            // Gone at once for the others' count; otherwise it expires after its TTL.
            let _ = self.store.locks().release(&presence).await;
        }
        Ok(())
    }
}

/// Runs one profile's loops until told to stop (then lets the current step finish) or until
/// they fail.
async fn supervise(mut loops: Loops, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let failure = tokio::select! {
        _ = stop.wait_for(|stop| *stop) => None,
        error = loops.failed() => Some(error),
    };
    let stopped = loops.stop().await;
    match failure {
        Some(error) => Err(error),
        None => stopped,
    }
}
