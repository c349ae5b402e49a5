//! daemoneye-agent: hosts the event bus, supervises procmond, keeps the
//! process table, runs the rules and raises alerts.
//!
//! This file only parses flags, loads configuration and wires the parts.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context as _;
use clap::Parser;
use daemoneye_eventbus::Broker;
use daemoneye_lib::config::{Backend, Config, DaemonFlags};
use daemoneye_lib::detection::Limits;
use daemoneye_lib::proto::{BackpressurePolicy, CollectorStatus, TOPIC_COLLECTOR_STATUS, TOPIC_PROCESS_LIFECYCLE};
use daemoneye_lib::telemetry::init_from_config;
use prost::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use daemoneye_agent::alerts::AlertManager;
use daemoneye_agent::api;
use daemoneye_agent::bus::BusServices;
use daemoneye_agent::health::Health;
use daemoneye_agent::pipeline::{self, Shared};
use daemoneye_agent::privileges::{self, AfterDrop, DropPlan};
use daemoneye_agent::rules_watch::{self, RulesSource};
use daemoneye_agent::sinks::Delivery;
use daemoneye_agent::store::Store;
use daemoneye_agent::store_writer::StoreWriter;
use daemoneye_agent::supervisor::{ProcmondCommand, SpawnGate, supervise};
use daemoneye_agent::table::ProcessTable;
use daemoneye_agent::tasks::TaskClient;

/// DaemonEye detection agent.
///
/// Starts the event bus and procmond, keeps the process table in a redb
/// store, evaluates the SQL rules on every event and on the table, and
/// raises alerts (JSON lines on stdout by default). Stop it with SIGTERM or
/// Ctrl-C.
#[derive(Debug, Parser)]
#[command(name = "daemoneye-agent", version, about, long_about)]
struct Args {
    #[command(flatten)]
    daemon: DaemonFlags,
    /// Directory of YAML rule files.
    #[arg(long, value_name = "DIR")]
    rules_dir: Option<PathBuf>,
    /// The procmond binary (default: next to this one).
    #[arg(long, value_name = "FILE")]
    procmond: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    daemoneye_lib::daemon::limit_allocator_arenas();
    let args = Args::parse();
    let mut opts = args.daemon.load_options();
    if let Some(d) = &args.rules_dir {
        opts.set("rules.dir", d.display().to_string());
    }
    if let Some(p) = &args.procmond {
        opts.set("procmond.binary", p.display().to_string());
    }
    let config = Config::load(&opts)?;
    init_from_config(&config.general).map_err(anyhow::Error::msg)?;
    // Before any thread starts: they all inherit it.
    daemoneye_lib::daemon::request_latency_slice(config.general.latency_slice);
    // agent.user: resolved and prepared while the agent has one thread (see
    // `privileges`); the drop itself comes once procmond runs.
    let drop_plan = DropPlan::resolve(&config.agent).context("checking agent.user")?;
    if let Some(plan) = &drop_plan {
        plan.prepare_process().context("preparing to drop privileges")?;
    }

    // One runtime thread: the bus, the ingest pipeline and its rules, the
    // API and the sinks share it, so an event wakes one thread (see
    // `pipeline`). Disk writes go to the store writer thread, queries and
    // table rules to blocking threads.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(config, args, drop_plan.map(Arc::new)))
}

