//! procmond's sandbox (PRODUCT.md §14): once the backend is attached, and
//! before the async runtime starts any thread, procmond gives up every
//! capability steady state does not need, sets `no_new_privs` and installs
//! a seccomp filter that refuses network sockets (procmond has no network).
//! The drop is recorded in the ledger as a `privilege_drop` audit record
//! with every capability set before and after, and logged.
//!
//! What is kept and refused is OS-specific (`platform::enter_sandbox`); on
//! an OS without a sandbox this is a no-op with a debug log.
//!
//! `procmond --sandbox-self-test` runs the same routine in a process of its
//! own and then tries to open sockets, so a test can show what the running
//! procmond cannot be asked to do.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use daemoneye_lib::ledger::{AuditRecord, LedgerWriter};

/// Enters the sandbox and records it in the ledger (committed).
pub(crate) fn enter(ledger: &mut LedgerWriter, backend: &str) -> anyhow::Result<()> {
    let entered = crate::platform::enter_sandbox(backend).map_err(anyhow::Error::msg).context(
        "entering procmond's sandbox (capability drop and seccomp filter); procmond does not run without it",
    )?;
    let Some(s) = entered else {
        tracing::debug!("this OS has no capability drop or seccomp filter; procmond keeps its privileges");
        return Ok(());
    };
    let details: Vec<(&str, &str)> = s.details.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    ledger.audit(AuditRecord::PRIVILEGE_DROP, &details)?;
    ledger.commit()?;
    tracing::info!(kept = %s.kept, dropped = %s.dropped, "capabilities dropped; network sockets refused (seccomp)");
    Ok(())
}

/// `--sandbox-self-test`: enters the sandbox as procmond does for `backend`,
/// then prints one line per audit detail (`detail KEY=VALUE`), per socket
/// family tried (`socket AF_INET: refused (...)`, `socket AF_UNIX:
/// allowed`) and per privilege line of the kernel's process status
/// (`status CapEff: ...`). Succeeds when exactly the families the sandbox
/// allows opened.
pub(crate) fn self_test(backend: &str) -> anyhow::Result<ExitCode> {
    let entered =
        crate::platform::enter_sandbox(backend).map_err(anyhow::Error::msg).context("entering the sandbox")?;
    let mut out = std::io::stdout().lock();
    let Some(s) = entered else {
        writeln!(out, "sandbox: none on this OS")?;
        return Ok(ExitCode::SUCCESS);
    };
    for (k, v) in &s.details {
        writeln!(out, "detail {k}={v}")?;
    }
    let mut ok = true;
    for (family, result) in crate::platform::probe_sockets().unwrap_or_default() {
        let allowed = matches!(family, "AF_UNIX" | "AF_NETLINK");
        ok &= result.is_ok() == allowed;
        match result {
            Ok(()) => writeln!(out, "socket {family}: allowed")?,
            Err(e) => writeln!(out, "socket {family}: refused ({e})")?,
        }
    }
    for line in crate::platform::privilege_status() {
        writeln!(out, "status {line}")?;
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
