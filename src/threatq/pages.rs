//! Paging a collection with several requests in flight: the window of outstanding requests (it halves on 429,
//! 503 and timeouts and grows back by one per clean page), and the pager that keeps pages in ThreatQ's order,
//! so that the rows equal those of a one-at-a-time run.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures::stream::FuturesOrdered;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use super::{Error, Indicator};

/// One page of a collection, with the collection's size as ThreatQ gave it on that page. Its indicators are
/// what the caller made of them on the task that read the page (owned [`Indicator`]s unless told otherwise).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch<P = Vec<Indicator>> {
    pub indicators: P,
    /// `total` of the answer, when ThreatQ sends it (it does); the progress bar's length.
    pub total: Option<u64>,
    pub(super) tally: Tally,
}

/// What the pager and the shift checks need of a page's indicators, whatever they were made into.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Tally {
    pub(super) count: usize,
    pub(super) first_id: Option<u64>,
    pub(super) last_id: Option<u64>,
    /// The first indicator whose value is longer than a row carries: `(id, bytes)`.
    pub(super) oversized: Option<(u64, usize)>,
}

impl Tally {
    pub(super) fn note(&mut self, id: u64, value_bytes: usize, max_value_bytes: usize) {
        self.count += 1;
        self.first_id.get_or_insert(id);
        self.last_id = Some(id);
        if self.oversized.is_none() && value_bytes > max_value_bytes {
            self.oversized = Some((id, value_bytes));
        }
    }
}

/// How many page requests may be outstanding: additive increase, multiplicative decrease.
#[derive(Debug)]
pub struct Window {
    max: u32,
    state: Mutex<WindowState>,
}

#[derive(Debug)]
struct WindowState {
    limit: u32,
    /// No new request before this (a `Retry-After`).
    resume_at: Option<Instant>,
}

impl Window {
    /// A window of `max` (1..16 from the UI; at least 1), starting wide open.
    pub fn new(max: u32) -> Window {
        let max = max.max(1);
        Window { max, state: Mutex::new(WindowState { limit: max, resume_at: None }) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, WindowState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Requests allowed in flight now.
    pub fn limit(&self) -> u32 {
        self.state().limit
    }

    /// ThreatQ is overloaded (429, 503, a timeout): halve, and send nothing new before `retry_after` passes.
    pub fn congested(&self, retry_after: Option<Duration>) {
        let mut state = self.state();
        state.limit = (state.limit / 2).max(1);
        if let Some(wait) = retry_after {
            let until = Instant::now() + wait;
            state.resume_at = Some(state.resume_at.map_or(until, |at| at.max(until)));
        }
        tracing::debug!(limit = state.limit, "ThreatQ is overloaded: fewer page requests in flight");
    }

    /// A page came back at the first try: one more request may be in flight, up to the UI's maximum.
    pub fn clean(&self) {
        let mut state = self.state();
        state.limit = (state.limit + 1).min(self.max);
    }

    /// When new requests may start again, if they must wait.
    fn paused_until(&self) -> Option<Instant> {
        let mut state = self.state();
        match state.resume_at {
            Some(at) if at > Instant::now() => Some(at),
            _ => {
                state.resume_at = None;
                None
            }
        }
    }
}

/// Fetches the page at `offset` with `limit` rows.
pub(super) trait FetchPage: Clone + Send + Sync + 'static {
    /// What a page's indicators are made into.
    type Page: Send + 'static;
    fn fetch(&self, offset: u64) -> impl Future<Output = Result<Batch<Self::Page>, Error>> + Send + 'static;
}

/// Pages fetched ahead of the consumer, beyond those in flight: enough to keep mapping busy while the next
/// ones are on the wire, few enough that memory stays at a handful of pages.
const READY_PAGES: usize = 2;

/// The pages of a collection in ThreatQ's order, with up to `window.limit()` requests outstanding, fetched by a
/// task of their own so that the consumer's work overlaps the requests. Page `n` is asked at the offset where
/// page `n - 1` ended (`stride` rows a page); a short page that is not the last means the server pages
/// otherwise, and the requests after it are asked again from where it ended. Ends, as a sequential run does, at
/// an empty page or once `offset >= total`. Whether the collection shifted under the pager is the caller's
/// check, on the pages in this order ([`super::Client::pages`]).
pub(super) fn in_order<F: FetchPage>(
    fetcher: F,
    stride: u64,
    window: std::sync::Arc<Window>,
) -> impl Stream<Item = Result<Batch<F::Page>, Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel(READY_PAGES);
    let driver = AbortOnDropHandle::new(tokio::spawn(drive(fetcher, stride, window, tx)));
    futures::stream::unfold(
        (rx, driver),
        |(mut rx, driver)| async move { rx.recv().await.map(|page| (page, (rx, driver))) },
    )
}

