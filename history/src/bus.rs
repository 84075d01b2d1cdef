//! goim-history on NATS: the micro service `goim-history` (`nats micro ls`) with the endpoints
//! `history.get` (read a page), `history.info` (which subjects are stored) and `history.stats`
//! (counters of the replica that answers), all in one queue group so replicas share the load.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::service::ServiceExt;
use bytes::Bytes;
use futures_util::StreamExt;
use tracing::{debug, warn};

use crate::query::NatsRequest;
use crate::service::History;

/// Read a page: JSON `{"token","room"|"user"|"broadcast","before"|"after","limit"}`.
pub const GET: &str = goim_edge::subjects::HISTORY_GET;
/// Which subjects are stored, in which stream, with which retention; `max_resume`.
pub const INFO: &str = goim_edge::subjects::HISTORY_INFO;
/// Counters of the answering replica.
pub const STATS: &str = "history.stats";
/// NATS service name.
pub const SERVICE_NAME: &str = "goim-history";
/// Room left in a NATS answer for everything but the messages' bodies.
const ENVELOPE: usize = 2048;

#[derive(Debug, thiserror::Error)]
#[error("cannot register the NATS service {SERVICE_NAME}: {0}")]
pub struct BusError(String);

#[derive(Clone, Copy)]
enum Kind {
    Get,
    Info,
    Stats,
}

/// Register the service and its endpoints and serve them. The service handle lives as long as the
/// endpoints are served.
pub async fn serve(
    history: Arc<History>,
    client: async_nats::Client,
    queue_group: &str,
    metadata: HashMap<String, String>,
) -> Result<(), BusError> {
    let service = client
        .service_builder()
        .description("goim-nats history reads (JetStream)")
        .metadata(metadata)
        .queue_group(queue_group)
        .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| BusError(e.to_string()))?;
    let service = Arc::new(service);
    for (name, subject, kind) in [("get", GET, Kind::Get), ("info", INFO, Kind::Info), ("stats", STATS, Kind::Stats)] {
        let mut endpoint = service.endpoint_builder().name(name).add(subject).await.map_err(|e| BusError(e.to_string()))?;
        let history = history.clone();
        let client = client.clone();
        let keep = service.clone();
        tokio::spawn(async move {
            let _service = keep;
            while let Some(request) = endpoint.next().await {
                let history = history.clone();
                let client = client.clone();
                // One task per request: a slow JetStream read must not hold up the others.
                tokio::spawn(async move {
                    let body = answer(&history, &client, kind, &request.message.payload).await;
                    if let Err(e) = request.respond(Ok(body)).await {
                        warn!(error = %e, "cannot answer a history request");
                    }
                });
            }
            debug!(subject, "history endpoint closed");
        });
    }
    Ok(())
}

async fn answer(history: &History, client: &async_nats::Client, kind: Kind, payload: &[u8]) -> Bytes {
    match kind {
        Kind::Info => serde_json::to_vec(&history.info()).unwrap_or_default().into(),
        Kind::Stats => serde_json::to_vec(&history.stats_json()).unwrap_or_default().into(),
        Kind::Get => {
            let max_payload = client.server_info().max_payload.max(64 * 1024);
            let max_bytes = max_payload.saturating_sub(ENVELOPE);
            // A body that is not even the request's JSON is a bad request whatever the token.
            let result = match NatsRequest::parse(payload) {
                Ok((token, params)) => history.read(token.as_deref(), Ok(params), max_bytes).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(page) => serde_json::to_vec(&page).unwrap_or_default().into(),
                Err(refusal) => refusal.nats_body().into(),
            }
        }
    }
}
