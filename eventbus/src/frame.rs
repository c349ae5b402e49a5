//! The frame codec: a 4-byte big-endian length followed by one encoded
//! `daemoneye.v1.BusMessage`.
//!
//! [`BusCodec`] checks the announced length against the maximum *before* it
//! buffers the body, so a peer cannot make us allocate more than
//! `max_frame_size + 4` bytes per connection. `Deliver` frames are encoded by
//! hand from a shared [`Published`] message so that fan-out to many
//! subscribers does not clone the payload; the bytes are identical to what
//! prost produces for `BusMessage { kind: Deliver(..) }` (tested below).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use daemoneye_lib::proto::{BusMessage, Correlation};
use prost::Message;
use prost::encoding::{self, WireType};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::BusError;

/// Version of the bus protocol sent in `Hello`/`Welcome`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Default maximum frame size (4 MiB), length prefix excluded.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 4 * 1024 * 1024;

const LEN_PREFIX: usize = 4;
/// Field number of `deliver` in the `BusMessage` oneof.
const BUS_MESSAGE_DELIVER_TAG: u32 = 6;

/// A message as the broker received it, shared by every subscriber it is
/// routed to.
#[derive(Debug, Clone)]
pub struct Published {
    /// Concrete topic.
    pub topic: String,
    /// Opaque payload.
    pub payload: Bytes,
    /// Correlation metadata from the publisher.
    pub correlation: Correlation,
    /// Payload type, e.g. `daemoneye.v1.ProcessEvent`.
    pub content_type: String,
    /// Broker receive time, Unix nanoseconds.
    pub published_at_ns: i64,
    /// Broker receive time, monotonic (for latency statistics).
    pub received_at: Instant,
}

/// One outgoing frame.
#[derive(Debug, Clone)]
pub enum OutFrame {
    /// Any message, encoded with prost (boxed: messages are large, deliveries small).
    Message(Box<BusMessage>),
    /// A `Deliver` of a shared published message.
    Deliver {
        /// The subscriber's subscription id.
        subscription_id: u64,
        /// Per-subscription sequence.
        delivery_seq: u64,
        /// The message.
        msg: Arc<Published>,
    },
}

impl From<BusMessage> for OutFrame {
    fn from(m: BusMessage) -> Self {
        Self::Message(Box::new(m))
    }
}

/// Length-prefixed protobuf codec for [`tokio_util::codec::Framed`].
#[derive(Debug, Clone, Copy)]
pub struct BusCodec {
    max_frame_size: usize,
}

impl BusCodec {
    /// A codec that rejects frames longer than `max_frame_size` bytes.
    pub fn new(max_frame_size: usize) -> Self {
        // The length prefix is a u32; larger limits cannot be expressed.
        Self { max_frame_size: max_frame_size.min(u32::MAX as usize) }
    }

    /// The configured maximum.
    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }
}

impl Decoder for BusCodec {
    type Item = BusMessage;
    type Error = BusError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BusMessage>, BusError> {
        let Some(prefix) = src.get(..LEN_PREFIX) else {
            return Ok(None);
        };
        let mut len_bytes = [0u8; LEN_PREFIX];
        len_bytes.copy_from_slice(prefix);
        let len = u32::from_be_bytes(len_bytes) as usize;
        if len > self.max_frame_size {
            return Err(BusError::FrameTooLarge { len, max: self.max_frame_size });
        }
        let total = LEN_PREFIX + len;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(LEN_PREFIX);
        let body = src.split_to(len).freeze();
        BusMessage::decode(body).map(Some).map_err(|e| BusError::MalformedFrame { reason: e.to_string() })
    }
}

impl Encoder<OutFrame> for BusCodec {
    type Error = BusError;

    fn encode(&mut self, item: OutFrame, dst: &mut BytesMut) -> Result<(), BusError> {
        match item {
            OutFrame::Message(m) => self.encode(*m, dst),
            OutFrame::Deliver { subscription_id, delivery_seq, msg } => {
                let d = DeliverRef { subscription_id, delivery_seq, msg: &msg };
                let body_len = d.body_len();
                let len = encoding::key_len(BUS_MESSAGE_DELIVER_TAG)
                    + encoding::encoded_len_varint(body_len as u64)
                    + body_len;
                self.write_prefix(len, dst)?;
                encoding::encode_key(BUS_MESSAGE_DELIVER_TAG, WireType::LengthDelimited, dst);
                encoding::encode_varint(body_len as u64, dst);
                d.encode_body(dst);
                Ok(())
            }
        }
    }
}

