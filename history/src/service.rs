//! What the HTTP and NATS front doors share: authenticate, validate, authorize, find the stream,
//! read the page.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tracing::{debug, warn};

use crate::access::Access;
use crate::query::{Limits, PageDoc, RawParams, Refusal};
use crate::store::{ReadError, Reader};
use crate::streams::{Catalog, InfoDoc};

/// Counters (`GET /history/stats`, `history.stats`).
#[derive(Debug, Default, Serialize)]
pub struct Stats {
    pub reads: AtomicU64,
    pub messages: AtomicU64,
    pub refused_bad_request: AtomicU64,
    pub refused_unauthorized: AtomicU64,
    pub refused_forbidden: AtomicU64,
    pub refused_not_stored: AtomicU64,
    pub refused_too_large: AtomicU64,
    pub unavailable: AtomicU64,
    /// JetStream direct get requests made by reads.
    pub direct_gets: AtomicU64,
}

#[derive(Debug)]
pub struct History {
    pub access: Arc<Access>,
    pub catalog: Catalog,
    pub reader: Reader,
    pub limits: Limits,
    pub max_resume: u64,
    /// Reads running at once (`read.max_concurrent`); more wait.
    pub reads: tokio::sync::Semaphore,
    pub stats: Stats,
}

impl History {
    pub fn info(&self) -> InfoDoc {
        self.catalog.info(self.max_resume)
    }

    pub fn stats_json(&self) -> serde_json::Value {
        self.stats.direct_gets.store(self.reader.requests.load(Ordering::Relaxed), Ordering::Relaxed);
        serde_json::to_value(&self.stats).unwrap_or_default()
    }

    /// Serve one read: `credential` is the token or API key, `params` the raw parameters,
    /// `max_bytes` the largest page body the front door can carry.
    pub async fn read(&self, credential: Option<&str>, params: Result<RawParams, Refusal>, max_bytes: usize) -> Result<PageDoc, Refusal> {
        let result = self.read_inner(credential, params, max_bytes).await;
        let counter = match &result {
            Ok(page) => {
                self.stats.messages.fetch_add(page.messages.len() as u64, Ordering::Relaxed);
                &self.stats.reads
            }
            Err(Refusal::BadRequest(_)) => &self.stats.refused_bad_request,
            Err(Refusal::Unauthorized(_)) => &self.stats.refused_unauthorized,
            Err(Refusal::Forbidden(_)) => &self.stats.refused_forbidden,
            Err(Refusal::NotStored(_)) => &self.stats.refused_not_stored,
            Err(Refusal::TooLarge(_)) => &self.stats.refused_too_large,
            Err(Refusal::Unavailable(_)) => &self.stats.unavailable,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &result {
            debug!(status = e.status(), reason = %e, "history read refused");
        }
        result
    }

    async fn read_inner(&self, credential: Option<&str>, params: Result<RawParams, Refusal>, max_bytes: usize) -> Result<PageDoc, Refusal> {
        let caller = self.access.authenticate(credential)?;
        let req = params?.validate(self.limits)?;
        caller.authorize(&req.target)?;
        let subject = req.target.subject();
        let Some(stream) = self.catalog.stream_for(req.target.class(), &subject) else {
            return Err(Refusal::NotStored(format!("no history is kept for {subject}")));
        };
        let _permit = self.reads.acquire().await.map_err(|_| Refusal::Unavailable("shutting down".into()))?;
        let page = match req.after {
            Some(after) => self.reader.page_after(stream, &subject, after, req.limit, max_bytes).await,
            None => self.reader.page(stream, &subject, req.before, req.limit, max_bytes).await,
        };
        match page {
            Ok(page) => Ok(page.doc(&subject)),
            Err(ReadError::TooLarge(seq)) => Err(Refusal::TooLarge(format!(
                "message {seq} of {subject} is larger than a page may be here (read it over HTTP)"
            ))),
            Err(ReadError::Unavailable(e)) => {
                warn!(%subject, error = %e, "history read failed");
                Err(Refusal::Unavailable(e))
            }
        }
    }
}
