//! Chainable setters of the option structs.
//!
//! Every option struct is `#[non_exhaustive]`, so that adding an option is not a breaking
//! change: outside this crate they cannot be built with a struct literal. They are built
//! from their `Default` and a `with_<field>` setter per field instead, all generated here
//! by `options!`. Their fields stay public: they can be read, and set in place
//! (`let mut o = WsOptions::default(); o.max_connections = 10;`).

use std::sync::Arc;
use std::time::Duration;

use crate::app::AppOptions;
use crate::cluster::Broker;
use crate::net::TrustedProxies;
use crate::rooms::{ClientPolicy, PublishOptions, RoomsOptions};
use crate::sse::SseOptions;
use crate::ws::{CapacityPolicy, Frames, SocketId, WsOptions};

/// An `impl` block of chainable setters for an option struct. For each
/// `with_field => field: Type`, a `pub fn with_field(mut self, value: Type) -> Self`
/// documented "Set [`field`](Struct::field)."; for `with_field => field: into Type`, the
/// same taking `value: impl Into<Type>` (used for `String`s, to let `&str` in; numbers,
/// `Option`s, `Duration`s and enums take their own type, where `Into` would defeat the
/// inference of integer literals and `Some(..)`). The setter's name is spelled out because
/// `macro_rules!` cannot build identifiers. Attributes before a field (a `cfg`) go to its
/// setter; doc comments before the struct's name go to the `impl` block.
///
/// ```ignore
/// options! {
///     /// Docs of the impl block.
///     WsOptions {
///         with_path => path: into String,
///         with_max_connections => max_connections: usize,
///         #[cfg(feature = "tls")]
///         with_tls => tls: Option<TlsConfig>,
///     }
/// }
/// ```
macro_rules! options {
    ($(#[$doc:meta])* $S:ident { $($fields:tt)* }) => {
        $(#[$doc])*
        impl $S {
            options!(@setters $S; $($fields)*);
        }
    };
    (@setters $S:ident;) => {};
    (@setters $S:ident;
        $(#[$a:meta])* $with:ident => $f:ident: into $t:ty $(, $($rest:tt)*)?
    ) => {
        #[doc = concat!("Set [`", stringify!($f), "`](", stringify!($S), "::", stringify!($f), ").")]
        $(#[$a])*
        #[must_use]
        pub fn $with(mut self, value: impl Into<$t>) -> Self {
            self.$f = value.into();
            self
        }
        options!(@setters $S; $($($rest)*)?);
    };
    (@setters $S:ident;
        $(#[$a:meta])* $with:ident => $f:ident: $t:ty $(, $($rest:tt)*)?
    ) => {
        #[doc = concat!("Set [`", stringify!($f), "`](", stringify!($S), "::", stringify!($f), ").")]
        $(#[$a])*
        #[must_use]
        pub fn $with(mut self, value: $t) -> Self {
            self.$f = value;
            self
        }
        options!(@setters $S; $($($rest)*)?);
    };
}

options! {
    /// Chainable setters: the struct is `#[non_exhaustive]`, so outside this crate it is
    /// built from its default. The fields stay public, to read or to set in place
    /// (`let mut o = WsOptions::default(); o.max_connections = 10_000;`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use street::ws::WsOptions;
    ///
    /// let opts = WsOptions::default()
    ///     .with_path("/ws")
    ///     .with_heartbeat_interval(Duration::from_secs(30))
    ///     .with_max_connections(10_000);
    /// assert_eq!(opts.max_connections, 10_000);
    /// assert_eq!(opts.max_payload, 512 * 1024);
    /// ```
    WsOptions {
        with_path => path: into String,
        with_heartbeat_interval => heartbeat_interval: Duration,
        with_max_connections => max_connections: usize,
        with_capacity_policy => capacity_policy: CapacityPolicy,
        with_max_payload => max_payload: usize,
        with_max_queue_bytes => max_queue_bytes: usize,
        with_max_listeners => max_listeners: usize,
        with_frames => frames: Frames,
        with_allowed_origins => allowed_origins: Vec<String>,
        with_close_timeout => close_timeout: Duration,
        with_shutdown_timeout => shutdown_timeout: Duration,
        with_max_messages_per_sec => max_messages_per_sec: u32,
        with_max_bytes_per_sec => max_bytes_per_sec: u32,
        with_max_connections_per_ip => max_connections_per_ip: u32,
        with_max_handshakes_per_ip_per_sec => max_handshakes_per_ip_per_sec: u32,
        with_first_message_timeout => first_message_timeout: Option<Duration>,
        with_send_buffer_bytes => send_buffer_bytes: Option<usize>,
        with_reconnect_hint => reconnect_hint: Option<Duration>,
        with_compression => compression: Option<crate::ws::Compression>,
        with_request_timeout => request_timeout: Duration,
        with_max_pending_acks => max_pending_acks: usize,
        with_expiry_grace => expiry_grace: Duration,
        with_ping_envelopes => ping_envelopes: bool,
    }
}

options! {
    /// Chainable setters: the struct is `#[non_exhaustive]`, so outside this crate it is
    /// built from its default (or [`AppOptions::from_env`]). The fields stay public, to
    /// read or to set in place (`let mut o = AppOptions::default(); o.port = 8080;`).
    ///
    /// ```
    /// let opts = street::AppOptions::default()
    ///     .with_port(8080)
    ///     .with_max_connections(10_000);
    /// assert_eq!(opts.port, 8080);
    /// assert_eq!(opts.host, "0.0.0.0");
    /// ```
    AppOptions {
        with_port => port: u16,
        with_host => host: into String,
        with_max_connections => max_connections: usize,
        with_header_read_timeout => header_read_timeout: Duration,
        with_max_header_bytes => max_header_bytes: usize,
        with_max_headers => max_headers: usize,
        with_backlog => backlog: u32,
        with_shutdown_timeout => shutdown_timeout: Duration,
        with_max_sse_streams => max_sse_streams: usize,
        with_max_connections_per_ip => max_connections_per_ip: u32,
        with_max_sse_streams_per_ip => max_sse_streams_per_ip: u32,
        with_max_body_bytes => max_body_bytes: usize,
        with_body_read_timeout => body_read_timeout: Duration,
        with_trusted_proxies => trusted_proxies: TrustedProxies,
        with_proxy_protocol => proxy_protocol: bool,
        #[cfg(feature = "tls")]
        #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
        with_tls => tls: Option<crate::tls::TlsConfig>,
    }
}

options! {
    /// Chainable setters: the struct is `#[non_exhaustive]`, so outside this crate it is
    /// built from its default. The fields stay public, to read or to set in place
    /// (`let mut o = RoomsOptions::default(); o.max_rooms = 1_000;`).
    ///
    /// ```
    /// use street::rooms::{ClientPolicy, RoomsOptions};
    ///
    /// let opts = RoomsOptions::default()
    ///     .with_max_rooms(1_000)
    ///     .with_client_protocol(true)
    ///     .with_client(ClientPolicy::default().with_max_publish_bytes(4096));
    /// assert_eq!(opts.max_rooms, 1_000);
    /// assert_eq!(opts.client.max_publish_bytes, 4096);
    /// ```
    RoomsOptions {
        with_broker => broker: Option<Arc<dyn Broker>>,
        with_node_id => node_id: Option<String>,
        with_typing_ttl => typing_ttl: Option<Duration>,
        with_max_name_bytes => max_name_bytes: usize,
        with_max_rooms_per_socket => max_rooms_per_socket: usize,
        with_max_rooms => max_rooms: usize,
        with_max_rooms_per_ip => max_rooms_per_ip: usize,
        with_client_protocol => client_protocol: bool,
        with_client => client: ClientPolicy,
    }
}

options! {
    /// Chainable setters: the struct is `#[non_exhaustive]`, so outside this crate it is
    /// built from its default, [`PublishOptions::except_socket`] or
    /// [`PublishOptions::except_member`]. The fields stay public, to read or to set in
    /// place.
    ///
    /// ```
    /// use street::rooms::PublishOptions;
    ///
    /// let opts = PublishOptions::default().with_except_member(Some("u1".into()));
    /// assert_eq!(opts, PublishOptions::except_member("u1"));
    /// ```
    PublishOptions {
        with_except_socket => except_socket: Option<SocketId>,
        with_except_member => except_member: Option<String>,
    }
}

options! {
    /// Chainable setters: the struct is `#[non_exhaustive]`, so outside this crate it is
    /// built from its default. The fields stay public, to read or to set in place
    /// (`let mut p = ClientPolicy::default(); p.actions_per_sec = 5;`).
    ///
    /// ```
    /// use street::rooms::ClientPolicy;
    ///
    /// let policy = ClientPolicy::default()
    ///     .with_publishable_events(vec!["message".into(), "reaction".into()])
    ///     .with_publish_messages_per_sec(5);
    /// assert_eq!(policy.publish_messages_per_sec, 5);
    /// ```
    ClientPolicy {
        with_publishable_events => publishable_events: Vec<String>,
        with_max_publish_bytes => max_publish_bytes: usize,
        with_publish_messages_per_sec => publish_messages_per_sec: u32,
        with_publish_bytes_per_sec => publish_bytes_per_sec: u32,
        with_room_messages_per_sec => room_messages_per_sec: u32,
        with_room_bytes_per_sec => room_bytes_per_sec: u32,
        with_actions_per_sec => actions_per_sec: u32,
    }
}

#[cfg(feature = "redis")]
use crate::cluster::redis::RedisOptions;

#[cfg(feature = "redis")]
options! {
    /// Chainable setters: the struct is `#[non_exhaustive]`, so outside this crate it is
    /// built from its default or [`RedisOptions::url`]. The fields stay public, to read or
    /// to set in place (`let mut o = RedisOptions::default(); o.liveness = 5;`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use street::cluster::redis::RedisOptions;
    ///
    /// let opts = RedisOptions::url("redis://10.0.0.5:6379")
    ///     .with_prefix("chat")
    ///     .with_heartbeat(Duration::from_millis(500));
    /// assert_eq!(opts.prefix, "chat");
    /// assert_eq!(opts.liveness, 3);
    /// ```
    RedisOptions {
        with_url => url: into String,
        with_prefix => prefix: into String,
        with_heartbeat => heartbeat: Duration,
        with_liveness => liveness: u32,
        with_require_at_start => require_at_start: bool,
        with_max_queue => max_queue: usize,
        with_max_queue_bytes => max_queue_bytes: usize,
        with_response_timeout => response_timeout: Duration,
        #[cfg(feature = "tls")]
        #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
        with_tls_ca_pem => tls_ca_pem: Option<Vec<u8>>,
    }
}

#[cfg(feature = "nats")]
use crate::cluster::nats::{HistoryStorage, NatsOptions};

#[cfg(feature = "nats")]
options! {
    /// Chainable setters: the struct is `#[non_exhaustive]`, so outside this crate it is
    /// built from its default or [`NatsOptions::url`]. The fields stay public, to read or
    /// to set in place (`let mut o = NatsOptions::default(); o.liveness = 5;`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use street::cluster::nats::{HistoryStorage, NatsOptions};
    ///
    /// let opts = NatsOptions::url("nats://10.0.0.5:4222")
    ///     .with_prefix("chat")
    ///     .with_history_storage(HistoryStorage::Memory);
    /// assert_eq!(opts.prefix, "chat");
    /// assert_eq!(opts.heartbeat, Duration::from_secs(1));
    /// ```
    NatsOptions {
        with_url => url: into String,
        with_prefix => prefix: into String,
        with_heartbeat => heartbeat: Duration,
        with_liveness => liveness: u32,
        with_require_at_start => require_at_start: bool,
        with_max_queue => max_queue: usize,
        with_max_queue_bytes => max_queue_bytes: usize,
        with_response_timeout => response_timeout: Duration,
        with_jetstream => jetstream: bool,
        with_history_storage => history_storage: HistoryStorage,
        with_history_limits => history_limits: crate::cluster::HistoryOptions,
        with_history_max_bytes => history_max_bytes: u64,
    }
}

options! {
    /// Chainable setters: the struct is `#[non_exhaustive]`, so outside this crate it is
    /// built from its default. The fields stay public, to read or to set in place
    /// (`let mut o = SseOptions::default(); o.retry = None;`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use street::sse::SseOptions;
    ///
    /// let opts = SseOptions::default()
    ///     .with_heartbeat(Duration::from_secs(5))
    ///     .with_retry(Some(Duration::from_secs(2)));
    /// assert_eq!(opts.max_queue_bytes, 256 * 1024);
    /// ```
    SseOptions {
        with_heartbeat => heartbeat: Duration,
        with_max_queue_bytes => max_queue_bytes: usize,
        with_retry => retry: Option<Duration>,
    }
}

#[cfg(feature = "jwt")]
use crate::jwt::JwtOptions;

#[cfg(feature = "jwt")]
options! {
    /// Chainable setters: the struct is `#[non_exhaustive]`, so outside this crate it is
    /// built from its default. The fields stay public, to read or to set in place
    /// (`let mut o = JwtOptions::default(); o.leeway = Duration::from_secs(5);`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use street::jwt::JwtOptions;
    ///
    /// let opts = JwtOptions::default()
    ///     .with_secret(Some("a-very-long-test-secret".into()))
    ///     .with_leeway(Duration::from_secs(5));
    /// assert_eq!(opts.expires_in, Duration::from_secs(3600));
    /// ```
    JwtOptions {
        with_secret => secret: Option<String>,
        with_expires_in => expires_in: Duration,
        with_leeway => leeway: Duration,
    }
}