impl Encoder<BusMessage> for BusCodec {
    type Error = BusError;

    fn encode(&mut self, item: BusMessage, dst: &mut BytesMut) -> Result<(), BusError> {
        self.write_prefix(item.encoded_len(), dst)?;
        // Cannot fail: `dst` was reserved to the exact length and BytesMut grows anyway.
        item.encode(dst).map_err(|e| BusError::MalformedFrame { reason: e.to_string() })
    }
}

impl BusCodec {
    fn write_prefix(&self, len: usize, dst: &mut BytesMut) -> Result<(), BusError> {
        if len > self.max_frame_size {
            return Err(BusError::FrameTooLarge { len, max: self.max_frame_size });
        }
        dst.reserve(LEN_PREFIX + len);
        // `len <= max_frame_size <= u32::MAX` (see `new`).
        dst.put_u32(len as u32);
        Ok(())
    }
}

/// Field-by-field encoding of `daemoneye.v1.Deliver` without owning copies.
struct DeliverRef<'a> {
    subscription_id: u64,
    delivery_seq: u64,
    msg: &'a Published,
}

impl DeliverRef<'_> {
    fn body_len(&self) -> usize {
        let m = self.msg;
        let mut n = 0;
        if self.subscription_id != 0 {
            n += encoding::uint64::encoded_len(1, &self.subscription_id);
        }
        if !m.topic.is_empty() {
            n += encoding::string::encoded_len(2, &m.topic);
        }
        if !m.payload.is_empty() {
            n += encoding::bytes::encoded_len(3, &m.payload);
        }
        n += encoding::message::encoded_len(4, &m.correlation);
        if !m.content_type.is_empty() {
            n += encoding::string::encoded_len(5, &m.content_type);
        }
        if self.delivery_seq != 0 {
            n += encoding::uint64::encoded_len(6, &self.delivery_seq);
        }
        if m.published_at_ns != 0 {
            n += encoding::int64::encoded_len(7, &m.published_at_ns);
        }
        n
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        let m = self.msg;
        if self.subscription_id != 0 {
            encoding::uint64::encode(1, &self.subscription_id, dst);
        }
        if !m.topic.is_empty() {
            encoding::string::encode(2, &m.topic, dst);
        }
        if !m.payload.is_empty() {
            encoding::bytes::encode(3, &m.payload, dst);
        }
        encoding::message::encode(4, &m.correlation, dst);
        if !m.content_type.is_empty() {
            encoding::string::encode(5, &m.content_type, dst);
        }
        if self.delivery_seq != 0 {
            encoding::uint64::encode(6, &self.delivery_seq, dst);
        }
        if m.published_at_ns != 0 {
            encoding::int64::encode(7, &m.published_at_ns, dst);
        }
    }
}

/// Wraps a message kind into a `BusMessage`.
pub fn message(kind: daemoneye_lib::proto::bus_message::Kind) -> BusMessage {
    BusMessage { kind: Some(kind) }
}

/// A `BusMessage` carrying an error frame.
pub fn error_message(
    code: daemoneye_lib::proto::BusErrorCode,
    message_text: impl Into<String>,
    ref_id: u64,
) -> BusMessage {
    message(daemoneye_lib::proto::bus_message::Kind::Error(daemoneye_lib::proto::BusError {
        code: code as i32,
        message: message_text.into(),
        ref_id,
    }))
}

/// Current wall-clock time in Unix nanoseconds (0 if the clock is before 1970).
pub(crate) fn unix_now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The payload of a byte buffer, for tests and raw writers: prefix + body.
pub fn encode_to_bytes(msg: &BusMessage) -> Bytes {
    let mut buf = BytesMut::with_capacity(LEN_PREFIX + msg.encoded_len());
    buf.put_u32(u32::try_from(msg.encoded_len()).unwrap_or(u32::MAX));
    msg.encode_raw(&mut buf);
    buf.freeze()
}