async fn run(config: Config, args: Args, drop_plan: Option<Arc<DropPlan>>) -> anyhow::Result<()> {
    let data_dir = &config.general.data_dir;
    let run_dir = config.run_dir();
    for dir in [data_dir.as_path(), run_dir.as_path()] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if let Some(plan) = &drop_plan {
        plan.prepare_dirs(&[data_dir.as_path(), run_dir.as_path()], &config.ledger_dir())
            .with_context(|| format!("making the agent's directories readable by {}'s group", plan.user()))?;
    }

    let store = Arc::new(Store::open(&config.store_path())?);
    let health = Arc::new(Health::default());
    let table = ProcessTable::from_states(store.load_processes()?);
    health.last_applied_seq.store(store.last_applied_seq()?, Relaxed);
    tracing::info!(
        store = %store.path().display(),
        processes = table.counts().1,
        last_applied_seq = health.last_applied_seq.load(Relaxed),
        "store opened"
    );

    let mut rules = rules_watch::load_and_report(&config.rules.dir);
    daemoneye_agent::api_rules::apply_overrides(&mut rules, &store);
    tracing::info!(dir = %config.rules.dir.display(), loaded = rules.rules.len(), failed = rules.errors.len(), "rules loaded");
    health.rules_loaded.store(u32::try_from(rules.rules.len()).unwrap_or(u32::MAX), Relaxed);
    health.rules_failed.store(u32::try_from(rules.errors.len()).unwrap_or(u32::MAX), Relaxed);

    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    // The alert sinks; each worker first re-queues its outbox (alerts stored
    // but not delivered before a crash).
    let delivery = Delivery::start(&config.alerts, Arc::clone(&store), &cancel, &tasks)
        .map_err(anyhow::Error::msg)
        .context("starting the alert sinks (check [alerts] in the configuration)")?;
    let alerts = AlertManager::new(Arc::clone(&store), config.alerts.dedupe_window, Arc::new(delivery))?;
    let limits = Limits { timeout: config.rules.query_timeout, max_rows: config.rules.max_rows, ..Limits::default() };
    let rules = Arc::new(rules);
    let windows = daemoneye_agent::event_window::EventWindows::at_start(&rules, &store);
    let shared = Arc::new(Shared {
        store,
        table: RwLock::new(table),
        rules: RwLock::new((Arc::clone(&rules), Arc::new(rules.streaming_index()))),
        windows: Mutex::new(windows),
        rules_source: RulesSource::new(config.rules.dir.clone()),
        alerts: Mutex::new(alerts),
        health: Arc::clone(&health),
        limits,
        ledger_dir: config.ledger_dir(),
        process_retention: config.agent.process_retention,
        event_retention: config.agent.event_retention,
        max_exited_processes: config.agent.max_exited_processes,
        max_events: config.agent.max_events,
        batch_size: config.agent.batch_size.max(1),
    });

    // The bus, and the agent's own subscriptions on it.
    let bus_config = daemoneye_agent::bus::broker_config(&config.bus).context("configuring the event bus")?;
    let broker = Broker::bind(&config.bus_socket(), bus_config, cancel.clone())
        .await
        .with_context(|| format!("starting the event bus on {}", config.bus_socket().display()))?;
    let local = broker.local_client("daemoneye-agent");
    let capacity = u32::try_from(config.bus.queue_capacity).unwrap_or(u32::MAX);
    // Drop, not block: a slow agent must never stall procmond; whatever is
    // dropped here is read back from the ledger by the gap check.
    let lifecycle = local
        .subscribe(TOPIC_PROCESS_LIFECYCLE, BackpressurePolicy::Drop, capacity)
        .await
        .context("subscribing to process events")?;
    let mut status = local
        .subscribe(TOPIC_COLLECTOR_STATUS, BackpressurePolicy::Drop, 16)
        .await
        .context("subscribing to collector status")?;

    let task_client = TaskClient::start(
        broker.local_client("daemoneye-agent-tasks"),
        std::time::Duration::from_secs(10),
        cancel.clone(),
        &tasks,
    )
    .await
    .context("subscribing to detection results")?;
    tasks.spawn(daemoneye_agent::bus::publish_health(
        broker.clone(),
        local.clone(),
        config.bus.health_interval,
        cancel.clone(),
    ));
    let bus_services = BusServices { broker: broker.clone(), tasks: task_client };

    {
        let health = Arc::clone(&health);
        let cancel = cancel.clone();
        tasks.spawn(async move {
            loop {
                let d = tokio::select! {
                    d = status.recv() => d,
                    () = cancel.cancelled() => None,
                };
                let Some(d) = d else { break };
                if let Ok(s) = CollectorStatus::decode(d.payload.as_ref()) {
                    health.set_collector(s);
                }
            }
        });
    }

    let (writer, writer_threads) =
        StoreWriter::start(Arc::clone(&shared)).context("starting the store writer threads")?;
    let ingest = tokio::spawn(pipeline::run_ingest(Arc::clone(&shared), lifecycle, writer, cancel.clone()));

    // Table rules on an interval.
    {
        let shared = Arc::clone(&shared);
        let cancel = cancel.clone();
        let every = config.rules.table_interval;
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(every.max(std::time::Duration::from_millis(100)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = cancel.cancelled() => break,
                }
                let shared = Arc::clone(&shared);
                if let Err(e) = tokio::task::spawn_blocking(move || pipeline::evaluate_table_rules(&shared)).await {
                    tracing::error!(error = %e, "table rule task failed");
                }
            }
        });
    }

    // Rule hot reload.
    tasks.spawn(rules_watch::watch(Arc::clone(&shared), cancel.clone()));

    // Freed memory back to the OS (after the store load and the first
    // snapshot, then now and then).
    {
        let cancel = cancel.clone();
        tasks.spawn(async move {
            let (first, every) = (std::time::Duration::from_secs(10), std::time::Duration::from_secs(10));
            tokio::select! {
                () = daemoneye_lib::daemon::release_freed_memory(first, every) => {}
                () = cancel.cancelled() => {}
            }
        });
    }

    // procmond.
    let mut cmd = procmond_command(&config, &args)?;
    cmd.gid = drop_plan.as_ref().map(|p| p.gid());
    let gate = Arc::new(SpawnGate::default());
    let supervisor = tasks.spawn(supervise(cmd, Arc::clone(&health), cancel.clone(), Arc::clone(&gate)));

    // The API.
    let api_task = {
        let shared = Arc::clone(&shared);
        let socket = config.agent_socket();
        let cancel = cancel.clone();
        tasks.spawn(async move { api::serve(shared, Some(bus_services), &socket, cancel).await })
    };
    // Prometheus metrics on localhost, when configured (a port in use is
    // logged; detection keeps running).
    if let Some(addr) = config.agent.metrics_listen {
        let source = daemoneye_agent::health::HealthSource::new(Arc::clone(&shared), Some(broker.clone()));
        match daemoneye_agent::metrics::bind(addr).await {
            Ok(listener) => {
                tasks.spawn(daemoneye_agent::metrics::serve(listener, source, cancel.clone()));
            }
            Err(e) => tracing::error!(error = %e, "no metrics listener"),
        }
    }
    // agent.user: the drop, once procmond runs and the API listens.
    let after = AfterDrop {
        ledger_dir: config.ledger_dir(),
        rules_dir: config.rules.dir.clone(),
        sink_dirs: config.alerts.sinks.iter().filter_map(|s| s.path.as_deref()?.parent().map(Path::to_owned)).collect(),
        sockets: std::iter::once(config.agent_socket())
            .chain(config.bus.socket_group.is_empty().then(|| config.bus_socket()))
            .collect(),
    };
    let dropper =
        tasks.spawn(privileges::drop_when_ready(drop_plan, gate, config.agent_socket(), after, cancel.clone()));
    // systemd: READY=1 once the API answers, then the watchdog.
    tasks.spawn(daemoneye_agent::sdnotify::run(config.agent_socket(), cancel.clone()));
    tasks.close();

    tracing::info!(data_dir = %data_dir.display(), "daemoneye-agent running");
    // Besides a signal, the agent stops when its API fails, when procmond
    // exits after the privilege drop, or when the drop fails.
    let api_failed = tokio::select! {
        () = daemoneye_lib::daemon::shutdown_signal() => None,
        r = api_task => Some(r),
        Err(e) = joined(supervisor) => Some(Ok(Err(e))),
        Err(e) = joined(dropper) => Some(Ok(Err(e.context("dropping privileges to agent.user")))),
    };
    tracing::info!("shutting down");
    cancel.cancel();
    tasks.wait().await;
    broker.join().await;
    // The ingest task hands its last staged state to the store writer and
    // drops its handle; the writer then commits durably and ends.
    if let Err(e) = ingest.await {
        tracing::error!(error = %e, "the ingest task failed");
    }
    if !tokio::task::spawn_blocking(move || writer_threads.join()).await.unwrap_or(false) {
        tracing::error!("a store writer thread panicked");
    }
    match api_failed {
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) => Err(anyhow::anyhow!("API task failed: {e}")),
        _ => Ok(()),
    }
}

