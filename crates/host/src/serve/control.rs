//! [`ProfileControl`] for the loops of this process: each registered profile has [`Commands`]
//! its task reads between steps — the latest switches and risk rules the API recorded, and a
//! bounded channel of reconciliation requests — and (for a Wasm strategy) the [`SwapHandle`] its
//! strategy takes a new instance from at its next call boundary.
//!
//! Recording a change never waits for the loop: the API answers at once, whatever the loop is
//! doing, and the loop applies the latest of each setting at its next step (a pause and a resume
//! in between leave only the resume to apply).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

use keel_kernel::engine::{Clock, HostSwitches, ProfileEngine};
use keel_kernel::ids::ProfileId;
use keel_kernel::risk::RiskLimits;
use tokio::sync::{Notify, mpsc, oneshot};

use keel_api::{ControlChange, ProfileControl, ReconcileOutcome};
use keel_runtime::{PluginDigest, PreparedInstance, RunningVersion, SwapHandle};

/// Reconciliation requests queued per profile before the operator's request waits for the loop.
pub const COMMAND_QUEUE_MAX: usize = 16;

/// What a profile's loop is asked to do between two of its steps.
#[derive(Debug)]
pub enum Command {
    /// Apply a change of switches or risk rules.
    Change(ControlChange),
    /// Run a reconciliation pass now and report its result label (or its error).
    Reconcile(oneshot::Sender<Result<&'static str, String>>),
}

/// The changes recorded for a loop and not yet taken: the latest value of each setting.
#[derive(Debug, Default)]
struct Pending {
    clear_quarantine: bool,
    quarantine_clear_requested: bool,
    paused: Option<bool>,
    killed: Option<bool>,
    limits: Option<RiskLimits>,
}

impl Pending {
    fn record(&mut self, change: ControlChange) {
        match change {
            ControlChange::ClearQuarantine => self.clear_quarantine = true,
            ControlChange::QuarantineClearRequested => self.quarantine_clear_requested = true,
            ControlChange::Paused(paused) => self.paused = Some(paused),
            ControlChange::Killed(killed) => self.killed = Some(killed),
            ControlChange::Limits(limits) => self.limits = Some(limits),
        }
    }

    /// The next change to apply. A request to end a quarantine comes first: a resume that
    /// acknowledges a fault lifts the pause, and a pause recorded after it must still hold.
    fn take(&mut self) -> Option<ControlChange> {
        if std::mem::take(&mut self.clear_quarantine) {
            return Some(ControlChange::ClearQuarantine);
        }
        if std::mem::take(&mut self.quarantine_clear_requested) {
            return Some(ControlChange::QuarantineClearRequested);
        }
        if let Some(paused) = self.paused.take() {
            return Some(ControlChange::Paused(paused));
        }
        if let Some(killed) = self.killed.take() {
            return Some(ControlChange::Killed(killed));
        }
        self.limits.take().map(ControlChange::Limits)
    }
}

/// The slot the API records changes in and the loop takes them from.
#[derive(Debug, Default)]
struct Slot {
    pending: Mutex<Pending>,
    changed: Notify,
}

impl Slot {
    fn record(&self, change: ControlChange) {
        self.pending.lock().expect("lock poisoned").record(change);
        self.changed.notify_one();
    }

