//! The webhook sink: HTTP POST of the alert JSON, optional headers (for
//! example `Authorization`), TLS through rustls (webpki roots plus an
//! optional CA file). 2xx is delivered; 400, 413 and 422 mean the receiver
//! refuses this alert for good; anything else is retried.

use std::time::Duration;

use daemoneye_lib::config::SinkConfig;
use daemoneye_lib::models::alert_json;
use daemoneye_lib::proto::Alert;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use super::SendError;

/// A webhook client.
#[derive(Debug)]
pub(super) struct WebhookSink {
    client: reqwest::Client,
    url: reqwest::Url,
}

impl WebhookSink {
    /// Builds the client from the sink's config; errors name the key.
    pub(super) fn new(name: &str, cfg: &SinkConfig, timeout: Duration) -> Result<Self, String> {
        let raw = cfg.url.as_deref().unwrap_or_default();
        let url = reqwest::Url::parse(raw).map_err(|e| format!("sink {name:?}: url {raw:?}: {e}"))?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (k, v) in cfg.headers.iter().flatten() {
            let key =
                HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("sink {name:?}: header name {k:?}: {e}"))?;
            // The value may be a secret: never echo it.
            let mut val = HeaderValue::from_str(v)
                .map_err(|_| format!("sink {name:?}: header {k:?} has a value that is not valid in HTTP"))?;
            val.set_sensitive(true);
            headers.insert(key, val);
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(timeout)
            .connect_timeout(timeout)
            .default_headers(headers)
            .user_agent(concat!("daemoneye/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("sink {name:?}: ca_file {}: {e}", ca.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("sink {name:?}: ca_file {}: not PEM certificates: {e}", ca.display()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|e| format!("sink {name:?}: building the HTTP client: {e}"))?;
        Ok(Self { client, url })
    }

    /// POSTs one alert.
    pub(super) async fn send(&self, alert: &Alert) -> Result<(), SendError> {
        let body = alert_json(alert).to_string();
        let resp = self
            .client
            .post(self.url.clone())
            .body(body)
            .send()
            .await
            .map_err(|e| SendError::Retry(format!("POST {}: {}", self.url, error_chain(&e))))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let msg = format!("POST {}: HTTP {status}", self.url);
        match status.as_u16() {
            400 | 413 | 422 => Err(SendError::Reject(msg)),
            _ => Err(SendError::Retry(msg)),
        }
    }
}

/// The error and its causes on one line ("error sending request: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
