//! The platform sources procmond can run. Everything OS-specific that
//! procmond composes is reached through this module.

use collector_core::source::EventSource;
use daemoneye_lib::config::Config;

/// The polling source: diffs the process list every `poll_interval`.
/// On Linux the list comes from /proc (exact start times, full enrichment);
/// elsewhere from sysinfo.
pub(crate) fn poll_source(config: &Config) -> Result<Box<dyn EventSource>, String> {
    #[cfg(target_os = "linux")]
    {
        let reader =
            daemoneye_platform_linux::procfs::ProcfsReader::new().map_err(|e| format!("cannot read /proc: {e}"))?;
        Ok(Box::new(
            collector_core::PollSource::new(ProcfsEnumerator(reader)).with_interval(config.procmond.poll_interval),
        ))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let enumerator = collector_core::SysinfoEnumerator::new().map_err(|e| e.to_string())?;
        Ok(Box::new(collector_core::PollSource::new(enumerator).with_interval(config.procmond.poll_interval)))
    }
}

/// The order `auto` tries backends in on this OS: the kernel source first,
/// polling last.
pub(crate) fn auto_order() -> &'static [daemoneye_lib::config::Backend] {
    use daemoneye_lib::config::Backend;
    #[cfg(target_os = "linux")]
    {
        &[Backend::Ebpf, Backend::ProcConnector, Backend::Poll]
    }
    #[cfg(windows)]
    {
        &[Backend::Etw, Backend::Poll]
    }
    #[cfg(target_os = "macos")]
    {
        &[Backend::EndpointSecurity, Backend::Poll]
    }
    #[cfg(not(any(target_os = "linux", windows, target_os = "macos")))]
    {
        &[Backend::Poll]
    }
}

/// How many kernel events the ETW / EndpointSecurity callback may queue
/// before the collector takes them (then they are dropped and counted).
#[cfg(any(windows, target_os = "macos"))]
const KERNEL_QUEUE: usize = 65_536;

/// The ETW source (Windows): the session started first, then the snapshot
/// under SeDebugPrivilege, then the events queued since.
pub(crate) fn etw_source(config: &Config) -> Result<Box<dyn EventSource>, String> {
    let _ = config;
    #[cfg(windows)]
    {
        let source = daemoneye_platform_windows::binding::EtwSource::start(KERNEL_QUEUE).map_err(|e| e.to_string())?;
        Ok(Box::new(EtwAdapter(source)))
    }
    #[cfg(not(windows))]
    {
        Err("ETW is Windows-only".into())
    }
}

/// The EndpointSecurity source (macOS): subscribed first, then the snapshot,
/// then the messages queued since.
pub(crate) fn endpoint_security_source(config: &Config) -> Result<Box<dyn EventSource>, String> {
    let _ = config;
    #[cfg(target_os = "macos")]
    {
        let source = daemoneye_platform_macos::binding::EsSource::start(KERNEL_QUEUE).map_err(|e| e.to_string())?;
        Ok(Box::new(EsAdapter(source)))
    }
    #[cfg(not(target_os = "macos"))]
    {
        Err("EndpointSecurity is macOS-only".into())
    }
}

/// Runs the ETW source as a collector `EventSource`.
#[cfg(windows)]
struct EtwAdapter(daemoneye_platform_windows::binding::EtwSource);

#[cfg(windows)]
impl EventSource for EtwAdapter {
    fn kind(&self) -> daemoneye_lib::proto::EventSource {
        daemoneye_lib::proto::EventSource::Etw
    }
    fn name(&self) -> &'static str {
        "etw"
    }
    fn run(
        self: Box<Self>,
        sink: collector_core::EventSink,
        cancel: tokio_util::sync::CancellationToken,
    ) -> collector_core::SourceFuture {
        Box::pin(async move {
            let send = |ev| {
                let sink = sink.clone();
                async move { sink.send(ev).await }
            };
            self.0.run(send, cancel).await.map_err(|e| match e {
                daemoneye_platform_windows::binding::EtwError::SinkClosed => collector_core::SourceError::SinkClosed,
                other => collector_core::SourceError::Unavailable { source_name: "etw", reason: other.to_string() },
            })
        })
    }
}

/// Runs the EndpointSecurity source as a collector `EventSource`.
#[cfg(target_os = "macos")]
struct EsAdapter(daemoneye_platform_macos::binding::EsSource);

