//! The configuration flags every daemon takes, so that `daemoneye-agent` and
//! `procmond` map them onto the configuration layers the same way.

use std::path::PathBuf;

use super::LoadOptions;

/// `--config`, `--data-dir`, `--backend`, `--no-system-config`,
/// `--log-level`: flatten into a binary's clap arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DaemonFlags {
    /// Configuration file (replaces /etc/daemoneye/config.toml and the user config).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory: the store, the ledger, the signing key and (by default) the sockets in DIR/run.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Kernel telemetry backend (`auto` takes the best that works).
    #[arg(
        long,
        value_name = "BACKEND",
        value_parser = ["auto", "ebpf", "proc-connector", "poll", "etw", "endpoint-security"]
    )]
    pub backend: Option<String>,
    /// Ignore /etc/daemoneye/config.toml and the user config.
    #[arg(long)]
    pub no_system_config: bool,
    /// Log level when RUST_LOG is unset (error, warn, info, debug, trace).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
}

impl DaemonFlags {
    /// The load options these flags make: `--config` replaces the system
    /// and user files, the others are the top (command-line) layer.
    pub fn load_options(&self) -> LoadOptions {
        let mut opts = LoadOptions {
            config_file: self.config.clone(),
            skip_system_files: self.no_system_config,
            ..Default::default()
        };
        if let Some(d) = &self.data_dir {
            opts.set("general.data_dir", d.display().to_string());
        }
        if let Some(b) = &self.backend {
            opts.set("procmond.backend", b.as_str());
        }
        if let Some(l) = &self.log_level {
            opts.set("general.log_level", l.as_str());
        }
        opts
    }

    /// The same flags as arguments, for starting a child daemon (procmond)
    /// that must read the same configuration.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(c) = &self.config {
            args.extend(["--config".to_owned(), c.display().to_string()]);
        }
        if self.no_system_config {
            args.push("--no-system-config".to_owned());
        }
        if let Some(l) = &self.log_level {
            args.extend(["--log-level".to_owned(), l.clone()]);
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Backend, Config};

    #[test]
    fn flags_are_the_top_layer() {
        let flags = DaemonFlags {
            data_dir: Some("/tmp/d".into()),
            backend: Some("poll".into()),
            no_system_config: true,
            ..Default::default()
        };
        let c = Config::load(&flags.load_options()).unwrap();
        assert_eq!(c.general.data_dir, PathBuf::from("/tmp/d"));
        assert_eq!(c.procmond.backend, Backend::Poll);
        assert_eq!(flags.to_args(), vec!["--no-system-config".to_owned()]);
    }
}
