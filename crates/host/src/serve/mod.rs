//! The host's per-profile loops and the health they report.
//!
//! One tokio task per profile owns its [`ProfileEngine`] and `select!`s, in this order, over a
//! shutdown signal, the exchange's user events (the monitor loop), the candle channel (the
//! trading loop) and a reconciliation interval. A step, once picked, runs to its end: shutdown
//! is only seen between steps, so nothing is left half-written. Restart recovery
//! ([`ProfileEngine::recover`]) runs before the first decision, and `keel_ready` turns 1 only
//! after every profile has recovered.

pub mod cluster;
pub mod command;
pub mod control;
pub mod http;
pub mod metered;
pub mod stored;

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::panic::AssertUnwindSafe;

use anyhow::Context;
use futures::FutureExt as _;
use keel_kernel::engine::ProfileEngine;
use keel_kernel::exchange::UserEvent;
use keel_kernel::ids::escape_unprintable;
use keel_kernel::market::Candle;
use keel_kernel::metrics::Metrics;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use keel_api::ControlChange;
use keel_api::health::{
    LOOP_NAMES, LoopConfig, LoopHealth, LoopRun, PROFILE_FAULT_WINDOW_MS, PROFILE_RESTARTS_MAX,
    ProfileFault, wall_now_ms,
};

/// Most user events the monitor loop applies in one iteration before the other loops get a turn.
pub const MONITOR_BATCH_MAX: usize = 64;

/// How often an idle monitor loop reports that it is alive.
pub const MONITOR_IDLE_TICK_MS: u64 = 1_000;

/// The first wait before a faulted profile's loops restart; each further fault in the window
/// doubles it.
pub const PROFILE_RESTART_BACKOFF_MS: u64 = 1_000;

/// One profile's inputs: its engine and the channels that feed it.
pub struct ProfileLoops {
    /// The engine the task owns.
    pub engine: ProfileEngine,
    /// Closed candles for the trading loop.
    pub candles: mpsc::Receiver<Candle>,
    /// The exchange's user events for the monitor loop.
    pub events: mpsc::Receiver<UserEvent>,
    /// Commands from the API ([`control::LoopControl::register`]), applied between steps.
    pub commands: control::Commands,
    /// The strategy's swap handle, when it is a plugin: the live feed reports what it runs.
    pub plugin: Option<keel_runtime::SwapHandle>,
}

/// The running loops of every profile.
pub struct Loops {
    tasks: JoinSet<anyhow::Result<()>>,
    shutdown: watch::Sender<bool>,
    config: LoopConfig,
    metrics: Arc<Metrics>,
    health: Arc<LoopHealth>,
}

impl Loops {
    /// Starts one task per profile. Each recovers before its first decision.
    pub fn start(
        profiles: Vec<ProfileLoops>,
        config: LoopConfig,
        metrics: Arc<Metrics>,
        health: Arc<LoopHealth>,
    ) -> Loops {
        metrics.ready.set(0);
        let (shutdown, _) = watch::channel(false);
        let mut loops = Loops {
            tasks: JoinSet::new(),
            shutdown,
            config,
            metrics,
            health,
        };
        for profile in profiles {
            loops.add(profile);
        }
        loops
    }

    /// Starts one more profile's task beside the running ones; it recovers before its first
    /// decision. Readiness counts it once [`LoopHealth::expect_profiles`] is told.
    pub fn add(&mut self, profile: ProfileLoops) {
        let engine = &profile.engine;
        let task = ProfileTask {
            config: self.config,
            metrics: self.metrics.clone(),
            health: self.health.clone(),
            shutdown: self.shutdown.subscribe(),
            feed: self
                .health
                .feed(engine.profile(), engine.user())
                .map(|feed| match &profile.plugin {
                    Some(swap) => feed.watch_plugin(swap.clone()),
                    None => feed,
                }),
        };
        self.tasks.spawn(task.run(profile));
    }

