//! procmond: the privileged process collector.
//!
//! Takes process events from the kernel (or the best fallback), writes each
//! to the audit ledger, then publishes it on the event bus. It has no SQL
//! and no network: it links `daemoneye-lib` without the `detection` and
//! `grpc` features and talks only to the local bus socket.
//!
//! This file parses flags, loads configuration and wires the parts.

mod backend;
mod platform;
mod sandbox;
mod tasks;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use collector_core::hash::Hasher;
use collector_core::runtime::{self, RuntimeConfig, RuntimeStats};
use daemoneye_lib::config::{Config, DaemonFlags};
use daemoneye_lib::ledger::LedgerWriter;
use daemoneye_lib::telemetry::init_from_config;
use tokio_util::sync::CancellationToken;

/// DaemonEye process collector (started by daemoneye-agent).
///
/// Watches process exec/fork/exit, records every event in the hash-chained
/// ledger under <data-dir>/ledger, and publishes it on the agent's event bus.
#[derive(Debug, Parser)]
#[command(name = "procmond", version, about, long_about)]
struct Args {
    #[command(flatten)]
    daemon: DaemonFlags,
    /// Socket directory (the bus is RUN_DIR/bus.sock).
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Stop when a line `stop` arrives on stdin (how the agent stops
    /// procmond once it runs without the privilege to signal it).
    #[arg(long, hide = true)]
    stdin_control: bool,
    /// Enter the sandbox as procmond does after attaching, try to open
    /// sockets of each family, print what happened and exit (for tests).
    #[arg(long, hide = true)]
    sandbox_self_test: bool,
}

/// When freed memory first goes back to the OS (the start-up snapshot and
/// the eBPF load are done by then), and how often after that.
const RELEASE_FIRST_AFTER: std::time::Duration = std::time::Duration::from_secs(5);
const RELEASE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

fn main() -> anyhow::Result<ExitCode> {
    daemoneye_lib::daemon::limit_allocator_arenas();
    let args = Args::parse();
    let mut opts = args.daemon.load_options();
    if let Some(d) = &args.run_dir {
        opts.set("general.run_dir", d.display().to_string());
    }
    let config = Config::load(&opts)?;
    init_from_config(&config.general).map_err(anyhow::Error::msg)?;
    // Before any thread starts: they all inherit it.
    daemoneye_lib::daemon::request_latency_slice(config.general.latency_slice);
    if args.sandbox_self_test {
        return sandbox::self_test(config.procmond.backend.as_str());
    }

    // Everything that needs privileges happens here, on procmond's only
    // thread: capabilities belong to threads, so the drop must come before
    // the runtime starts its own (which then inherit the reduced sets).
    let (mut ledger, chosen) = start(&config)?;
    sandbox::enter(&mut ledger, chosen.name)?;

    // One thread runs every task (source, ledger writer, publisher): each
    // event passes through all three, and on one thread a hand-off is a
    // queue push, not a futex wake-up. Hashing has its own threads; syncing
    // ledger commits go to the blocking pool.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(config, ledger, chosen, args.stdin_control))?;
    Ok(ExitCode::SUCCESS)
}

/// Opens the ledger and attaches the backend (the privileged part).
fn start(config: &Config) -> anyhow::Result<(LedgerWriter, backend::Chosen)> {
    let ledger_dir = config.ledger_dir();
    let key_dir = config.general.data_dir.join("keys");
    let (mut ledger, recovery) = LedgerWriter::open(&ledger_dir, &key_dir, &config.ledger)
        .with_context(|| format!("opening the ledger in {}", ledger_dir.display()))?;
    tracing::info!(dir = %ledger_dir.display(), head = ledger.head().0, recovery = ?recovery, "ledger opened");
    let pid = std::process::id().to_string();
    let version = env!("CARGO_PKG_VERSION");
    ledger.audit("start", &[("pid", pid.as_str()), ("version", version)])?;

    let chosen = backend::choose(config)?;
    let notes = chosen.notes.join("; ");
    tracing::info!(backend = chosen.name, not_taken = %notes, "telemetry backend chosen");
    ledger.audit("backend", &[("backend", chosen.name), ("not_taken", notes.as_str())])?;
    ledger.commit()?;
    Ok((ledger, chosen))
}

async fn run(config: Config, ledger: LedgerWriter, chosen: backend::Chosen, stdin_control: bool) -> anyhow::Result<()> {
    let pid = std::process::id().to_string();
    let notes = chosen.notes.join("; ");
    let hasher = Arc::new(Hasher::new(config.procmond.hash_max_size.as_u64(), config.procmond.hash_cache_entries));
    let rt_config = RuntimeConfig {
        bus_socket: config.bus_socket(),
        client_name: "procmond".into(),
        backend: chosen.name.into(),
        backend_notes: notes,
        commit_batch: config.ledger.commit_batch,
        channel_capacity: 65_536,
        hash_workers: config.procmond.hash_workers,
        monitor: Arc::new(collector_core::TreeMonitor::default()),
    };
    let cancel = CancellationToken::new();
    let stats = Arc::new(RuntimeStats::default());
    let mut sources = vec![chosen.source];
    sources.extend(platform::sampler(&config));
    // Detection tasks (agent -> procmond over the bus), on their own connection.
    let task_server = match platform::inspector() {
        Ok(inspector) => {
            let ctx =
                tasks::TaskContext { inspector, hasher: Arc::clone(&hasher), monitor: Arc::clone(&rt_config.monitor) };
            Some(tokio::spawn(tasks::serve(config.bus_socket(), Arc::new(ctx), cancel.clone())))
        }
        Err(e) => {
            tracing::warn!(error = %e, "detection tasks are not served");
            None
        }
    };
    let rt = tokio::spawn(runtime::run(sources, ledger, hasher, rt_config, Arc::clone(&stats), cancel.clone()));
    let sig_cancel = cancel.clone();
    tokio::spawn(async move {
        daemoneye_lib::daemon::shutdown_signal().await;
        sig_cancel.cancel();
    });
    let trim_cancel = cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = daemoneye_lib::daemon::release_freed_memory(RELEASE_FIRST_AFTER, RELEASE_EVERY) => {}
            () = trim_cancel.cancelled() => {}
        }
    });
    if stdin_control {
        watch_stdin(cancel.clone());
    }
    let mut ledger = rt.await.context("collector task panicked")??;
    cancel.cancel();
    if let Some(t) = task_server {
        let _ = t.await;
    }
    ledger.audit("stop", &[("pid", pid.as_str())])?;
    ledger.commit()?;
    tracing::info!("procmond stopped");
    Ok(())
}

/// Cancels on a line `stop` on stdin. End of input (the agent is gone)
/// does not stop procmond: the ledger keeps recording while no agent runs.
fn watch_stdin(cancel: CancellationToken) {
    use std::io::BufRead as _;
    // A blocking read cannot be cancelled, so this thread has no owner to
    // join it: it ends with the process, or at end of input.
    let spawned = std::thread::Builder::new().name("stdin-control".into()).spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) if l.trim() == "stop" => {
                    tracing::info!("stop requested on stdin");
                    cancel.cancel();
                    return;
                }
                Ok(l) => tracing::warn!(line = %l.trim(), "unknown control line on stdin; ignored"),
                Err(e) => {
                    tracing::debug!(error = %e, "stdin unreadable; control lines ignored");
                    return;
                }
            }
        }
        tracing::info!("stdin closed (the agent is gone); procmond keeps recording until signalled");
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot watch stdin for a stop request; only signals stop procmond");
    }
}