/// Reads frames from a byte stream with a per-frame deadline: once the first
/// byte of a frame has arrived, the whole frame must arrive within
/// `frame_timeout`, however slowly the peer trickles it. An idle connection
/// (no partial frame) has no deadline.
#[derive(Debug)]
pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    codec: BusCodec,
    frame_timeout: Option<Duration>,
    frame_started: Option<Instant>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader over `io`.
    pub fn new(io: R, codec: BusCodec, frame_timeout: Option<Duration>) -> Self {
        Self { io, buf: BytesMut::with_capacity(8 * 1024), codec, frame_timeout, frame_started: None }
    }

    /// The next message; `Ok(None)` on a clean end of stream.
    ///
    /// Cancel-safe: bytes read before cancellation stay buffered.
    pub async fn next(&mut self) -> Result<Option<BusMessage>, BusError> {
        loop {
            if let Some(msg) = self.codec.decode(&mut self.buf)? {
                self.frame_started = (!self.buf.is_empty()).then(Instant::now);
                return Ok(Some(msg));
            }
            let n = match (self.frame_started, self.frame_timeout) {
                (Some(started), Some(limit)) => {
                    let deadline = tokio::time::Instant::from_std(started + limit);
                    match tokio::time::timeout_at(deadline, self.io.read_buf(&mut self.buf)).await {
                        Ok(r) => r?,
                        Err(_) => {
                            return Err(BusError::FrameTimeout { received: self.buf.len(), after: limit });
                        }
                    }
                }
                _ => self.io.read_buf(&mut self.buf).await?,
            };
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(BusError::MalformedFrame {
                    reason: format!("connection closed in the middle of a frame ({} bytes)", self.buf.len()),
                });
            }
            if self.frame_started.is_none() {
                self.frame_started = Some(Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use daemoneye_lib::proto::bus_message::Kind;
    use daemoneye_lib::proto::{Deliver, Ping};
    use proptest::prelude::*;

    fn published(payload: &[u8], topic: &str) -> Arc<Published> {
        let mut correlation = Correlation { correlation_id: "c1".into(), ..Default::default() };
        correlation.tags.insert("k".into(), "v".into());
        Arc::new(Published {
            topic: topic.into(),
            payload: Bytes::copy_from_slice(payload),
            correlation,
            content_type: "t".into(),
            published_at_ns: 42,
            received_at: Instant::now(),
        })
    }

    #[test]
    fn deliver_encoding_matches_prost() {
        for (sub, seq, payload) in [(7u64, 3u64, &b"hello"[..]), (0, 0, &b""[..])] {
            let msg = published(payload, "events.process.lifecycle");
            let mut codec = BusCodec::new(DEFAULT_MAX_FRAME_SIZE);
            let mut buf = BytesMut::new();
            let frame = OutFrame::Deliver { subscription_id: sub, delivery_seq: seq, msg };
            codec.encode(frame, &mut buf).unwrap();
            let decoded = codec.decode(&mut buf).unwrap().unwrap();
            let Some(Kind::Deliver(d)) = decoded.kind else { panic!("not a deliver") };
            assert_eq!(d.subscription_id, sub);
            assert_eq!(d.delivery_seq, seq);
            assert_eq!(d.payload, payload);
            assert_eq!(d.topic, "events.process.lifecycle");
            assert_eq!(d.correlation.unwrap().tags["k"], "v");
            assert_eq!(d.published_at_ns, 42);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn oversized_prefix_is_rejected_before_body() {
        let mut codec = BusCodec::new(16);
        let mut buf = BytesMut::from(&[0u8, 0, 1, 0][..]);
        assert!(matches!(codec.decode(&mut buf), Err(BusError::FrameTooLarge { len: 256, max: 16 })));
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let mut codec = BusCodec::new(1024);
        let full = encode_to_bytes(&message(Kind::Ping(Ping { nonce: 9 })));
        let mut buf = BytesMut::new();
        for (i, b) in full.iter().enumerate() {
            buf.put_u8(*b);
            let r = codec.decode(&mut buf).unwrap();
            assert_eq!(r.is_some(), i + 1 == full.len());
        }
    }

    #[test]
    fn garbage_is_malformed() {
        let mut codec = BusCodec::new(1024);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3, 0xff, 0xff, 0xff][..]);
        assert!(matches!(codec.decode(&mut buf), Err(BusError::MalformedFrame { .. })));
    }

    #[test]
    fn encoder_refuses_oversized() {
        let mut codec = BusCodec::new(8);
        let msg = message(Kind::Deliver(Deliver { payload: vec![0; 64], ..Default::default() }));
        assert!(matches!(codec.encode(msg, &mut BytesMut::new()), Err(BusError::FrameTooLarge { .. })));
    }

    proptest! {
        #[test]
        fn decoder_never_panics(data in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut codec = BusCodec::new(128);
            let mut buf = BytesMut::from(&data[..]);
            for _ in 0..8 {
                match codec.decode(&mut buf) {
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
        }
    }
}
