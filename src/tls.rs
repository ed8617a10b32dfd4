//! TLS in-process with rustls (feature `tls`): `wss://` and `https://` on one port.
//!
//! [`TlsConfig`] reads a PEM certificate chain and private key, and can [reload](TlsConfig::reload)
//! them without a restart (new connections get the new certificate; open ones keep
//! theirs). Use it two ways:
//! - street's listener: [`AppOptions::tls`](crate::AppOptions::tls). The handshake runs
//!   per connection under `header_read_timeout`, after the PROXY header and the
//!   per-address gate, so a client that never finishes it holds one slot for a bounded
//!   time and never blocks the accept loop;
//! - your own `axum::serve`: [`TlsListener`], an `axum::serve::Listener` that runs the
//!   handshakes beside the accept loop.
//!
//! WebSockets over TLS take street's generic transport (see `ws/transport.rs`): the
//! same limits, heartbeat and close handshake as over plain TCP. Protocols: TLS 1.2 and
//! 1.3 (rustls's safe defaults, *ring* provider); ALPN `http/1.1`.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let tls = street::tls::TlsConfig::from_pem_files("cert.pem", "key.pem")?;
//! let opts = street::AppOptions::default().with_port(8443).with_tls(Some(tls.clone()));
//! // e.g. on SIGHUP, after certbot renewed the files:
//! tls.reload()?;
//! # Ok(()) }
//! ```

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or holds no valid PEM.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("no certificate in {}", .0.display())]
    NoCertificate(PathBuf),
    /// The key is not a supported private key, or does not match the certificate.
    #[error("unusable private key: {0}")]
    Key(#[source] rustls::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[source] rustls::Error),
}

/// A server certificate and key from PEM files, reloadable. Cheap to clone (clones
/// share the certificate, so a reload reaches every listener using it).
#[derive(Clone)]
pub struct TlsConfig {
    inner: Arc<Inner>,
}

struct Inner {
    cert_path: PathBuf,
    key_path: PathBuf,
    resolver: Arc<Resolver>,
    server: Arc<rustls::ServerConfig>,
    stats: TlsCounters,
}

#[derive(Default)]
struct TlsCounters {
    handshakes: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    refused_per_ip: AtomicU64,
    reloads: AtomicU64,
}

/// TLS handshake counters (see [`TlsConfig::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsStats {
    /// Handshakes completed.
    pub handshakes: u64,
    /// Handshakes that failed (not TLS, no shared cipher, an unknown certificate on the
    /// client's side): the connection was closed.
    pub failed: u64,
    /// Handshakes not finished in time: the connection was closed.
    pub timed_out: u64,
    /// Connections a [`TlsListener`] closed before any handshake because their address
    /// already had `max_handshakes_per_ip` handshakes under way.
    pub refused_per_ip: u64,
    /// Successful [`TlsConfig::reload`]s.
    pub reloads: u64,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("cert", &self.inner.cert_path)
            .field("key", &self.inner.key_path)
            .finish_non_exhaustive()
    }
}

/// Hands every handshake the current certificate.
#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    fn read(path: &Path) -> impl Fn(rustls_pki_types::pem::Error) -> TlsError + '_ {
        move |source| TlsError::Read {
            path: path.to_owned(),
            source,
        }
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(read(cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read(cert))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(read(key))?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(TlsError::Key)?;
    Ok(Arc::new(certified))
}

impl TlsConfig {
    /// Read a certificate chain (PEM, leaf first) and its private key (PEM: PKCS#8,
    /// PKCS#1 or SEC1).
    ///
    /// # Errors
    /// [`TlsError`] when a file cannot be read, holds no certificate, or the key does not
    /// fit the certificate.
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, TlsError> {
        let (cert, key) = (cert.as_ref().to_owned(), key.as_ref().to_owned());
        let resolver = Arc::new(Resolver {
            current: RwLock::new(load(&cert, &key)?),
        });
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            inner: Arc::new(Inner {
                cert_path: cert,
                key_path: key,
                resolver,
                server: Arc::new(server),
                stats: TlsCounters::default(),
            }),
        })
    }

    /// Read the certificate and key files again: new handshakes use them, open
    /// connections keep theirs. On error the current certificate stays.
    ///
    /// # Errors
    /// As [`TlsConfig::from_pem_files`].
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = load(&self.inner.cert_path, &self.inner.key_path)?;
        *self
            .inner
            .resolver
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = fresh;
        self.inner.stats.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(cert = %self.inner.cert_path.display(), "TLS certificate reloaded");
        Ok(())
    }

    /// The handshake counters.
    pub fn stats(&self) -> TlsStats {
        let s = &self.inner.stats;
        TlsStats {
            handshakes: s.handshakes.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            timed_out: s.timed_out.load(Ordering::Relaxed),
            refused_per_ip: s.refused_per_ip.load(Ordering::Relaxed),
            reloads: s.reloads.load(Ordering::Relaxed),
        }
    }

    /// The rustls server configuration (for a server of your own).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.inner.server.clone()
    }

    /// Run the server side of a handshake on `stream`, bounded by `timeout`; counted.
    pub(crate) async fn accept<IO>(
        &self,
        stream: IO,
        timeout: Duration,
        peer: SocketAddr,
    ) -> Option<tokio_rustls::server::TlsStream<IO>>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.inner.server.clone());
        let s = &self.inner.stats;
        match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => {
                s.handshakes.fetch_add(1, Ordering::Relaxed);
                Some(tls)
            }
            Ok(Err(e)) => {
                s.failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, %peer, "TLS handshake failed");
                None
            }
            Err(_) => {
                s.timed_out.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "TLS handshake timed out");
                None
            }
        }
    }
}