    fn take(&self) -> Option<ControlChange> {
        self.pending.lock().expect("lock poisoned").take()
    }
}

/// What a profile's loop reads between two of its steps.
#[derive(Debug)]
pub struct Commands {
    requests: mpsc::Receiver<Command>,
    slot: Arc<Slot>,
}

impl Commands {
    /// The next command: a recorded change first, then a queued request. `None` once nothing
    /// can send any more. Cancel safe: a change is taken only when it is returned.
    pub async fn recv(&mut self) -> Option<Command> {
        loop {
            if let Some(change) = self.slot.take() {
                return Some(Command::Change(change));
            }
            tokio::select! {
                biased;
                () = self.slot.changed.notified() => {}
                request = self.requests.recv() => return request,
            }
        }
    }
}

impl From<mpsc::Receiver<Command>> for Commands {
    /// Commands of a loop no [`LoopControl`] knows: only what is sent on the channel.
    fn from(requests: mpsc::Receiver<Command>) -> Self {
        Commands {
            requests,
            slot: Arc::default(),
        }
    }
}

/// Applies a change to the engine (reconciliation is the loop's own: it records its health).
/// A request to end a quarantine is in the store already (`profile_quarantines`): the loop runs
/// a reconciliation pass for it, which reads it and, when clean, ends the quarantine.
pub(super) fn apply(change: ControlChange, engine: &mut ProfileEngine) {
    match change {
        ControlChange::Paused(paused) => engine.set_paused(paused),
        ControlChange::ClearQuarantine | ControlChange::QuarantineClearRequested => {}
        ControlChange::Killed(killed) => engine.set_killed(killed),
        ControlChange::Limits(limits) => engine.set_limits(limits),
    }
}

struct Registered {
    commands: mpsc::Sender<Command>,
    slot: Arc<Slot>,
    swap: Option<SwapHandle>,
    clock: Arc<dyn Clock>,
    running: Option<RunningPlugin>,
}

/// The plugin version and settings a profile's strategy runs (or was last handed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningPlugin {
    /// The plugin version.
    pub digest: PluginDigest,
    /// The settings its `init` got.
    pub config: Arc<[(String, String)]>,
}

impl RunningPlugin {
    /// What `instance` runs.
    pub fn of(instance: &PreparedInstance) -> RunningPlugin {
        RunningPlugin {
            digest: instance.digest().clone(),
            config: instance.setup().config.clone(),
        }
    }
}

/// The profiles whose loops run in this process.
pub struct LoopControl {
    switches: Arc<HostSwitches>,
    profiles: RwLock<HashMap<ProfileId, Registered>>,
    /// Where [`ProfileControl::account_changed`] tells of a change, once someone listens.
    credentials: Mutex<Option<mpsc::UnboundedSender<ProfileId>>>,
}

impl LoopControl {
    /// Control over loops whose engines share `switches` (the host-wide kill switch).
    pub fn new(switches: Arc<HostSwitches>) -> Self {
        LoopControl {
            switches,
            profiles: RwLock::new(HashMap::new()),
            credentials: Mutex::new(None),
        }
    }

    /// The profiles whose exchange account changes through this process (credentials stored,
    /// replaced or removed; the host's account assigned or taken back) from now on (a later
    /// call takes them over).
    pub fn account_changes(&self) -> mpsc::UnboundedReceiver<ProfileId> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.credentials.lock().expect("lock poisoned") = Some(tx);
        rx
    }

    /// Registers a profile before its loop starts; the [`Commands`] go into its
    /// [`super::ProfileLoops`]. `swap` is the strategy's hot-swap handle, when it has one.
    pub fn register(
        &self,
        profile: ProfileId,
        swap: Option<SwapHandle>,
        clock: Arc<dyn Clock>,
    ) -> Commands {
        let (commands, requests) = mpsc::channel(COMMAND_QUEUE_MAX);
        let slot = Arc::new(Slot::default());
        let receiver = Commands {
            requests,
            slot: slot.clone(),
        };
        let registered = Registered {
            commands,
            slot,
            swap,
            clock,
            running: None,
        };
        let mut profiles = self.profiles.write().expect("lock poisoned");
        // A profile this instance ran before (and stopped, its loop gone) may be taken again.
        let earlier = profiles.insert(profile, registered);
        assert!(
            earlier.is_none_or(|e| e.commands.is_closed()),
            "profile {profile} registered while its loop still runs"
        );
        receiver
    }

    /// Forgets a profile whose loop has ended (its command receiver dropped); a profile whose
    /// loop runs stays registered.
    pub fn forget(&self, profile: ProfileId) {
        let mut profiles = self.profiles.write().expect("lock poisoned");
        if profiles
            .get(&profile)
            .is_some_and(|r| r.commands.is_closed())
        {
            profiles.remove(&profile);
        }
    }

    /// Records what the profile's strategy runs, to tell later whether its stored binding
    /// asks for something else.
    pub fn set_running(&self, profile: ProfileId, running: RunningPlugin) {
        let mut profiles = self.profiles.write().expect("lock poisoned");
        if let Some(registered) = profiles.get_mut(&profile) {
            registered.running = Some(running);
        }
    }

    /// What the profile's strategy runs, or was last handed.
    pub fn running(&self, profile: ProfileId) -> Option<RunningPlugin> {
        let profiles = self.profiles.read().expect("lock poisoned");
        profiles.get(&profile).and_then(|r| r.running.clone())
    }

    fn sender(&self, profile: ProfileId) -> Option<mpsc::Sender<Command>> {
        let profiles = self.profiles.read().expect("lock poisoned");
        profiles.get(&profile).map(|r| r.commands.clone())
    }
}

