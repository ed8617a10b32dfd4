//! The cluster's member list of a room, as joins send it in `room:joined`: asked of the
//! broker at most once per [`FRESH`] per room, whatever the number of joins. A crowd
//! that joins a big room at once (every client of a node that died, coming back on this
//! one) would otherwise each fetch the whole list: work in the square of the crowd, in
//! front of the history reads those joins wait for. The cost is a list up to `FRESH`
//! old (this node's own members are always added fresh).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a fetched member list is served.
pub(super) const FRESH: Duration = Duration::from_secs(1);

/// Entries kept before stale ones are swept.
const SWEEP_AT: usize = 1024;

type Slot = Arc<tokio::sync::Mutex<Option<(Instant, Arc<Vec<String>>)>>>;

#[derive(Default)]
pub(super) struct MemberCache {
    rooms: Mutex<HashMap<String, Slot>>,
}

impl MemberCache {
    /// `room`'s list: cached when fresh, else from `fetch` (one fetch per room at a
    /// time; the others wait for it and share its answer).
    pub(super) async fn get<F>(&self, room: &str, fetch: F) -> Arc<Vec<String>>
    where
        F: Future<Output = Vec<String>>,
    {
        let slot = {
            let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
            if rooms.len() >= SWEEP_AT {
                let now = Instant::now();
                rooms.retain(|_, s| {
                    s.try_lock().map_or(true, |v| {
                        v.as_ref()
                            .is_some_and(|(at, _)| now.duration_since(*at) < FRESH)
                    })
                });
            }
            rooms.entry(room.to_owned()).or_default().clone()
        };
        let mut cached = slot.lock().await;
        if let Some((at, list)) = cached.as_ref() {
            if at.elapsed() < FRESH {
                return list.clone();
            }
        }
        let list = Arc::new(fetch.await);
        *cached = Some((Instant::now(), list.clone()));
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_crowd_of_joins_fetches_once() {
        let cache = Arc::new(MemberCache::default());
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut joins = Vec::new();
        for _ in 0..100 {
            let (c, f) = (cache.clone(), fetches.clone());
            joins.push(tokio::spawn(async move {
                c.get("r", async {
                    f.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                    vec!["ana".to_owned()]
                })
                .await
            }));
        }
        for j in joins {
            assert_eq!(*j.await.expect("join"), vec!["ana".to_owned()]);
        }
        assert_eq!(fetches.load(Ordering::Relaxed), 1);
    }
}