#[cfg(target_os = "macos")]
impl EventSource for EsAdapter {
    fn kind(&self) -> daemoneye_lib::proto::EventSource {
        daemoneye_lib::proto::EventSource::EndpointSecurity
    }
    fn name(&self) -> &'static str {
        "endpoint_security"
    }
    fn run(
        self: Box<Self>,
        sink: collector_core::EventSink,
        cancel: tokio_util::sync::CancellationToken,
    ) -> collector_core::SourceFuture {
        Box::pin(async move {
            let send = |ev| {
                let sink = sink.clone();
                async move { sink.send(ev).await }
            };
            self.0.run(send, cancel).await.map_err(|e| match e {
                daemoneye_platform_macos::binding::EsError::SinkClosed => collector_core::SourceError::SinkClosed,
                other => collector_core::SourceError::Unavailable {
                    source_name: "endpoint_security",
                    reason: other.to_string(),
                },
            })
        })
    }
}

/// The eBPF source (Linux): programs attached first, then the `/proc`
/// snapshot, then the events queued since attach — nothing is missed or
/// doubled at start.
pub(crate) fn ebpf_source(config: &Config) -> Result<Box<dyn EventSource>, String> {
    #[cfg(target_os = "linux")]
    {
        use daemoneye_platform_linux::{ebpf, procfs::ProcfsReader};
        ebpf::available()?;
        let bytes = u32::try_from(config.procmond.ringbuf_size.as_u64()).unwrap_or(u32::MAX);
        let reader = ProcfsReader::new().map_err(|e| format!("cannot read /proc: {e}"))?;
        let source = ebpf::EbpfSource::load(bytes).map_err(|e| e.to_string())?.with_startup_snapshot(reader);
        Ok(Box::new(source))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = config;
        Err("eBPF is Linux-only".into())
    }
}

/// The netlink proc connector source (Linux): subscribed first, then the
/// `/proc` snapshot, then the events queued since; the socket's receive
/// buffer is `procmond.ringbuf_size`.
pub(crate) fn proc_connector_source(config: &Config) -> Result<Box<dyn EventSource>, String> {
    #[cfg(target_os = "linux")]
    {
        use daemoneye_platform_linux::{proc_connector::ProcConnectorSource, procfs::ProcfsReader};
        let bytes = usize::try_from(config.procmond.ringbuf_size.as_u64()).unwrap_or(usize::MAX);
        let reader = ProcfsReader::new().map_err(|e| format!("cannot read /proc: {e}"))?;
        let source = ProcConnectorSource::open(reader, bytes).map_err(|e| e.to_string())?.with_startup_snapshot(true);
        Ok(Box::new(source))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = config;
        Err("the proc connector is Linux-only".into())
    }
}

/// Adapts the /proc reader to the poll source's enumerator.
#[cfg(target_os = "linux")]
struct ProcfsEnumerator(daemoneye_platform_linux::procfs::ProcfsReader);

#[cfg(target_os = "linux")]
impl collector_core::ProcessEnumerator for ProcfsEnumerator {
    fn enumerate(&mut self) -> Result<Vec<daemoneye_lib::proto::ProcessRecord>, collector_core::SourceError> {
        // `try_snapshot` fails when /proc cannot be listed at all, so a
        // first-round failure lets `auto` fall back instead of running blind.
        self.0.try_snapshot().map_err(|e| collector_core::SourceError::Enumerate(e.to_string()))
    }
}

