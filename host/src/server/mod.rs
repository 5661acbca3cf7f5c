//! Listeners and the life of the whole server: bind, accept within the connection limit, serve,
//! and shut down gracefully (stop accepting, drain in-flight requests, cut what is left at the
//! deadline).
//!
//! Connections are served either on the runtime that started the server (tests, embedding) or on
//! worker threads ([`Server::start_workers`]): each worker owns a single-threaded runtime and, per
//! listener, its own accepting socket of one `SO_REUSEPORT` group, so the kernel spreads new
//! connections over the workers and a connection lives its whole life on the worker that
//! accepted it. Together with the per-worker upstream pools ([`sluice_http::worker`]) a
//! keep-alive request to a pooled upstream connection crosses no thread. The control plane
//! (admin, reloads, health checks, certificate reloads) stays on the starting runtime.

mod connection;
mod http3;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::config::Snapshot;
use crate::pipeline::{ConnectionInfo, Proxy, Tunnels};
use crate::reload::Reloader;
use crate::telemetry::metrics::{ListenerLabels, Metrics, Name};
use sluice_cache::HttpCache;
use sluice_tls::server as tls;

/// A running Sluice: its listeners, admin endpoint and connections.
#[derive(Debug)]
pub struct Server {
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    listeners: Vec<(Arc<str>, SocketAddr)>,
    admin: Option<SocketAddr>,
    connections: TaskTracker,
    tunnels: Tunnels,
    /// Stops accept loops and asks every connection to finish its requests and close.
    drain: CancellationToken,
    reloader: Arc<Reloader>,
    /// Ends the worker threads' runtimes (none when serving on the starting runtime).
    workers: Workers,
}

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// Every connection finished within the deadline.
    Drained,
    /// The deadline passed; this many connections and tunnels were cut.
    Cut(usize),
}

/// Where connections are served.
#[derive(Debug, Clone, Copy)]
enum Placement {
    /// On the runtime that called [`Server::start`].
    Here,
    /// On this many worker threads of their own.
    Workers(usize),
}

impl Server {
    /// Binds every listener of `snapshot` (and its admin listener) and starts serving on the
    /// calling runtime.
    pub async fn start(snapshot: Snapshot) -> io::Result<Self> {
        Self::start_on(snapshot, Placement::Here).await
    }

    /// Binds every listener of `snapshot` and starts serving on `workers` threads of their own
    /// (see the module docs); the admin listener and the control plane stay on the calling
    /// runtime. Call [`sluice_http::worker::set_workers`] with the same count before compiling
    /// `snapshot`, so that its upstreams keep a pool per worker.
    pub async fn start_workers(snapshot: Snapshot, workers: usize) -> io::Result<Self> {
        Self::start_on(snapshot, Placement::Workers(workers.max(1))).await
    }

