//! Request bodies under a deadline: a client that trickles a body cannot hold a
//! connection (and its slot under the app's cap) for longer than the app allows.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::HttpCounters;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body did not arrive within [`AppOptions::body_read_timeout`](crate::AppOptions).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("request body not received within the read timeout")]
pub struct BodyTimeout;

/// A request body that fails with [`BodyTimeout`] once its deadline passes, and counts
/// bodies that go over the size limit (the limit itself is `http_body_util::Limited`'s,
/// whose error axum's extractors answer with 413).
pub(crate) struct DeadlineBody<B> {
    inner: B,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    timeout: Duration,
    seen: usize,
    max: usize,
    counters: Arc<HttpCounters>,
}

impl<B> DeadlineBody<B> {
    pub(crate) fn new(
        inner: B,
        timeout: Duration,
        max: usize,
        counters: Arc<HttpCounters>,
    ) -> Self {
        Self {
            inner,
            deadline: None,
            timeout,
            seen: 0,
            max,
            counters,
        }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(r) = Pin::new(&mut this.inner).poll_frame(cx) {
            if let Some(Ok(f)) = &r {
                if let Some(d) = f.data_ref() {
                    let before = this.seen;
                    this.seen = this.seen.saturating_add(d.len());
                    if before <= this.max && this.seen > this.max {
                        this.counters.body_too_large.inc();
                    }
                }
            }
            return Poll::Ready(r.map(|f| f.map_err(Into::into)));
        }
        // The clock starts at the first read, so a handler that never reads pays nothing.
        let timeout = this.timeout;
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if deadline.as_mut().poll(cx).is_ready() {
            this.counters.body_timeout.inc();
            // the body ends here: hyper closes the connection after the response
            return Poll::Ready(Some(Err(BodyTimeout.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