/// Default of the most handshakes a [`TlsListener`] runs at once; more connections wait in
/// the kernel's backlog.
pub const MAX_HANDSHAKES: usize = 512;
/// Default of the most handshakes from one address (IPv6: one /64) a [`TlsListener`] runs
/// at once; one more connection from it is closed at once (counted in
/// [`TlsStats::refused_per_ip`]).
pub const MAX_HANDSHAKES_PER_IP: u32 = 16;

/// An `axum::serve::Listener` over TLS, for street inside your own `axum::serve`.
/// Handshakes run in tasks of their own, each bounded by the timeout: at most
/// [`MAX_HANDSHAKES`] at once, and at most [`MAX_HANDSHAKES_PER_IP`] from one address, so
/// one address that opens connections and stalls their handshakes cannot take every
/// handshake slot (it would take 32 addresses, each holding its slots for the whole
/// timeout; keep the timeout short). For per-address limits on whole connections, use
/// [`AppOptions::tls`](crate::AppOptions::tls) on street's own listener, which gates
/// before the handshake with `max_connections_per_ip`.
///
/// axum gives `ConnectInfo<SocketAddr>` to listeners wrapped by `tap_io`, hence the
/// no-op tap below (street's per-address limits need the address):
///
/// ```no_run
/// use std::net::SocketAddr;
/// use axum::serve::ListenerExt;
/// # async fn run(app: axum::Router) -> Result<(), Box<dyn std::error::Error>> {
/// let tls = street::tls::TlsConfig::from_pem_files("cert.pem", "key.pem")?;
/// let tcp = tokio::net::TcpListener::bind("0.0.0.0:8443").await?;
/// let listener = street::tls::TlsListener::new(tcp, tls, std::time::Duration::from_secs(10))
///     .tap_io(|_| {});
/// axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TlsListener {
    local: io::Result<SocketAddr>,
    ready: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    _accepting: AbortOnDrop,
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl TlsListener {
    /// Accept TLS connections on `listener`; `handshake_timeout` bounds each handshake.
    /// The default limits: [`MAX_HANDSHAKES`], [`MAX_HANDSHAKES_PER_IP`]. Must be called
    /// inside a Tokio runtime.
    pub fn new(listener: TcpListener, config: TlsConfig, handshake_timeout: Duration) -> Self {
        Self::with_limits(
            listener,
            config,
            handshake_timeout,
            MAX_HANDSHAKES,
            MAX_HANDSHAKES_PER_IP,
        )
    }

    /// [`TlsListener::new`] with its limits: handshakes at once (at least 1), and from one
    /// address (0: no per-address limit).
    pub fn with_limits(
        listener: TcpListener,
        config: TlsConfig,
        handshake_timeout: Duration,
        max_handshakes: usize,
        max_handshakes_per_ip: u32,
    ) -> Self {
        let local = listener.local_addr();
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let slots = Arc::new(tokio::sync::Semaphore::new(
            max_handshakes.clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
        ));
        let per_ip = crate::net::per_ip::PerIp::new(max_handshakes_per_ip, 0);
        let accepting = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(10);
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (stream, peer) = match listener.accept().await {
                    Ok(x) => {
                        backoff = Duration::from_millis(10);
                        x
                    }
                    Err(e) if crate::app::is_per_connection(&e) => continue,
                    Err(e) => {
                        // e.g. out of file descriptors: back off rather than spin
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                };
                let Ok(ip_slot) = per_ip.admit(peer.ip(), std::time::Instant::now()) else {
                    config
                        .inner
                        .stats
                        .refused_per_ip
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "too many TLS handshakes from this address: closed");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (config, tx) = (config.clone(), tx.clone());
                tokio::spawn(async move {
                    let tls = config.accept(stream, handshake_timeout, peer).await;
                    drop(ip_slot);
                    if let Some(tls) = tls {
                        let _ = tx.send((tls, peer)).await;
                    }
                    // held until the stream is handed over: waiting streams count too
                    drop(slot);
                });
            }
        });
        Self {
            local,
            ready,
            _accepting: AbortOnDrop(accepting),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(x) => x,
            // the accept task ended (its runtime is going away): nothing more will come
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.local {
            Ok(a) => Ok(*a),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        }
    }
}