    async fn start_on(snapshot: Snapshot, placement: Placement) -> io::Result<Self> {
        if !snapshot.services.runtime.set_long_call_priority(snapshot.server.long_call_priority) {
            tracing::warn!(
                "server.long_call_priority differs from what this process's long-call threads started with; it takes effect on restart"
            );
        }
        // Every filter's first instance starts now, so that a config its plugin refuses fails the
        // start rather than the first request.
        snapshot.prepare_filters().await.map_err(|err| io::Error::other(err.to_string()))?;
        for upstream in snapshot.upstreams.values() {
            upstream.start_health_checks();
        }
        let mut metrics = Metrics::new();
        metrics.register_filter_metrics(snapshot.services.runtime.services());
        metrics.register_shadow_metrics(&snapshot.services.shadows);
        metrics.register_upstream_metrics(&snapshot.services.upstream_metrics);
        let metrics = Arc::new(metrics);
        let snapshot = Arc::new(ArcSwap::from_pointee(snapshot));
        let current = snapshot.load_full();
        let reloader = Arc::new(Reloader::new(snapshot.clone()));
        let drain = CancellationToken::new();
        let tunnels = Tunnels::default();
        let connections = TaskTracker::new();
        let cache = HttpCache::new(current.cache_max_bytes);
        let cluster = current.cluster.as_ref().map(|redis| {
            let blocks = current.services.runtime.services().blocks.clone();
            crate::cluster::Cluster::join(redis, cache.clone(), blocks, drain.clone())
        });
        let proxy = Proxy::new(snapshot.clone(), metrics.clone(), tunnels.clone(), cache.clone());
        let limit = Arc::new(Semaphore::new(current.server.max_connections));
        let per_client = Arc::new(ClientConnections::default());

        let sockets_per_listener = match placement {
            Placement::Here => 1,
            Placement::Workers(workers) => workers,
        };
        let mut listeners = Vec::new();
        // Per worker (one for `Here`), its accept loops.
        let mut accept_loops: Vec<Vec<AcceptLoop>> = (0..sockets_per_listener).map(|_| Vec::new()).collect();
        for spec in &current.listeners {
            let sockets = bind_group(spec.bind, sockets_per_listener)?;
            let local = sockets[0].local_addr()?;
            tracing::info!(listener = %spec.name, address = %local, sockets = sockets.len(), "listening");
            listeners.push((spec.name.clone(), local));
            let mut alt_svc = None;
            let tls = match &spec.tls {
                Some(settings) => {
                    let (config, resolver) =
                        tls::server_config(settings).map_err(|err| io::Error::other(err.to_string()))?;
                    if let Some(http3) = &spec.http3 {
                        // The same port over UDP; the same certificates, through the same resolver.
                        let quic = tls::quic_server_config(settings, &resolver)
                            .map_err(|err| io::Error::other(err.to_string()))?;
                        let limits = http3::QuicLimits::of(http3, &current.server);
                        let endpoint = http3::bind(local, quic, &limits).map_err(|err| {
                            io::Error::new(err.kind(), format!("cannot listen on {local} (UDP): {err}"))
                        })?;
                        tracing::info!(listener = %spec.name, address = %local, "listening for HTTP/3");
                        if !http3.alt_svc_max_age.is_zero() {
                            let value = format!("h3=\":{}\"; ma={}", local.port(), http3.alt_svc_max_age.as_secs());
                            alt_svc = Some(http::HeaderValue::try_from(value).expect("digits and ASCII"));
                        }
                        tokio::spawn(http3::accept_loop(http3::QuicListener {
                            endpoint,
                            name: spec.name.clone(),
                            hsts: spec.hsts.clone(),
                            proxy: proxy.clone(),
                            settings: limits,
                            connections: connections.clone(),
                            drain: drain.clone(),
                            close_now: tunnels.close_now.clone(),
                            per_client: per_client.clone(),
                            per_client_limit: current.server.max_connections_per_client,
                            limit: limit.clone(),
                        }));
                    }
                    tls::spawn_reloader(spec.name.clone(), settings.clone(), resolver, drain.clone());
                    Some(TlsAcceptor::from(config))
                }
                None => None,
            };
            for (socket, loops) in sockets.into_iter().zip(&mut accept_loops) {
                loops.push(AcceptLoop {
                    listener: socket,
                    tls: tls.clone(),
                    hsts: spec.hsts.clone(),
                    alt_svc: alt_svc.clone(),
                    redirect_to_https: spec.redirect_to_https,
                    name: spec.name.clone(),
                    proxy: proxy.clone(),
                    snapshot: snapshot.clone(),
                    metrics: metrics.clone(),
                    limit: limit.clone(),
                    per_client: per_client.clone(),
                    connections: connections.clone(),
                    drain: drain.clone(),
                    close_now: tunnels.close_now.clone(),
                });
            }
        }
        let workers = match placement {
            Placement::Here => {
                for accept in accept_loops.into_iter().flatten() {
                    tokio::spawn(accept_loop(accept));
                }
                Workers::default()
            }
            Placement::Workers(_) => Workers::spawn(accept_loops)?,
        };

        let admin = match current.admin {
            Some(bind_addr) => {
                let socket = bind_group(bind_addr, 1)?.pop().expect("one socket");
                let listener = TcpListener::from_std(socket)?;
                let local = listener.local_addr()?;
                tracing::info!(address = %local, "admin listening");
                let admin = admin::Admin {
                    metrics: metrics.clone(),
                    snapshot: snapshot.clone(),
                    reloader: reloader.clone(),
                    cache: cache.clone(),
                    cluster: cluster.clone(),
                };
                tokio::spawn(admin::serve(listener, Arc::new(admin), drain.clone()));
                Some(local)
            }
            None => None,
        };

        if current.server.watch {
            crate::reload::watch::spawn(reloader.clone(), snapshot.clone(), drain.clone());
        }

        Ok(Self { snapshot, metrics, listeners, admin, connections, tunnels, drain, reloader, workers })
    }

