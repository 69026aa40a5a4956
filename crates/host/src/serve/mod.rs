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

use anyhow::Context;
use keel_kernel::engine::ProfileEngine;
use keel_kernel::exchange::UserEvent;
use keel_kernel::market::Candle;
use keel_kernel::metrics::Metrics;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use keel_api::health::{LOOP_NAMES, LoopConfig, LoopHealth, LoopRun, wall_now_ms};

/// Most user events the monitor loop applies in one iteration before the other loops get a turn.
pub const MONITOR_BATCH_MAX: usize = 64;

/// How often an idle monitor loop reports that it is alive.
pub const MONITOR_IDLE_TICK_MS: u64 = 1_000;

/// One profile's inputs: its engine and the channels that feed it.
pub struct ProfileLoops {
    /// The engine the task owns.
    pub engine: ProfileEngine,
    /// Closed candles for the trading loop.
    pub candles: mpsc::Receiver<Candle>,
    /// The exchange's user events for the monitor loop.
    pub events: mpsc::Receiver<UserEvent>,
    /// Commands from the API ([`control::LoopControl::register`]), applied between steps.
    pub commands: mpsc::Receiver<control::Command>,
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

impl ProfileTask {
    async fn run(mut self, mut inputs: ProfileLoops) -> anyhow::Result<()> {
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
                _ = self.shutdown.changed() => break,
                event = inputs.events.recv(), if !events_closed => match event {
                    Some(event) => self.monitor(&mut inputs, event).await,
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
                    let run = self.health.record(profile, "monitor", None);
                    self.beat("monitor", Duration::ZERO);
                    self.publish(&mut inputs.engine, keel_api::live::StepReport { loop_name: "monitor", run: Some(run), ..Default::default() }).await;
                }
            }
        }
        tracing::info!(profile_id = %profile, "profile loops stopped");
        Ok(())
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
                    tracing::info!(profile_id = %engine.profile(), orders = outcome.orders_sent.len(), "orders sent");
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
                control::apply(change, engine);
                self.health.snapshot(engine);
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
