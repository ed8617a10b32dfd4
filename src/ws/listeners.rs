//! A socket's listeners: one flat list of typed, type-erased handlers.

use std::sync::Arc;

use serde_json::value::RawValue;

use super::close::CloseInfo;
use super::handler::DispatchOut;
use super::socket::{ErrorEvent, RawMessage, SocketError, LIFECYCLE_EVENTS};

/// Identifies one registered listener, for [`Socket::off`](super::Socket::off).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId(pub(crate) u64);

pub(crate) type Erased =
    Arc<dyn Fn(Option<&RawValue>, &str) -> Result<DispatchOut, String> + Send + Sync>;
pub(crate) type ErasedClose = Arc<dyn Fn(CloseInfo) -> DispatchOut + Send + Sync>;
pub(crate) type ErasedError = Arc<dyn Fn(ErrorEvent) -> DispatchOut + Send + Sync>;
pub(crate) type ErasedRaw = Arc<dyn Fn(RawMessage) -> DispatchOut + Send + Sync>;
/// A request handler: the answer to await, or why the payload does not fit.
pub(crate) type ErasedRequest = Arc<
    dyn Fn(Option<&RawValue>) -> Result<super::handler::BoxFuture<super::ack::Answer>, String>
        + Send
        + Sync,
>;

/// An event name, stored inline when short (most are), so a listener costs no extra
/// allocation for its name.
pub(crate) enum Name {
    Inline { len: u8, buf: [u8; 22] },
    Heap(Box<str>),
}

impl Name {
    pub(crate) fn new(s: &str) -> Self {
        let b = s.as_bytes();
        if b.len() <= 22 {
            let mut buf = [0u8; 22];
            buf[..b.len()].copy_from_slice(b);
            Name::Inline {
                len: b.len() as u8,
                buf,
            }
        } else {
            Name::Heap(s.into())
        }
    }
    fn as_bytes(&self) -> &[u8] {
        match self {
            Name::Inline { len, buf } => &buf[..usize::from(*len)],
            Name::Heap(s) => s.as_bytes(),
        }
    }
}

pub(crate) enum Kind {
    Event(Name, Erased),
    Request(Name, ErasedRequest),
    Close(ErasedClose),
    Error(ErasedError),
    Raw(ErasedRaw),
}

impl Kind {
    /// A message listener for `event`.
    pub(crate) fn event(event: &str, h: Erased) -> Self {
        Kind::Event(Name::new(event), h)
    }

    /// The name `on()`/`off()` use for this listener.
    fn name(&self) -> &[u8] {
        match self {
            Kind::Event(n, _) => n.as_bytes(),
            // apart from the event's listeners: `on` and `on_request` count separately
            Kind::Request(..) => b"",
            Kind::Close(_) => b"close",
            Kind::Error(_) => b"error",
            Kind::Raw(_) => b"raw",
        }
    }
}

/// Every listener of a socket in one flat list, in registration order. One small
/// allocation per socket (a map plus a vector per event cost several); sockets have a
/// handful of listeners, so a linear scan is as fast as a lookup.
#[derive(Default)]
pub(crate) struct Listeners {
    next_id: u64,
    entries: Vec<(ListenerId, Kind)>,
}

impl Listeners {
    /// Register `kind`; with a `limit`, refused once its event has that many listeners.
    pub(crate) fn add(
        &mut self,
        kind: Kind,
        limit: Option<usize>,
    ) -> Result<ListenerId, SocketError> {
        if let Some(limit) = limit {
            let name = kind.name();
            if self
                .entries
                .iter()
                .filter(|(_, k)| k.name() == name)
                .count()
                >= limit
            {
                return Err(SocketError::TooManyListeners {
                    event: String::from_utf8_lossy(name).into_owned(),
                    limit,
                });
            }
        }
        self.next_id += 1;
        let id = ListenerId(self.next_id);
        self.entries.push((id, kind));
        Ok(id)
    }

    /// Remove listener `id` of `event`; whether it was there.
    pub(crate) fn remove(&mut self, event: &str, id: ListenerId) -> bool {
        let before = self.entries.len();
        self.entries
            .retain(|(i, k)| !(*i == id && k.name() == event.as_bytes()));
        self.entries.len() != before
    }

    /// Listeners of `name`.
    pub(crate) fn count(&self, name: &str) -> usize {
        self.entries
            .iter()
            .filter(|(_, k)| k.name() == name.as_bytes())
            .count()
    }

    /// Trim storage to its length.
    pub(crate) fn compact(&mut self) {
        self.entries.shrink_to_fit();
    }

    /// Handlers for one incoming envelope, in registration order: the event's own
    /// handlers, then `*` handlers. An envelope named `*` or like a lifecycle event gets
    /// only `*` handlers (`on` refuses lifecycle names; the check here keeps it so).
    pub(crate) fn for_event(&self, event: &str) -> (Vec<Erased>, Vec<Erased>) {
        let lifecycle = LIFECYCLE_EVENTS.contains(&event) || event == "*";
        let mut own = Vec::new();
        let mut wild = Vec::new();
        for (_, k) in &self.entries {
            if let Kind::Event(name, h) = k {
                if name.as_bytes() == b"*" {
                    wild.push(h.clone());
                } else if !lifecycle && name.as_bytes() == event.as_bytes() {
                    own.push(h.clone());
                }
            }
        }
        (own, wild)
    }

    /// Whether `event` has a request handler.
    pub(crate) fn has_request(&self, event: &str) -> bool {
        self.request(event).is_some()
    }

    /// The request handler of `event`.
    pub(crate) fn request(&self, event: &str) -> Option<ErasedRequest> {
        self.entries.iter().find_map(|(_, k)| match k {
            Kind::Request(name, h) if name.as_bytes() == event.as_bytes() => Some(h.clone()),
            _ => None,
        })
    }

    /// Remove `event`'s request handler; whether it had one.
    pub(crate) fn remove_request(&mut self, event: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(
            |(_, k)| !matches!(k, Kind::Request(name, _) if name.as_bytes() == event.as_bytes()),
        );
        self.entries.len() != before
    }

    /// The raw handlers, in order.
    pub(crate) fn raw(&self) -> Vec<ErasedRaw> {
        self.entries
            .iter()
            .filter_map(|(_, k)| match k {
                Kind::Raw(h) => Some(h.clone()),
                _ => None,
            })
            .collect()
    }

    /// The error handlers, in order.
    pub(crate) fn errors(&self) -> Vec<ErasedError> {
        self.entries
            .iter()
            .filter_map(|(_, k)| match k {
                Kind::Error(h) => Some(h.clone()),
                _ => None,
            })
            .collect()
    }

    /// The close handlers, in order (the rest are dropped).
    pub(crate) fn into_closers(self) -> impl Iterator<Item = ErasedClose> {
        self.entries.into_iter().filter_map(|(_, k)| match k {
            Kind::Close(h) => Some(h),
            _ => None,
        })
    }
}