    /// The address a listener is bound to (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|(listener, _)| &**listener == name).map(|(_, addr)| *addr)
    }

    /// Every listener's name and bound address, in configured order.
    pub fn listener_addrs(&self) -> &[(Arc<str>, SocketAddr)] {
        &self.listeners
    }

    /// The admin listener's bound address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The configuration now being served.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Swaps configurations while serving (see [`Reloader`]).
    pub fn reloader(&self) -> &Arc<Reloader> {
        &self.reloader
    }

    /// Stops accepting, lets in-flight requests finish for up to the configured shutdown timeout,
    /// then cuts whatever is left.
    pub async fn shutdown(self) -> ShutdownOutcome {
        let deadline = self.snapshot.load().server.shutdown_timeout;
        self.shutdown_within(deadline).await
    }

    /// [`Server::shutdown`] with an explicit deadline.
    pub async fn shutdown_within(mut self, deadline: Duration) -> ShutdownOutcome {
        tracing::info!(deadline_ms = deadline.as_millis() as u64, "shutting down: draining connections");
        self.drain.cancel();
        self.connections.close();
        self.tunnels.tracker.close();
        let drained = tokio::time::timeout(deadline, async {
            self.connections.wait().await;
            self.tunnels.tracker.wait().await;
        })
        .await;
        let outcome = match drained {
            Ok(()) => {
                tracing::info!("all connections drained");
                ShutdownOutcome::Drained
            }
            Err(_) => {
                let left = self.connections.len() + self.tunnels.tracker.len();
                tracing::warn!(connections = left, "shutdown deadline passed: closing the remaining connections");
                self.tunnels.close_now.cancel();
                self.connections.wait().await;
                self.tunnels.tracker.wait().await;
                ShutdownOutcome::Cut(left)
            }
        };
        self.workers.stop().await;
        outcome
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A server dropped without a shutdown stops accepting and ends its workers' runtimes,
        // which drops whatever they still serve.
        self.drain.cancel();
        self.workers.stop.cancel();
    }
}

/// The worker threads, each running one single-threaded runtime.
#[derive(Debug, Default)]
struct Workers {
    stop: CancellationToken,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// One thread per entry of `accept_loops`, running those loops and what they spawn.
    fn spawn(accept_loops: Vec<Vec<AcceptLoop>>) -> io::Result<Self> {
        let stop = CancellationToken::new();
        let mut threads = Vec::with_capacity(accept_loops.len());
        for (index, loops) in accept_loops.into_iter().enumerate() {
            // Built here, so that a runtime that cannot start fails the start.
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let stop = stop.clone();
            let thread = std::thread::Builder::new().name(format!("sluice-worker-{index}")).spawn(move || {
                sluice_http::worker::enter(index);
                runtime.block_on(async move {
                    for accept in loops {
                        tokio::spawn(accept_loop(accept));
                    }
                    stop.cancelled().await;
                });
            })?;
            threads.push(thread);
        }
        Ok(Self { stop, threads })
    }

    /// Ends the workers' runtimes and waits for their threads.
    async fn stop(&mut self) {
        self.stop.cancel();
        let threads = std::mem::take(&mut self.threads);
        if threads.is_empty() {
            return;
        }
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        });
        let _ = joined.await;
    }
}

/// `count` listening sockets on `addr` (with SO_REUSEADDR, so a restart does not wait out
/// TIME_WAIT), one `SO_REUSEPORT` group when more than one, so that the kernel spreads
/// connections over them. The first is bound before it joins the group, so
/// an address something else listens on already fails here as it would without workers, rather
/// than being shared with it; with port 0 the others take the port the first was given.
fn bind_group(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let cannot = |err: io::Error| io::Error::new(err.kind(), format!("cannot listen on {addr}: {err}"));
    let socket = |reuse_port: bool| -> io::Result<socket2::Socket> {
        let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_tcp_nodelay(true)?;
        socket.set_nonblocking(true)?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        Ok(socket)
    };
    let first = socket(false)?;
    first.bind(&addr.into()).map_err(cannot)?;
    let bound = first.local_addr()?.as_socket().unwrap_or(addr);
    if count > 1 {
        first.set_reuse_port(true)?;
    }
    first.listen(1024)?;
    let mut sockets = vec![first];
    for _ in 1..count {
        let other = socket(true)?;
        other.bind(&bound.into()).map_err(cannot)?;
        other.listen(1024)?;
        sockets.push(other);
    }
    Ok(sockets.into_iter().map(std::net::TcpListener::from).collect())
}

