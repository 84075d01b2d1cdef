//! goim over WebSocket: one goim packet per client message (only its first packet is parsed), and
//! pushes wrapped in op-9 packets, one or more inner packets per binary message. Replies are never
//! wrapped. tokio-tungstenite runs with small buffers: its defaults cost ~135 KB per connection.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{BatchWriter, PacketReader, ReadError};
use crate::config::LimitsConfig;
use crate::outbox::Outgoing;
use crate::protocol::{decode_frame, raw, Packet};

/// tungstenite settings for a goim connection.
pub fn websocket_config(limits: &LimitsConfig) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096)
        // The outbox already bounds what is queued; this only stops tungstenite buffering beyond it.
        .max_write_buffer_size(limits.max_outbound_bytes.saturating_mul(2).max(64 * 1024))
        .max_message_size(Some(limits.max_ws_message_bytes))
        .max_frame_size(Some(limits.max_ws_message_bytes))
}

pub struct WsReader<S> {
    stream: SplitStream<WebSocketStream<S>>,
}

impl<S> WsReader<S> {
    pub fn new(stream: SplitStream<WebSocketStream<S>>) -> Self {
        WsReader { stream }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> PacketReader for WsReader<S> {
    async fn next_packet(&mut self) -> Result<Option<Packet>, ReadError> {
        loop {
            match self.stream.next().await {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Binary(data))) => return Ok(Some(decode_frame(&data)?)),
                Some(Ok(Message::Text(text))) => return Ok(Some(decode_frame(text.as_bytes())?)),
                // tungstenite answers pings itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            }
        }
    }
}

pub struct WsWriter<S> {
    sink: SplitSink<WebSocketStream<S>, Message>,
}

impl<S> WsWriter<S> {
    pub fn new(sink: SplitSink<WebSocketStream<S>, Message>) -> Self {
        WsWriter { sink }
    }
}

fn io_error(e: tokio_tungstenite::tungstenite::Error) -> std::io::Error {
    match e {
        tokio_tungstenite::tungstenite::Error::Io(e) => e,
        other => std::io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> BatchWriter for WsWriter<S> {
    async fn write_batch(&mut self, items: VecDeque<Outgoing>) -> std::io::Result<()> {
        let mut pushes: Vec<Bytes> = Vec::new();
        for item in items {
            match item {
                Outgoing::Push(b) => pushes.push(b),
                Outgoing::Reply(b) => {
                    self.flush_pushes(&mut pushes).await?;
                    self.sink.feed(Message::Binary(b)).await.map_err(io_error)?;
                }
            }
        }
        self.flush_pushes(&mut pushes).await?;
        self.sink.flush().await.map_err(io_error)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> WsWriter<S> {
    /// Queue the pending pushes as one op-9 message.
    async fn flush_pushes(&mut self, pushes: &mut Vec<Bytes>) -> std::io::Result<()> {
        if pushes.is_empty() {
            return Ok(());
        }
        let body_len = pushes.iter().map(Bytes::len).sum();
        let mut frame = BytesMut::new();
        raw::wrap_into(&mut frame, pushes.iter(), body_len);
        pushes.clear();
        self.sink.feed(Message::Binary(frame.freeze())).await.map_err(io_error)
    }
}