/// The resource sampler (CPU and memory `update` events), keyed like the
/// backend's events; `None` when sampling is off.
pub(crate) fn sampler(config: &Config) -> Option<Box<dyn EventSource>> {
    let every = config.procmond.sample_interval;
    if every.is_zero() {
        return None;
    }
    #[cfg(target_os = "linux")]
    {
        let reader = match daemoneye_platform_linux::procfs::ProcfsReader::new() {
            Ok(r) => std::sync::Arc::new(r),
            Err(e) => {
                tracing::warn!(error = %e, "resource sampling off: cannot read /proc");
                return None;
            }
        };
        let usage = daemoneye_platform_linux::procfs::UsageFromProc::new(reader);
        Some(Box::new(collector_core::ResourceSampler::new(every, usage)))
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// What detection tasks need to read about processes (see `tasks.rs`).
pub(crate) trait ProcessInspector: Send + Sync + 'static {
    /// Every visible process.
    fn list(&self) -> Result<Vec<daemoneye_lib::proto::ProcessRecord>, String>;
    /// One process (`executable_path` without the kernel's " (deleted)"
    /// suffix; `file_exists = Some(false)` when the kernel says deleted).
    fn read(&self, pid: u32) -> Result<daemoneye_lib::proto::ProcessRecord, String>;
    /// A path that opens the running image of `pid` even when its file was
    /// deleted or replaced, when the OS has one.
    fn running_image(&self, pid: u32) -> Option<std::path::PathBuf>;
}

/// The inspector of this OS.
pub(crate) fn inspector() -> Result<Box<dyn ProcessInspector>, String> {
    #[cfg(target_os = "linux")]
    {
        let reader =
            daemoneye_platform_linux::procfs::ProcfsReader::new().map_err(|e| format!("cannot read /proc: {e}"))?;
        Ok(Box::new(ProcfsInspector(reader)))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let enumerator = collector_core::SysinfoEnumerator::new().map_err(|e| e.to_string())?;
        Ok(Box::new(SysinfoInspector(std::sync::Mutex::new(enumerator))))
    }
}

#[cfg(target_os = "linux")]
struct ProcfsInspector(daemoneye_platform_linux::procfs::ProcfsReader);

#[cfg(target_os = "linux")]
impl ProcessInspector for ProcfsInspector {
    fn list(&self) -> Result<Vec<daemoneye_lib::proto::ProcessRecord>, String> {
        self.0.try_snapshot().map_err(|e| e.to_string())
    }

    fn read(&self, pid: u32) -> Result<daemoneye_lib::proto::ProcessRecord, String> {
        self.0.read_process(pid).map_err(|e| e.to_string())
    }

    fn running_image(&self, pid: u32) -> Option<std::path::PathBuf> {
        Some(std::path::PathBuf::from(format!("/proc/{pid}/exe")))
    }
}

#[cfg(not(target_os = "linux"))]
struct SysinfoInspector(std::sync::Mutex<collector_core::SysinfoEnumerator>);

#[cfg(not(target_os = "linux"))]
impl ProcessInspector for SysinfoInspector {
    fn list(&self) -> Result<Vec<daemoneye_lib::proto::ProcessRecord>, String> {
        use collector_core::ProcessEnumerator as _;
        let mut e = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        e.enumerate().map_err(|e| e.to_string())
    }

    fn read(&self, pid: u32) -> Result<daemoneye_lib::proto::ProcessRecord, String> {
        self.list()?.into_iter().find(|p| p.pid == pid).ok_or_else(|| format!("no process with pid {pid}"))
    }

    fn running_image(&self, _pid: u32) -> Option<std::path::PathBuf> {
        None
    }
}

/// What entering the sandbox did: the details of the `privilege_drop` audit
/// record and, for the log, the capabilities kept and given up.
pub(crate) struct Sandboxed {
    pub(crate) details: Vec<(String, String)>,
    pub(crate) kept: String,
    pub(crate) dropped: String,
}

/// Drops the capabilities steady state does not need and refuses network
/// sockets (Linux: capability sets, `no_new_privs`, seccomp; see
/// `daemoneye_platform_linux::sandbox`). `None` on an OS without one. Must
/// run before the async runtime starts its threads.
pub(crate) fn enter_sandbox(backend: &str) -> Result<Option<Sandboxed>, String> {
    #[cfg(target_os = "linux")]
    {
        use daemoneye_platform_linux::sandbox;
        let report = sandbox::enter(backend).map_err(|e| e.to_string())?;
        Ok(Some(Sandboxed {
            details: report.audit_details(),
            kept: sandbox::render(&report.after.permitted),
            dropped: sandbox::render(&report.dropped()),
        }))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = backend;
        Ok(None)
    }
}

/// Tries to open a socket of each family the sandbox decides on; `None` on
/// an OS without a sandbox.
pub(crate) fn probe_sockets() -> Option<Vec<(&'static str, Result<(), String>)>> {
    #[cfg(target_os = "linux")]
    {
        let probes = daemoneye_platform_linux::sandbox::probe_sockets();
        Some(probes.into_iter().map(|(name, r)| (name, r.map_err(|e| format!("{e:?}: {}", e.desc())))).collect())
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// The kernel's view of this process's privileges (Linux: the `Cap*`,
/// `NoNewPrivs` and `Seccomp` lines of `/proc/self/status`).
pub(crate) fn privilege_status() -> Vec<String> {
    #[cfg(target_os = "linux")]
    {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .filter(|l| l.starts_with("Cap") || l.starts_with("NoNewPrivs:") || l.starts_with("Seccomp:"))
            .map(str::to_owned)
            .collect()
    }
    #[cfg(not(target_os = "linux"))]
    {
        Vec::new()
    }
}
