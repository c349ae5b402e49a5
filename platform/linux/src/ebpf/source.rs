//! [`EbpfSource`] as a collector-core [`EventSource`].

use collector_core::source::{EventSink, EventSource, SourceError, SourceFuture};
use daemoneye_lib::models::time::now_ns;
use daemoneye_lib::proto::{self, EventType, ProcessEvent};
use tokio_util::sync::CancellationToken;

use super::EbpfSource;

impl EventSource for EbpfSource {
    fn kind(&self) -> proto::EventSource {
        proto::EventSource::Ebpf
    }

    fn name(&self) -> &'static str {
        "ebpf"
    }

    fn run(self: Box<Self>, sink: EventSink, cancel: CancellationToken) -> SourceFuture {
        Box::pin(run(*self, sink, cancel))
    }
}

async fn run(mut src: EbpfSource, sink: EventSink, cancel: CancellationToken) -> Result<(), SourceError> {
    // The programs are attached already: whatever starts during the
    // snapshot is queued in the ring buffer and follows it.
    if let Some(reader) = src.snapshot.take() {
        let records = tokio::task::spawn_blocking(move || reader.snapshot())
            .await
            .map_err(|e| SourceError::Task(e.to_string()))?;
        tracing::info!(processes = records.len(), "start-up snapshot read");
        for process in records {
            let event = ProcessEvent {
                seq: 0,
                event_type: EventType::Snapshot.into(),
                event_time_ns: now_ns(),
                source: proto::EventSource::Procfs.into(),
                process: Some(process),
                gap: None,
                prev_seq: 0,
            };
            if !sink.send_or_cancel(event, &cancel).await? {
                return Ok(());
            }
        }
    }
    let mut batch = Vec::with_capacity(super::MAX_BATCH);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok(()),
            r = src.next_batch(&mut batch) => r.map_err(|e| SourceError::Io {
                what: "reading eBPF events".into(),
                source: std::io::Error::other(e.to_string()),
            })?,
        }
        for event in batch.drain(..) {
            if !sink.send_or_cancel(event, &cancel).await? {
                return Ok(());
            }
        }
    }
}
