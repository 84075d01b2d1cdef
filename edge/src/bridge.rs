//! The NATS bridge: a few shared NATS connections per edge, which subject lives on which, and the
//! round trip that proves a subscription is active at the server.
//!
//! Every subject's subscription is placed on one connection chosen by hash, so a subject's messages
//! arrive in order on one socket while the connections share the load. async-nats reconnects forever
//! and re-sends every live subscription after a reconnect, which is how the edge survives NATS restarts.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use async_nats::{Client, Event, HeaderMap, Subscriber};
use bytes::Bytes;
use tracing::{info, warn};

use crate::config::NatsConfig;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("cannot subscribe to {subject}: {source}")]
    Subscribe { subject: String, source: async_nats::SubscribeError },
    #[error("cannot publish to {subject}: {source}")]
    Publish { subject: String, source: async_nats::PublishError },
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Bridge {
    clients: Vec<Client>,
    barrier_subject: String,
}

impl Bridge {
    /// Connect every shared connection, retrying (with a logged reason) until the servers answer, so an
    /// edge never accepts goim clients it cannot serve.
    pub async fn connect(cfg: &NatsConfig, edge_id: &str) -> Bridge {
        let mut clients = Vec::with_capacity(cfg.connections);
        for index in 0..cfg.connections {
            clients.push(connect_one(cfg, edge_id, index).await);
        }
        Bridge { clients, barrier_subject: format!("_GOIM.barrier.{edge_id}") }
    }

    /// Index of the connection that carries `subject`.
    pub fn client_index(&self, subject: &str) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        subject.hash(&mut h);
        (h.finish() % self.clients.len() as u64) as usize
    }

    /// Number of shared connections.
    pub fn connections(&self) -> usize {
        self.clients.len()
    }

    /// Shared connections that are connected right now (the rest are reconnecting).
    pub fn connected(&self) -> usize {
        self.clients.iter().filter(|c| goim_common::nats_up(c)).count()
    }

    /// `Ok` while every shared connection is up, else why not (`/healthz`).
    pub fn ready(&self) -> Result<(), String> {
        goim_common::nats_ready(&self.clients.iter().collect::<Vec<_>>())
    }

    /// Connections re-established after a loss, over all shared connections (async-nats counts the
    /// first connect too).
    pub fn reconnects(&self) -> u64 {
        self.clients.iter().map(goim_common::nats_reconnects).sum()
    }

    /// The connection used for publishing and control subscriptions.
    pub fn publisher(&self) -> &Client {
        &self.clients[0]
    }

    /// Subscribe to `subject` on its connection. The SUB is queued in order on that connection, so a
    /// later [`Bridge::barrier`] on the same index covers it.
    pub async fn subscribe(&self, subject: &str) -> Result<Subscriber, BridgeError> {
        self.clients[self.client_index(subject)]
            .subscribe(subject.to_string())
            .await
            .map_err(|source| BridgeError::Subscribe { subject: subject.to_string(), source })
    }

    /// Wait until the server has processed everything this edge sent on connection `index`.
    ///
    /// async-nats' `flush` only drains the client buffer, so the edge sends a request to a subject
    /// nobody serves: the server's "no responders" answer (or any answer) proves it has read the SUBs
    /// queued before it on that connection. A client is told it joined a room only after this.
    pub async fn barrier(&self, index: usize) {
        let client = &self.clients[index];
        match client.request(self.barrier_subject.clone(), Bytes::new()).await {
            Ok(_) => {}
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {}
            Err(e) => warn!(error = %e, index, "NATS barrier failed; subscriptions will be confirmed on reconnect"),
        }
    }

    /// A request on the publishing connection, bounded by `timeout`.
    pub async fn request(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<async_nats::Message, async_nats::RequestError> {
        let req = async_nats::Request::new().headers(headers).payload(payload).timeout(Some(timeout));
        self.publisher().send_request(subject, req).await
    }

    pub async fn publish(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), BridgeError> {
        self.publisher()
            .publish_with_headers(subject.clone(), headers, payload)
            .await
            .map_err(|source| BridgeError::Publish { subject, source })
    }
}

async fn connect_one(cfg: &NatsConfig, edge_id: &str, index: usize) -> Client {
    let name = format!("{}:{edge_id}:{index}", cfg.name);
    goim_common::connect_nats(&cfg.urls, || {
        goim_common::credentials(&name, &cfg.user, &cfg.password)
            .subscription_capacity(cfg.subscription_capacity)
            .request_timeout(Some(Duration::from_secs(5)))
            .event_callback(move |event| async move {
                match event {
                    Event::Connected => info!(index, "NATS connected"),
                    Event::Disconnected => warn!(index, "NATS disconnected; reconnecting"),
                    Event::SlowConsumer(sid) => {
                        warn!(index, sid, "NATS subscription overflowed: the edge is too slow for its pushes")
                    }
                    other => info!(index, event = %other, "NATS event"),
                }
            })
    })
    .await
}
