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
        Ok(Box::new(
            collector_core::PollSource::new(collector_core::SysinfoEnumerator::new())
                .with_interval(config.procmond.poll_interval),
        ))
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

/// The netlink proc connector source (Linux).
pub(crate) fn proc_connector_source(_config: &Config) -> Result<Box<dyn EventSource>, String> {
    Err("the proc connector source is not part of this build".into())
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
        let keyer = move |pid: u32| reader.key_of(pid).ok().map(|k| k.to_string());
        Some(Box::new(collector_core::ResourceSampler::new(every, keyer)))
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}
