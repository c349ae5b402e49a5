//! macOS process telemetry (EndpointSecurity); compiled on macOS only.