struct AcceptLoop {
    /// Made a tokio listener by the runtime that runs the loop.
    listener: std::net::TcpListener,
    tls: Option<TlsAcceptor>,
    hsts: Option<http::HeaderValue>,
    alt_svc: Option<http::HeaderValue>,
    redirect_to_https: Option<u16>,
    name: Arc<str>,
    proxy: Proxy,
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    limit: Arc<Semaphore>,
    per_client: Arc<ClientConnections>,
    connections: TaskTracker,
    drain: CancellationToken,
    close_now: CancellationToken,
}

async fn accept_loop(accept: AcceptLoop) {
    let listener = match TcpListener::from_std(accept.listener) {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(listener = %accept.name, error = %err, "cannot accept on the listener");
            return;
        }
    };
    let labels = ListenerLabels { listener: Name(accept.name.clone()) };
    let active = accept.metrics.active_connections.get_or_create(&labels).clone();
    let accepted = accept.metrics.connections.get_or_create(&labels).clone();
    let refused = accept.metrics.connections_refused.get_or_create(&labels).clone();
    loop {
        // Over the limit, stop accepting: new clients wait in the kernel's queue rather than
        // being accepted and starved.
        let permit = tokio::select! {
            () = accept.drain.cancelled() => return,
            permit = accept.limit.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            () = accept.drain.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::error!(listener = %accept.name, error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (builder, timeouts, header_read_timeout, per_client_limit) = {
            let snapshot = accept.snapshot.load();
            let settings = &snapshot.server;
            let exempt = settings.trusted_proxies.iter().any(|net| net.contains(&peer.ip()));
            (
                connection::connection_builder(settings),
                connection::ConnectionTimeouts::of(settings),
                settings.header_read_timeout,
                (!exempt).then_some(settings.max_connections_per_client),
            )
        };
        let Some(client_slot) = accept.per_client.admit(peer.ip(), per_client_limit) else {
            refused.inc();
            tracing::debug!(listener = %accept.name, peer = %peer, "connection refused: the client holds its limit of connections");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        accepted.inc();
        active.inc();
        let mut info = ConnectionInfo::accepted(peer, accept.name.clone());
        info.redirect_to_https = accept.redirect_to_https;
        let (proxy, drain, close_now, active) =
            (accept.proxy.clone(), accept.drain.clone(), accept.close_now.clone(), active.clone());
        let (tls, hsts, handshake_timeout) = (accept.tls.clone(), accept.hsts.clone(), header_read_timeout);
        let alt_svc = accept.alt_svc.clone();
        accept.connections.spawn(async move {
            match tls {
                None => connection::serve(stream, builder, proxy, info, timeouts, drain, close_now).await,
                Some(acceptor) => {
                    // The handshake gets the same time as a request head: a client that stalls in
                    // it is cut off like a slow-header client.
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            info.scheme = "https";
                            info.hsts = hsts;
                            info.alt_svc = alt_svc;
                            info.client_identity = tls::client_identity(stream.get_ref().1.peer_certificates());
                            connection::serve(stream, builder, proxy, info, timeouts, drain, close_now).await;
                        }
                        Ok(Err(err)) => tracing::debug!(peer = %peer, error = %err, "TLS handshake failed"),
                        Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                    }
                }
            }
            active.dec();
            drop(client_slot);
            drop(permit);
        });
    }
}

/// Connections open per client address, for `max_connections_per_client`.
#[derive(Debug, Default)]
struct ClientConnections {
    open: std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>,
}

/// One connection of a client address; dropping it frees the slot.
struct ClientSlot {
    clients: Arc<ClientConnections>,
    address: IpAddr,
}

impl ClientConnections {
    /// A slot for one more connection from `address`, unless it holds `limit` already (`None`:
    /// no limit for it).
    fn admit(self: &Arc<Self>, address: IpAddr, limit: Option<usize>) -> Option<Option<ClientSlot>> {
        let Some(limit) = limit else { return Some(None) };
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(address).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(Some(ClientSlot { clients: self.clone(), address }))
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.clients.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}
