//! The listener and what guards each connection before and around HTTP
//! (docs/slow-clients.md):
//!
//! 1. accept: `server.max_connections_per_ip` ([`per_ip`]), refused at once with
//!    a 503 (plaintext) or a close (TLS, before any handshake work);
//! 2. TLS handshake (when configured), bounded by `server.client_header_timeout`;
//! 3. [`io::GuardedIo`]: a head timeout on every request of the connection, and
//!    the HTTP parser's own error answers turned into JSON with a request id;
//! 4. actix-http's HTTP/1.1 dispatcher with the application;
//! 5. [`body::middleware`] (outermost in the app): the request in flight, and
//!    `server.client_body_timeout` on its body.
//!
//! Built from actix-web's parts (actix-server, actix-http's h1 service) rather
//! than `HttpServer`, whose connections are plain `TcpStream`s with no way to put
//! a guard between them and the dispatcher.

pub mod body;
mod io;
mod per_ip;
mod refusal;
mod state;
mod stream;

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use actix_http::{HttpService, Request, Response};
use actix_service::{
    IntoServiceFactory, Service, ServiceFactory, ServiceFactoryExt as _, fn_service, map_config,
};
use actix_web::body::MessageBody;
use actix_web::dev::AppConfig;
use actix_web::rt::net::TcpStream;

use crate::config::ServerConfig;
use crate::policy::CidrList;

use self::io::GuardedIo;
use self::per_ip::{PerIpLimit, Permit};
use self::stream::Stream;

pub use self::body::is_timeout as is_body_timeout;

/// What every connection of every worker shares.
struct Settings {
    header_timeout: Duration,
    per_ip: PerIpLimit,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Settings {
    fn new(cfg: &ServerConfig, tls: Option<rustls::ServerConfig>) -> Self {
        Self {
            header_timeout: cfg.client_header_timeout.0,
            per_ip: PerIpLimit::new(
                u32::try_from(cfg.max_connections_per_ip).unwrap_or(u32::MAX),
                CidrList::new(cfg.trusted_proxies.clone()),
            ),
            tls: tls.map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c))),
        }
    }
}

/// Workers, connection cap and drain time, as `HttpServer` would set them.
fn server_builder(cfg: &ServerConfig) -> actix_server::ServerBuilder {
    let builder = actix_server::Server::build()
        .max_concurrent_connections(usize::try_from(cfg.max_connections).unwrap_or(usize::MAX))
        .shutdown_timeout(cfg.shutdown_grace.0.as_secs())
        // Signals are ours (see `app::serve`).
        .disable_signals();
    match cfg.workers {
        0 => builder,
        n => builder.workers(usize::try_from(n).unwrap_or(1)),
    }
}

/// A bound, not yet running server and the addresses it listens on.
pub struct Listening {
    pub builder: actix_server::ServerBuilder,
    pub addrs: Vec<SocketAddr>,
}

/// Binds `server.listen` and assembles the server around `factory` (one app per
/// worker), with the settings of `server.*`.
pub fn listen<F, I, S, B>(
    cfg: &ServerConfig,
    tls: Option<rustls::ServerConfig>,
    factory: F,
) -> std::io::Result<Listening>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as Service<Request>>::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    let mut builder = server_builder(cfg);
    let graceful = builder.graceful_shutdown_signal();
    let secure = tls.is_some();
    let settings = Arc::new(Settings::new(cfg, tls));
    let keep_alive = match cfg.keep_alive.0 {
        d if d.is_zero() => actix_http::KeepAlive::Disabled,
        d => actix_http::KeepAlive::Timeout(d),
    };
    let mut addrs = Vec::new();
    for addr in cfg.listen.to_socket_addrs()? {
        let listener = tcp_listener(addr)?;
        let local = listener.local_addr()?;
        addrs.push(local);
        let (factory, settings, graceful) =
            (factory.clone(), Arc::clone(&settings), graceful.clone());
        builder = builder.listen(format!("palisade-{local}"), listener, move || {
            let graceful = graceful.clone();
            let app = factory()
                .into_factory()
                .map_err(|e| e.into().error_response());
            let h1 = HttpService::<GuardedIo<Stream>, _, _>::build()
                .graceful_shutdown_signal(move || {
                    let signal = graceful.clone();
                    async move { signal.notified().await }
                })
                .keep_alive(keep_alive)
                // Off: `GuardedIo` times every head, not only the first.
                .client_request_timeout(Duration::ZERO)
                .client_disconnect_timeout(Duration::from_secs(1))
                // A client that closes its connection while its request waits (for
                // a queue slot or the upstream's first byte) is gone: drop the
                // handler at once, which gives back its place in line and cancels
                // the upstream request.
                .h1_allow_half_closed(false)
                .local_addr(local)
                .on_connect_ext(|io: &GuardedIo<Stream>, ext| {
                    ext.insert(io.handle());
                })
                // `AppConfig::new` is crate-private; this is the constructor
                // actix-web exposes for actix-test (same fields HttpServer sets).
                // Cargo.lock pins the version; a change would fail to compile.
                .h1(map_config(app, move |()| {
                    AppConfig::__priv_test_new(secure, local.to_string(), local)
                }));
            let settings = Arc::clone(&settings);
            fn_service(move |tcp: TcpStream| accept(Arc::clone(&settings), tcp)).and_then(
                actix_service::apply_fn_factory(h1, |io: GuardedIo<Stream>, h1| {
                    let (conn, peer) = (io.handle(), io.peer());
                    let served = h1.call((io, peer));
                    async move {
                        if let Err(e) = served.await {
                            refusal::report(&e, &conn, peer);
                        }
                        Ok(())
                    }
                })
                .map_err(|_: actix_http::error::DispatchError| ()),
            )
        })?;
    }
    Ok(Listening { builder, addrs })
}

/// Counts the connection against its peer's cap, then the TLS handshake.
async fn accept(settings: Arc<Settings>, tcp: TcpStream) -> Result<GuardedIo<Stream>, ()> {
    let peer = tcp.peer_addr().ok();
    let permit: Option<Permit> = match peer.map(|p| settings.per_ip.acquire(p.ip())) {
        Some(Err(per_ip::OverLimit)) => {
            refusal::refuse_connection(&tcp, peer, settings.tls.is_none());
            return Err(());
        }
        Some(Ok(permit)) => permit,
        None => None,
    };
    // Nagle would hold small SSE frames back for up to 40 ms.
    let _ = tcp.set_nodelay(true);
    let stream = match &settings.tls {
        None => Stream::Plain(tcp),
        Some(acceptor) => {
            match tokio::time::timeout(settings.header_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => Stream::Tls(Box::new(tls)),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return Err(());
                }
                Err(_) => {
                    crate::metrics::global().client_error("handshake_timeout");
                    tracing::debug!(
                        "TLS handshake not finished within server.client_header_timeout"
                    );
                    return Err(());
                }
            }
        }
    };
    Ok(GuardedIo::new(
        stream,
        peer,
        settings.header_timeout,
        permit,
    ))
}

/// Like actix-web's: address reuse, a backlog of 1024.
fn tcp_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(std::net::TcpListener::from(socket))
}
