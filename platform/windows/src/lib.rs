//! Windows process telemetry (ETW `Microsoft-Windows-Kernel-Process`); compiled on Windows only.