async fn drive<F: FetchPage>(
    fetcher: F,
    mut stride: u64,
    window: std::sync::Arc<Window>,
    tx: mpsc::Sender<Result<Batch<F::Page>, Error>>,
) {
    let stride_of = |n: usize| (n as u64).max(1);
    // Offsets of the requests in flight, in order, each with its task; the front is the next page to pass on.
    let mut in_flight = FuturesOrdered::new();
    let mut next_offset = 0u64;
    let mut end: Option<u64> = None;
    let mut started = false;
    loop {
        let paused = window.paused_until();
        // Before the first answer the size is unknown: one request; then as many as the window allows.
        while paused.is_none()
            && in_flight.len() < window.limit() as usize
            && (!started || end.is_some_and(|end| next_offset < end))
        {
            let offset = next_offset;
            let task = AbortOnDropHandle::new(tokio::spawn(fetcher.fetch(offset)));
            in_flight.push_back(async move { (offset, task.await) });
            next_offset += stride;
            started = true;
        }
        let (offset, joined) = tokio::select! {
            done = in_flight.next(), if !in_flight.is_empty() => done.expect("not empty"),
            () = tokio::time::sleep_until(paused.unwrap_or_else(Instant::now)), if paused.is_some() => continue,
            else => return,
        };
        let batch = match joined {
            Ok(Ok(batch)) => batch,
            Ok(Err(e)) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
            // The tasks are only ever dropped, never cancelled: this is a panic, passed on.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let got = batch.tally.count;
        if got == 0 {
            break;
        }
        let next = offset + got as u64;
        let more = batch.total.is_none_or(|total| next < total);
        if !more {
            in_flight.clear();
        } else if batch.total.is_none() || got as u64 != stride {
            // The next pages were asked at the wrong offsets (or the size is unknown): ask again from here.
            in_flight.clear();
            stride = if batch.total.is_none() { stride } else { stride_of(got) };
            next_offset = next;
        }
        // Unknown size: one page at a time, each asked where the last ended.
        end = batch.total.or(more.then_some(next + 1));
        if tx.send(Ok(batch)).await.is_err() || !more {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_halves_and_grows_back_by_one_up_to_its_maximum() {
        let window = Window::new(8);
        assert_eq!(window.limit(), 8);
        window.congested(None);
        assert_eq!(window.limit(), 4);
        for _ in 0..5 {
            window.congested(None);
        }
        assert_eq!(window.limit(), 1);
        for expected in [2, 3, 4, 5, 6, 7, 8, 8] {
            window.clean();
            assert_eq!(window.limit(), expected);
        }
        assert_eq!(Window::new(0).limit(), 1);
    }

    #[tokio::test]
    async fn retry_after_pauses_new_requests() {
        let window = Window::new(4);
        window.congested(Some(Duration::from_secs(60)));
        assert!(window.paused_until().is_some_and(|at| at > Instant::now() + Duration::from_secs(59)));
        window.congested(Some(Duration::from_secs(1)));
        assert!(
            window.paused_until().is_some_and(|at| at > Instant::now() + Duration::from_secs(59)),
            "kept the later"
        );
        assert_eq!(Window::new(4).paused_until(), None);
    }
}