/// A task's result, its panic as an error.
async fn joined<E>(task: tokio::task::JoinHandle<Result<(), E>>) -> anyhow::Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match task.await {
        Ok(r) => r.map_err(anyhow::Error::new),
        Err(e) => Err(anyhow::anyhow!("task failed: {e}")),
    }
}

fn procmond_command(config: &Config, args: &Args) -> anyhow::Result<ProcmondCommand> {
    let binary = if config.procmond.binary.as_os_str().is_empty() {
        let me = std::env::current_exe().context("locating daemoneye-agent's own binary")?;
        me.parent().unwrap_or(Path::new(".")).join("procmond")
    } else {
        config.procmond.binary.clone()
    };
    let mut argv = vec![
        "--data-dir".to_owned(),
        config.general.data_dir.display().to_string(),
        "--run-dir".to_owned(),
        config.run_dir().display().to_string(),
        "--backend".to_owned(),
        config.procmond.backend.as_str().to_owned(),
    ];
    // procmond reads the same layers (and inherits DAEMONEYE_* variables).
    argv.extend(args.daemon.to_args());
    if config.procmond.backend == Backend::Auto {
        tracing::debug!("procmond will choose the best available backend");
    }
    Ok(ProcmondCommand {
        binary,
        args: argv,
        backoff_min: config.agent.restart_backoff_min,
        backoff_max: config.agent.restart_backoff_max,
        reset_after: config.agent.restart_reset_after,
        gid: None,
    })
}
