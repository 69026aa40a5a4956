//! [`ProfileControl`] for the loops of this process: each registered profile has a bounded
//! command channel its task reads between steps, and (for a Wasm strategy) the [`SwapHandle`]
//! its strategy takes a new instance from at its next call boundary.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

use keel_kernel::engine::{Clock, HostSwitches, ProfileEngine};
use keel_kernel::ids::ProfileId;
use tokio::sync::{mpsc, oneshot};

use keel_api::{ControlChange, ProfileControl, ReconcileOutcome};
use keel_runtime::{PluginDigest, PreparedInstance, RunningVersion, SwapHandle};

/// Commands queued per profile before a sender waits for the loop.
pub const COMMAND_QUEUE_MAX: usize = 16;

/// What a profile's loop is asked to do between two of its steps.
#[derive(Debug)]
pub enum Command {
    /// Apply a change of switches or risk rules.
    Change(ControlChange),
    /// Run a reconciliation pass now and report its result label (or its error).
    Reconcile(oneshot::Sender<Result<&'static str, String>>),
}

/// Applies a change to the engine (reconciliation is the loop's own: it records its health).
pub(super) fn apply(change: ControlChange, engine: &mut ProfileEngine) {
    match change {
        ControlChange::Paused(paused) => engine.set_paused(paused),
        ControlChange::ClearQuarantine => engine.request_quarantine_clear(),
        ControlChange::Killed(killed) => engine.set_killed(killed),
        ControlChange::Limits(limits) => engine.set_limits(limits),
    }
}

struct Registered {
    commands: mpsc::Sender<Command>,
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
    /// Where [`ProfileControl::credentials_stored`] tells of a change, once someone listens.
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

    /// The profiles whose credentials are stored, replaced or removed through this process
    /// from now on (a later call takes them over).
    pub fn credentials_changes(&self) -> mpsc::UnboundedReceiver<ProfileId> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.credentials.lock().expect("lock poisoned") = Some(tx);
        rx
    }

    /// Registers a profile before its loop starts; the receiver goes into its
    /// [`super::ProfileLoops`]. `swap` is the strategy's hot-swap handle, when it has one.
    pub fn register(
        &self,
        profile: ProfileId,
        swap: Option<SwapHandle>,
        clock: Arc<dyn Clock>,
    ) -> mpsc::Receiver<Command> {
        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE_MAX);
        let registered = Registered {
            commands,
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

    async fn apply(&self, profile: ProfileId, change: ControlChange) -> bool {
        match self.sender(profile) {
            Some(sender) => sender.send(Command::Change(change)).await.is_ok(),
            None => false,
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

    fn credentials_stored(&self, profile: ProfileId) {
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
