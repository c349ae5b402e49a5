//! The agent as a Windows service (windows-service): registration with the
//! service control manager, and the service entry point that runs the agent
//! until the SCM asks it to stop.
//!
//! The service runs as LocalSystem (`account_name: None`), starts
//! automatically, and is restarted by the agent's own supervision of
//! procmond; the agent binary is started with `--service` so its `main`
//! calls [`run`] instead of running in the console.

use std::ffi::OsString;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use windows_service::service::{
    ServiceAccess, ServiceControl, ServiceControlAccept, ServiceErrorControl, ServiceExitCode, ServiceInfo,
    ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

/// The service name (`sc query daemoneye-agent`).
pub const SERVICE_NAME: &str = "daemoneye-agent";
/// The name shown in `services.msc`.
pub const DISPLAY_NAME: &str = "DaemonEye agent";
/// The description shown in `services.msc`.
pub const DESCRIPTION: &str = "DaemonEye process security sensor: event bus, process table, detection rules, alerts.";

/// The agent's body: runs until the token is cancelled; the error text is
/// logged and reported to the SCM as a service-specific exit code 1.
pub type AgentMain = Box<dyn Fn(CancellationToken) -> Result<(), String> + Send + Sync>;

static AGENT_MAIN: OnceLock<AgentMain> = OnceLock::new();

/// Why a service operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// A call to the service control manager failed.
    #[error("service {SERVICE_NAME}: {what}: {source} (run as an administrator)")]
    Scm {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: windows_service::Error,
    },
    /// [`run`] was called twice.
    #[error("service {SERVICE_NAME}: the service entry point is already running")]
    AlreadyRunning,
}

fn scm(what: &'static str) -> impl FnOnce(windows_service::Error) -> ServiceError {
    move |source| ServiceError::Scm { what, source }
}

/// Registers the agent at `executable` as an auto-start LocalSystem service.
pub fn install(executable: &Path) -> Result<(), ServiceError> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CREATE_SERVICE)
        .map_err(scm("opening the service control manager"))?;
    let info = ServiceInfo {
        name: OsString::from(SERVICE_NAME),
        display_name: OsString::from(DISPLAY_NAME),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: executable.to_path_buf(),
        launch_arguments: vec![OsString::from("--service")],
        dependencies: Vec::new(),
        account_name: None,
        account_password: None,
    };
    let service = manager.create_service(&info, ServiceAccess::CHANGE_CONFIG).map_err(scm("creating the service"))?;
    service.set_description(DESCRIPTION).map_err(scm("setting the description"))
}

/// Removes the service registration (the service must be stopped).
pub fn uninstall() -> Result<(), ServiceError> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .map_err(scm("opening the service control manager"))?;
    let service = manager.open_service(SERVICE_NAME, ServiceAccess::DELETE).map_err(scm("opening the service"))?;
    service.delete().map_err(scm("deleting the service"))
}

/// Hands the process to the SCM and runs `agent` as the service body; returns
/// when the service has stopped. Call it from `main` when started with
/// `--service`.
pub fn run(agent: AgentMain) -> Result<(), ServiceError> {
    AGENT_MAIN.set(agent).map_err(|_| ServiceError::AlreadyRunning)?;
    service_dispatcher::start(SERVICE_NAME, ffi_service_main).map_err(scm("starting the service dispatcher"))
}

define_windows_service!(ffi_service_main, service_main);

fn service_main(_arguments: Vec<OsString>) {
    if let Err(e) = serve() {
        tracing::error!(error = %e, "the agent service failed");
    }
}

fn status(state: ServiceState, exit: ServiceExitCode, wait: Duration) -> ServiceStatus {
    ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: if state == ServiceState::Running {
            ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
        } else {
            ServiceControlAccept::empty()
        },
        exit_code: exit,
        checkpoint: 0,
        wait_hint: wait,
        process_id: None,
    }
}

fn serve() -> Result<(), ServiceError> {
    let cancel = CancellationToken::new();
    let on_control = cancel.clone();
    let handle = service_control_handler::register(SERVICE_NAME, move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            on_control.cancel();
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    })
    .map_err(scm("registering the control handler"))?;
    let ok = ServiceExitCode::Win32(0);
    handle.set_service_status(status(ServiceState::Running, ok, Duration::ZERO)).map_err(scm("reporting running"))?;
    let result = match AGENT_MAIN.get() {
        Some(agent) => agent(cancel),
        None => Err("no agent body was registered before the dispatcher started".to_owned()),
    };
    let exit = match &result {
        Ok(()) => ok,
        Err(e) => {
            tracing::error!(error = %e, "the agent stopped with an error");
            ServiceExitCode::ServiceSpecific(1)
        }
    };
    handle.set_service_status(status(ServiceState::Stopped, exit, Duration::ZERO)).map_err(scm("reporting stopped"))
}