    /// Asks every task to stop after its current step and waits for them.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.send_replace(true);
        let mut first_error = None;
        while let Some(joined) = self.tasks.join_next().await {
            let result = joined.context("a profile task panicked").and_then(|r| r);
            if let Err(error) = result {
                tracing::error!(error = %format!("{error:#}"), "profile task failed");
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Waits until a task ends on its own (an error: tasks only end when told to).
    pub async fn failed(&mut self) -> anyhow::Error {
        match self.tasks.join_next().await {
            Some(Ok(Err(error))) => error,
            Some(Ok(Ok(()))) => anyhow::anyhow!("a profile task ended without being told to"),
            Some(Err(error)) => anyhow::anyhow!("a profile task panicked: {error}"),
            None => std::future::pending().await,
        }
    }
}

struct ProfileTask {
    config: LoopConfig,
    metrics: Arc<Metrics>,
    health: Arc<LoopHealth>,
    shutdown: watch::Receiver<bool>,
    feed: Option<keel_api::live::ProfileFeed>,
}

/// What ends a wait of a profile whose loops faulted.
enum Wake {
    /// The host is stopping.
    Shutdown,
    /// The backoff is over: restart the loops.
    Restart,
    /// The owner resumed the profile: restart the loops with a clean slate.
    Resumed,
}

impl ProfileTask {
    /// Runs the profile's loops until shutdown. A panic anywhere on the profile's path, or a
    /// restart recovery that fails, faults the profile, not the process: its entries stop (it
    /// is paused in memory; exits keep running once its loops do), the fault is counted and
    /// shown, and its loops start again with a fresh recovery after a backoff — at most
    /// [`PROFILE_RESTARTS_MAX`] times within [`PROFILE_FAULT_WINDOW_MS`], after which they stay
    /// stopped until the profile is resumed.
    async fn run(mut self, mut inputs: ProfileLoops) -> anyhow::Result<()> {
        let profile = inputs.engine.profile();
        self.health.snapshot(&inputs.engine);
        let mut fault_times_ms: Vec<i64> = Vec::new();
        loop {
            let ended = AssertUnwindSafe(self.run_loops(&mut inputs))
                .catch_unwind()
                .await;
            let (kind, message) = match ended {
                Ok(Ok(())) => break,
                Ok(Err(error)) => ("error", format!("{error:#}")),
                Err(payload) => ("panic", keel_runtime::panic_message(payload.as_ref())),
            };
            let now_ms = wall_now_ms();
            fault_times_ms.retain(|at| now_ms - at < PROFILE_FAULT_WINDOW_MS);
            fault_times_ms.push(now_ms);
            let faults = u32::try_from(fault_times_ms.len()).unwrap_or(u32::MAX);
            let stopped = faults > PROFILE_RESTARTS_MAX;
            self.metrics
                .profile_faults_total
                .with_label_values(&[kind])
                .inc();
            tracing::error!(profile_id = %profile, kind, %message, faults, stopped, "the profile's loops faulted: entries paused");
            inputs.engine.set_paused(true);
            self.health.snapshot(&inputs.engine);
            self.health.fault(
                profile,
                ProfileFault {
                    kind: kind.to_owned(),
                    message: escape_unprintable(&message).into_owned(),
                    at_ms: now_ms,
                    faults_in_window: faults,
                    state: if stopped { "stopped" } else { "restarting" }.to_owned(),
                },
            );
            let until = if stopped {
                // Its loops no longer run: readiness does not wait for it, the loop states
                // speak of the others, and its fault says why.
                self.health.forget_loops(profile);
                self.health.mark_recovered(profile, &self.metrics);
                None
            } else {
                let backoff_ms = PROFILE_RESTART_BACKOFF_MS << (faults - 1).min(6);
                Some(tokio::time::Instant::now() + Duration::from_millis(backoff_ms))
            };
            match self.wait_faulted(&mut inputs, until).await {
                Wake::Shutdown => break,
                Wake::Restart => {}
                Wake::Resumed => {
                    fault_times_ms.clear();
                    self.health.clear_fault(profile);
                }
            }
        }
        tracing::info!(profile_id = %profile, "profile loops stopped");
        Ok(())
    }

    /// While the profile's loops do not run: drops its candles (it decides nothing) and its
    /// exchange events (recovery asks the exchange again), answers its commands, until `until`
    /// (never, when `None`), a resume or shutdown.
    async fn wait_faulted(
        &mut self,
        inputs: &mut ProfileLoops,
        until: Option<tokio::time::Instant>,
    ) -> Wake {
        let backoff = async {
            match until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(backoff);
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => return Wake::Shutdown,
                Some(command) = inputs.commands.recv() => match command {
                    control::Command::Change(change) => {
                        if self.apply_change(change, &mut inputs.engine) {
                            return Wake::Resumed;
                        }
                    }
                    control::Command::Reconcile(reply) => {
                        let _ = reply.send(Err(
                            "the profile's loops are stopped after a fault; resume it to restart them".to_owned(),
                        ));
                    }
                },
                Some(_) = inputs.candles.recv() => {}
                Some(_) = inputs.events.recv() => {}
                _ = &mut backoff => return Wake::Restart,
            }
        }
    }

    /// Recovery, then the loops until shutdown (`Ok`) or a failed recovery (`Err`).
    async fn run_loops(&mut self, inputs: &mut ProfileLoops) -> anyhow::Result<()> {
        let profile = inputs.engine.profile();
        let report = inputs
            .engine
            .recover()
            .await
            .with_context(|| format!("restart recovery of profile {profile}"))?;
        tracing::info!(profile_id = %profile, quarantined = report.reconciliation.quarantined, "profile recovered");
        self.health.snapshot(&inputs.engine);
        for name in LOOP_NAMES {
            let run = self.health.record(profile, name, None);
            self.beat(name, Duration::ZERO);
            self.publish(
                &mut inputs.engine,
                keel_api::live::StepReport {
                    loop_name: name,
                    run: Some(run),
                    reconciliation: (name == "reconciliation").then_some(&report.reconciliation),
                    ..Default::default()
                },
            )
            .await;
        }
        self.health.mark_recovered(profile, &self.metrics);
        self.stream_connected(true);
        let mut reconcile =
            tokio::time::interval(Duration::from_millis(self.config.reconcile_interval_ms));
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        reconcile.tick().await; // the first tick is immediate; recovery just reconciled
        let mut idle = tokio::time::interval(Duration::from_millis(MONITOR_IDLE_TICK_MS));
        let mut events_closed = false;
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => return Ok(()),
                event = inputs.events.recv(), if !events_closed => match event {
                    Some(event) => self.monitor(inputs, event).await,
                    None => {
                        // The exchange dropped the stream: reconciliation still finds what
                        // happened, and the health endpoint says so.
                        events_closed = true;
                        self.stream_connected(false);
                        self.health.record(profile, "monitor", Some("the user event stream closed".into()));
                    }
                },
                Some(candle) = inputs.candles.recv() => {
                    self.trade(&mut inputs.engine, &candle).await;
                }
                Some(command) = inputs.commands.recv() => {
                    self.command(&mut inputs.engine, command).await;
                }
                _ = reconcile.tick() => {
                    // The pass records its own health and metrics; nobody waits for it here.
                    let _ = self.reconcile(&mut inputs.engine).await;
                }
                _ = idle.tick(), if !events_closed => {
                    // Orders the exchange would not take yet go again once their wait is over.
                    if let Err(e) = inputs.engine.retry_unplaced().await {
                        tracing::error!(profile_id = %profile, error = %e, "sending waiting orders again failed; reconciliation will repair");
                    }
                    let run = self.health.record(profile, "monitor", None);
                    self.beat("monitor", Duration::ZERO);
                    self.publish(&mut inputs.engine, keel_api::live::StepReport { loop_name: "monitor", run: Some(run), ..Default::default() }).await;
                }
            }
        }
    }

    async fn monitor(&mut self, inputs: &mut ProfileLoops, first: UserEvent) {
        let started = Instant::now();
        let mut error = None;
        let mut next = Some(first);
        let mut applied = Vec::new();
        let mut fault = None;
        while let Some(event) = next.take() {
            match inputs.engine.on_user_event(&event).await {
                Ok(outcome) => fault = outcome.fault.or(fault),
                Err(e) => {
                    error = Some(e.to_string());
                    tracing::error!(profile_id = %inputs.engine.profile(), error = %e, "monitor step failed; reconciliation will repair");
                }
            }
            applied.push(event);
            if applied.len() < MONITOR_BATCH_MAX {
                next = inputs.events.try_recv().ok();
            }
        }
        let run = self.finish(&inputs.engine, "monitor", started, error);
        let step = keel_api::live::StepReport {
            loop_name: "monitor",
            run: Some(run),
            user_events: &applied,
            fault: fault.as_ref(),
            ..Default::default()
        };
        self.publish(&mut inputs.engine, step).await;
    }

    async fn trade(&mut self, engine: &mut ProfileEngine, candle: &Candle) {
        let started = Instant::now();
        let (error, outcome) = match engine.on_candle(candle).await {
            Ok(outcome) => {
                if !outcome.orders_sent.is_empty() {
                    tracing::debug!(profile_id = %engine.profile(), orders = outcome.orders_sent.len(), "orders sent");
                }
                (None, outcome)
            }
            Err(e) => {
                tracing::error!(profile_id = %engine.profile(), error = %e, "trading step failed");
                (Some(e.to_string()), Default::default())
            }
        };
        let run = self.finish(engine, "trading", started, error);
        let step = keel_api::live::StepReport {
            loop_name: "trading",
            run: Some(run),
            candle: Some(candle),
            orders_sent: &outcome.orders_sent,
            fault: outcome.fault.as_ref(),
            refused: outcome.refused,
            ..Default::default()
        };
        self.publish(engine, step).await;
    }

    /// Tells the live feed, if there is one, what the step changed.
    async fn publish(&mut self, engine: &mut ProfileEngine, step: keel_api::live::StepReport<'_>) {
        if let Some(feed) = &mut self.feed {
            feed.after_step(engine, step).await;
        }
    }

    /// One reconciliation pass; its result label, or its error.
    async fn reconcile(&mut self, engine: &mut ProfileEngine) -> Result<&'static str, String> {
        let started = Instant::now();
        let pass = engine.reconcile().await;
        let result = match &pass {
            Ok(report) => {
                if report.is_clean() {
                    self.metrics
                        .reconciliation_last_clean_pass_timestamp_seconds
                        .set(wall_now_ms() as f64 / 1e3);
                }
                Ok(report.result_label())
            }
            Err(e) => Err(e.to_string()),
        };
        let run = self.finish(engine, "reconciliation", started, result.clone().err());
        let step = keel_api::live::StepReport {
            loop_name: "reconciliation",
            run: Some(run),
            reconciliation: pass.as_ref().ok(),
            ..Default::default()
        };
        self.publish(engine, step).await;
        result
    }

    async fn command(&mut self, engine: &mut ProfileEngine, command: control::Command) {
        match command {
            control::Command::Change(change) => {
                let clear = matches!(
                    change,
                    ControlChange::ClearQuarantine | ControlChange::QuarantineClearRequested
                );
                self.apply_change(change, engine);
                if clear && engine.controls().quarantined {
                    // The request is stored: a pass now reads it and, when clean, ends the
                    // quarantine, instead of waiting for the next tick.
                    let _ = self.reconcile(engine).await;
                }
                // The feed sees the new status at once, not at the next candle.
                let step = keel_api::live::StepReport {
                    loop_name: "trading",
                    ..Default::default()
                };
                self.publish(engine, step).await;
            }
            control::Command::Reconcile(reply) => {
                let result = self.reconcile(engine).await;
                // The caller may have gone; the pass counts anyway.
                let _ = reply.send(result);
            }
        }
    }

    /// Applies an owner's or operator's change. While a fault of the profile's loops stands,
    /// its entries stay paused whatever a re-read of its stored settings says; a resume (the
    /// only change that also asks to end a quarantine) acknowledges the fault and lifts the
    /// pause. True when it did.
    fn apply_change(&self, change: ControlChange, engine: &mut ProfileEngine) -> bool {
        let profile = engine.profile();
        let faulted = self.health.profile_fault(profile).is_some();
        let resumed = faulted && change == ControlChange::ClearQuarantine;
        match change {
            ControlChange::Paused(false) if faulted => {}
            change => control::apply(change, engine),
        }
        if resumed {
            self.health.clear_fault(profile);
            engine.set_paused(false);
            tracing::info!(profile_id = %profile, "the profile was resumed after its loops' fault");
        }
        self.health.snapshot(engine);
        resumed
    }

    fn finish(
        &self,
        engine: &ProfileEngine,
        name: &'static str,
        started: Instant,
        error: Option<String>,
    ) -> LoopRun {
        let run = self.health.record(engine.profile(), name, error);
        self.health.snapshot(engine);
        self.beat(name, started.elapsed());
        run
    }

    fn stream_connected(&self, connected: bool) {
        self.metrics
            .exchange_stream_connected
            .with_label_values(&["user"])
            .set(i64::from(connected));
        self.metrics
            .exchange_stream_reconnects_total
            .with_label_values(&["user"])
            .inc_by(0);
    }

    fn beat(&self, name: &str, took: Duration) {
        self.metrics
            .loop_heartbeat_timestamp_seconds
            .with_label_values(&[name])
            .set(wall_now_ms() as f64 / 1e3);
        self.metrics
            .loop_iteration_duration_seconds
            .with_label_values(&[name])
            .observe(took.as_secs_f64());
    }
}