#[async_trait::async_trait]
impl ProfileControl for LoopControl {
    fn is_running(&self, profile: ProfileId) -> bool {
        self.sender(profile).is_some_and(|s| !s.is_closed())
    }

    fn clock(&self, profile: ProfileId) -> Option<Arc<dyn Clock>> {
        let profiles = self.profiles.read().expect("lock poisoned");
        profiles.get(&profile).map(|r| r.clock.clone())
    }

    fn offer_strategy(&self, profile: ProfileId, instance: PreparedInstance) -> bool {
        let mut profiles = self.profiles.write().expect("lock poisoned");
        match profiles.get_mut(&profile) {
            Some(Registered {
                swap: Some(swap),
                running,
                ..
            }) => {
                *running = Some(RunningPlugin::of(&instance));
                swap.offer(instance);
                true
            }
            _ => false,
        }
    }

    fn running_plugin(&self, profile: ProfileId) -> Option<RunningVersion> {
        let profiles = self.profiles.read().expect("lock poisoned");
        profiles
            .get(&profile)
            .filter(|r| !r.commands.is_closed())
            .and_then(|r| r.swap.as_ref())
            .map(SwapHandle::running)
    }

    fn apply(&self, profile: ProfileId, change: ControlChange) -> bool {
        let profiles = self.profiles.read().expect("lock poisoned");
        match profiles.get(&profile) {
            Some(registered) if !registered.commands.is_closed() => {
                registered.slot.record(change);
                true
            }
            _ => false,
        }
    }

    async fn reconcile_all(&self) -> Vec<ReconcileOutcome> {
        let senders: Vec<(ProfileId, mpsc::Sender<Command>)> = {
            let profiles = self.profiles.read().expect("lock poisoned");
            profiles
                .iter()
                .map(|(p, r)| (*p, r.commands.clone()))
                .collect()
        };
        let mut waiting = Vec::new();
        for (profile, sender) in senders {
            let (reply, answer) = oneshot::channel();
            if sender.send(Command::Reconcile(reply)).await.is_ok() {
                waiting.push((profile, answer));
            }
        }
        let mut outcomes = Vec::new();
        for (profile, answer) in waiting {
            let outcome = match answer.await {
                Ok(Ok(label)) => ReconcileOutcome {
                    profile_id: profile,
                    result: label.to_owned(),
                    error: None,
                },
                Ok(Err(error)) => ReconcileOutcome {
                    profile_id: profile,
                    result: "error".to_owned(),
                    error: Some(error),
                },
                // The loop stopped before it got to the command.
                Err(_) => continue,
            };
            outcomes.push(outcome);
        }
        outcomes.sort_by_key(|o| o.profile_id);
        outcomes
    }

    fn set_host_kill(&self, engaged: bool) {
        self.switches.kill.store(engaged, Ordering::Release);
    }

    fn host_kill(&self) -> bool {
        self.switches.kill.load(Ordering::Acquire)
    }

    fn account_changed(&self, profile: ProfileId) {
        if let Some(changes) = &*self.credentials.lock().expect("lock poisoned") {
            // Nobody listening any more (the host is stopping) is no error.
            let _ = changes.send(profile);
        }
    }
}

#[cfg(test)]
mod tests {
    use keel_kernel::engine::VirtualClock;

    use super::*;

    #[test]
    fn a_profile_is_forgotten_only_once_its_loop_has_ended() {
        let control = LoopControl::new(Arc::new(HostSwitches::default()));
        let profile = ProfileId::new_random();
        let clock = Arc::new(VirtualClock::new(0));
        let commands = control.register(profile, None, clock.clone());
        control.forget(profile);
        assert!(
            control.is_running(profile),
            "a running loop stays registered"
        );
        drop(commands);
        assert!(!control.is_running(profile));
        assert!(control.clock(profile).is_some(), "kept until forgotten");
        control.forget(profile);
        assert!(control.clock(profile).is_none());
        // Taken again later, it registers afresh.
        let _commands = control.register(profile, None, clock);
        assert!(control.is_running(profile));
    }
}
