//! Who may join which room through the client protocol: the hooks given to
//! [`Rooms::authorize`](super::Rooms::authorize).

use std::sync::{Arc, RwLock};

use crate::ws::Socket;

type Authorize = Arc<dyn Fn(&Socket, &str, &str) -> bool + Send + Sync>;

/// Every hook given to [`Rooms::authorize`](super::Rooms::authorize), in order (shared
/// with readers: checking a join clones one `Arc`).
pub(super) struct Authorizer {
    hooks: RwLock<Arc<[Authorize]>>,
}

impl Default for Authorizer {
    fn default() -> Self {
        Self {
            hooks: RwLock::new(Arc::new([])),
        }
    }
}

impl Authorizer {
    /// Add a hook after the others.
    pub(super) fn add(&self, hook: impl Fn(&Socket, &str, &str) -> bool + Send + Sync + 'static) {
        let mut all = self.hooks.write().unwrap_or_else(|p| p.into_inner());
        let hook: Authorize = Arc::new(hook);
        *all = all.iter().cloned().chain([hook]).collect();
    }

    /// Whether `member` may join `room` on `socket`.
    pub(super) fn allows(&self, socket: &Socket, room: &str, member: &str) -> bool {
        let hooks = self.hooks.read().unwrap_or_else(|p| p.into_inner()).clone();
        // Closed without a hook; with hooks, every one must allow.
        !hooks.is_empty()
            && hooks.iter().all(|h| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h(socket, room, member)))
                    .unwrap_or(false)
            })
    }
}
