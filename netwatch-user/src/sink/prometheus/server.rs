//! The `/metrics` HTTP/1 server: a thread of its own (supervised as
//! `metrics`) with a single-threaded tokio runtime, answering `GET
//! /metrics` with the page [`super::encode`] renders, `GET /healthz` from
//! [`crate::supervise::liveness`] (200 while the tick advances, 503 with
//! the reason otherwise), and `/` with where both are.
//!
//! It must never let clients starve a scrape: connections are tasks,
//! capped (the one idle the longest is closed for a new one), with a
//! header deadline and a header size limit (see `serve`). It never answers
//! before it is told to ([`Server::serve_now`]: once the counters are
//! restored, so no scrape ever sees a restored counter at 0), and it never
//! touches the metrics state except through the registry's collectors.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::registry::Registry;

/// The `Content-Type` of a `/metrics` answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// At most this many connections at once (fewer when the open-files limit
/// is low: half of it); a new one past the cap closes the connection idle
/// the longest, so a new scrape always gets in.
const MAX_CONNECTIONS: usize = 1024;
/// A client must send a request's headers within this time of the
/// connection's start, or of its previous answer (a deadline, not an idle
/// timer: a byte now and then does not extend it). hyper answers 408 and
/// closes.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Request line and headers larger than this are answered 431 and closed.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// No connection lives longer than this.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections the kernel queues for the server to accept (capped by
/// `net.core.somaxconn`, 4096 by default).
const LISTEN_BACKLOG: i32 = 1024;
/// The name of the connection table in `netwatch_agent_table_dropped_total`.
pub const CONNECTIONS_TABLE: &str = "metrics_connections";

/// The server thread, bound at start, answering once told to
/// ([`Server::serve_now`]), stopped and joined when dropped.
pub(super) struct Server {
    local_addr: SocketAddr,
    /// Sent once the counters are restored: the server starts answering.
    go: Option<std::sync::mpsc::Sender<()>>,
    /// Set (or dropped) to stop the server.
    stop: tokio::sync::watch::Sender<bool>,
    /// The server thread, supervised as `metrics` (restarted: the listener
    /// belongs to its body, each run serves a clone of it).
    worker: Option<crate::supervise::Worker>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.go = None;
        self.stop.send_replace(true);
        // Stops restarts and joins.
        drop(self.worker.take());
    }
}

impl Server {
    /// Bind the listener (an address in use stops the agent at start):
    /// non-blocking, with a backlog of [`LISTEN_BACKLOG`]; and its address
    /// (the port chosen when `listen` said 0).
    pub(super) fn bind(listen: SocketAddr) -> anyhow::Result<(std::net::TcpListener, SocketAddr)> {
        use anyhow::Context;
        let listener = std::net::TcpListener::bind(listen).with_context(|| {
            format!(
                "listening for /metrics on {listen} (is another exporter on that port? \
                 set --metrics-listen or [prometheus] listen)"
            )
        })?;
        listener
            .set_nonblocking(true)
            .context("making the /metrics listener non-blocking")?;
        // std listens with a backlog of 128: a burst of connections fills
        // it and the kernel drops new SYNs (a scrape's among them) for a
        // second or more. Listening again only raises the queue's length.
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: listen(2) on a socket we own; no memory is passed.
            if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
                log::warn!(
                    "/metrics: raising the listen backlog to {LISTEN_BACKLOG}: {} (kept 128)",
                    std::io::Error::last_os_error()
                );
            }
        }
        let local_addr = listener
            .local_addr()
            .context("reading the /metrics listener's address")?;
        Ok((listener, local_addr))
    }

    /// Start the server thread on `listener` (bound by [`Server::bind`] at
    /// `local_addr`), rendering `registry` on each scrape. It waits for
    /// [`Server::serve_now`] before it accepts a connection.
    pub(super) fn start(
        listener: std::net::TcpListener,
        local_addr: SocketAddr,
        registry: Registry,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let registry = Arc::new(registry);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        // The server starts once the counters are restored (`resume`):
        // until then scrapes wait in the listen backlog, so none ever sees
        // a restored counter at 0.
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let mut waiting = Some(go_rx);
        let server = crate::supervise::Worker::spawn(
            "metrics",
            "metrics",
            crate::supervise::Policy::Restart,
            move || {
                if let Some(go) = waiting.take() {
                    if go.recv().is_err() {
                        return Ok(());
                    }
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("starting the /metrics runtime: {e}"))?;
                let listener = listener
                    .try_clone()
                    .map_err(|e| format!("duplicating the /metrics listener: {e}"))?;
                rt.block_on(serve(listener, Arc::clone(&registry), stop_rx.clone()))
            },
        )
        .context("starting the /metrics thread")?;
        log::info!("serving Prometheus metrics on http://{local_addr}/metrics");
        log::info!(
            "/metrics: at most {} connections (the one idle the longest is closed for a new \
             one), request headers within {} s and {MAX_HEADER_BYTES} bytes",
            connection_cap(),
            HEADER_READ_TIMEOUT.as_secs()
        );
        Ok(Self {
            local_addr,
            go: Some(go_tx),
            stop: stop_tx,
            worker: Some(server),
        })
    }

    /// Let the server thread answer scrapes (once).
    pub(super) fn serve_now(&mut self) {
        if let Some(go) = self.go.take() {
            let _ = go.send(());
        }
    }

    /// Where the server listens.
    pub(super) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

type Body = http_body_util::Full<bytes::Bytes>;

fn reply(status: http::StatusCode, content_type: &str, body: String) -> http::Response<Body> {
    let mut r = http::Response::new(Body::new(bytes::Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

/// One request: `GET /metrics` renders the page, `GET /healthz` the
/// liveness; `/` points to both.
fn answer<B>(req: &http::Request<B>, registry: &Registry) -> http::Response<Body> {
    use http::{Method, StatusCode};
    let text = "text/plain; charset=utf-8";
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, registry) {
                Ok(()) => reply(StatusCode::OK, CONTENT_TYPE, out),
                Err(_) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    text,
                    "encoding the metrics failed\n".into(),
                ),
            }
        }
        (&Method::GET | &Method::HEAD, "/healthz") => {
            let live = crate::supervise::liveness();
            let status = if live.is_live() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, text, format!("{}\n", live.describe()))
        }
        (&Method::GET | &Method::HEAD, "/") => reply(
            StatusCode::OK,
            text,
            "netwatch-agent: metrics at /metrics, liveness at /healthz\n".into(),
        ),
        (_, "/metrics") | (_, "/") | (_, "/healthz") => {
            let mut r = reply(
                StatusCode::METHOD_NOT_ALLOWED,
                text,
                "only GET and HEAD\n".into(),
            );
            r.headers_mut().insert(
                http::header::ALLOW,
                http::HeaderValue::from_static("GET, HEAD"),
            );
            r
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            text,
            "not found: try /metrics or /healthz\n".into(),
        ),
    }
}

/// How many connections the server holds at most: [`MAX_CONNECTIONS`],
/// or half the soft open-files limit when that is lower (the rest is for
/// the agent's own files: /proc, maps, the spool), at least 16.
pub fn connection_cap() -> usize {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct we pass and nothing else.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            let half = usize::try_from(lim.rlim_cur / 2).unwrap_or(usize::MAX);
            return half.clamp(16, MAX_CONNECTIONS);
        }
    }
    MAX_CONNECTIONS
}

/// The open connections: at most `cap`. Each remembers when it last
/// started a request (or was accepted); past the cap, the one whose last
/// start is the oldest is closed: the connection idle the longest (one
/// waiting for its request's headers, or between requests; a request is
/// answered synchronously on this thread, so none is mid-answer when a new
/// connection is accepted).
struct Connections {
    cap: usize,
    /// A counter, not a clock: ordering only.
    tick: u64,
    next_id: u64,
    /// id → (last start, the task serving it).
    open: HashMap<u64, (u64, tokio::task::AbortHandle)>,
    /// last start → id: the idle-longest first (O(log n) per connection,
    /// so a connection flood at the cap costs no scan).
    by_age: std::collections::BTreeMap<u64, u64>,
}

impl Connections {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            tick: 0,
            next_id: 0,
            open: HashMap::new(),
            by_age: std::collections::BTreeMap::new(),
        }
    }

    /// Make room for one more: take out the connections idle the longest
    /// while the table is full; the caller aborts their tasks (outside the
    /// lock: a task's end takes the lock too).
    fn make_room(&mut self) -> Vec<tokio::task::AbortHandle> {
        let mut out = Vec::new();
        while self.open.len() >= self.cap {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            if let Some((_, task)) = self.open.remove(&oldest) {
                out.push(task);
            }
        }
        out
    }

    fn insert(&mut self, task: tokio::task::AbortHandle) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.tick += 1;
        self.open.insert(id, (self.tick, task));
        self.by_age.insert(self.tick, id);
        id
    }

    /// Connection `id` started a request.
    fn touch(&mut self, id: u64) {
        self.tick += 1;
        if let Some((last, _)) = self.open.get_mut(&id) {
            self.by_age.remove(last);
            *last = self.tick;
            self.by_age.insert(self.tick, id);
        }
    }

    /// Connection `id` ended.
    fn remove(&mut self, id: u64) {
        if let Some((last, _)) = self.open.remove(&id) {
            self.by_age.remove(&last);
        }
    }
}

fn lock_conns(c: &Mutex<Connections>) -> MutexGuard<'_, Connections> {
    crate::supervise::lock(c, "/metrics connection table")
}

/// Removes a connection from the table when its task ends (answered,
/// timed out, closed by the client, or aborted).
struct Registered {
    conns: Arc<Mutex<Connections>>,
    id: Option<u64>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            lock_conns(&self.conns).remove(id);
        }
    }
}

/// Serve until `stop` is set or dropped (`Ok`); `Err` when the listener
/// cannot be used (the supervisor tries again). Connections cost a task
/// each (no thread): thousands of idle ones are held without starving a
/// scrape; see [`Connections`] for the cap.
async fn serve(
    listener: std::net::TcpListener,
    registry: Arc<Registry>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| format!("cannot use the /metrics listener: {e}"))?;
    let cap = connection_cap();
    let conns = Arc::new(Mutex::new(Connections::new(cap)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEADER_BYTES);
    let http = Arc::new(http);
    loop {
        let stream = tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(()),
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    crate::supervise::fault::point("metrics");
                    s
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    log::warn!("/metrics: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let evicted = lock_conns(&conns).make_room();
        for task in &evicted {
            // Dropping the task's future closes its socket.
            task.abort();
        }
        crate::drops::dropped(CONNECTIONS_TABLE, cap, evicted.len() as u64);
        let registry = Arc::clone(&registry);
        let http = Arc::clone(&http);
        // The task's id is known once it is in the table; it cannot run
        // before this loop next awaits (one thread).
        let (id_tx, id_rx) = tokio::sync::oneshot::channel::<u64>();
        let table = Arc::clone(&conns);
        let task = tokio::spawn(async move {
            let Ok(id) = id_rx.await else { return };
            let _registered = Registered {
                conns: Arc::clone(&table),
                id: Some(id),
            };
            let svc = hyper::service::service_fn(move |req| {
                lock_conns(&table).touch(id);
                let r = answer(&req, &registry);
                async move { Ok::<_, std::convert::Infallible>(r) }
            });
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            // A connection past its time is dropped (closed).
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                log::debug!("/metrics connection: {e}");
            }
        });
        let id = lock_conns(&conns).insert(task.abort_handle());
        let _ = id_tx.send(id);
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::state;
    use super::super::registry;
    use super::*;

    /// The server thread on a real socket: bound on port 0 (its port
    /// known at once), no answer before `serve_now` (the request waits in
    /// the backlog), then the page of the state it was given; dropped, it
    /// stops and its listener is closed.
    #[test]
    fn the_server_answers_once_told_to_and_closes_its_port_when_dropped() {
        use std::io::{Read, Write};
        let st = Arc::new(Mutex::new(state(10, 300)));
        let (listener, addr) =
            Server::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("binding 127.0.0.1:0");
        assert_eq!(addr.ip(), std::net::Ipv4Addr::LOCALHOST);
        assert_ne!(addr.port(), 0);
        let mut server = Server::start(listener, addr, registry(&st, None)).expect("starting");
        assert_eq!(server.local_addr(), addr);
        let mut c = std::net::TcpStream::connect(addr).expect("connecting");
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .expect("sending the request");
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("setting a read timeout");
        let mut byte = [0u8; 1];
        let waiting = c.read(&mut byte).expect_err("no answer before serve_now");
        assert!(
            matches!(
                waiting.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{waiting}"
        );
        server.serve_now();
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("setting a read timeout");
        let mut answer = String::new();
        c.read_to_string(&mut answer).expect("reading the answer");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.contains(&format!("content-type: {CONTENT_TYPE}\r\n")),
            "{answer}"
        );
        assert!(
            answer.contains("\nnetwatch_agent_snapshots_total 0\n"),
            "{answer}"
        );
        assert!(answer.ends_with("# EOF\n"), "{answer}");
        drop(server);
        let refused = std::net::TcpStream::connect(addr).expect_err("the port is closed");
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn only_get_and_head_of_metrics_and_root_are_served() {
        let st = Arc::new(Mutex::new(state(10, 300)));
        let reg = registry(&st, None);
        let req = |m: &str, path: &str| {
            http::Request::builder()
                .method(m)
                .uri(path)
                .body(())
                .unwrap()
        };
        let r = answer(&req("GET", "/metrics"), &reg);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[http::header::CONTENT_TYPE], CONTENT_TYPE);
        assert_eq!(answer(&req("HEAD", "/metrics"), &reg).status(), 200);
        assert_eq!(answer(&req("GET", "/"), &reg).status(), 200);
        let r = answer(&req("POST", "/metrics"), &reg);
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()[http::header::ALLOW], "GET, HEAD");
        assert_eq!(answer(&req("GET", "/metrics/x"), &reg).status(), 404);
        assert_eq!(answer(&req("GET", "/api/v1/ingest"), &reg).status(), 404);
        // No tick loop in this test process: not live.
        let r = answer(&req("GET", "/healthz"), &reg);
        assert_eq!(r.status(), 503);
        assert_eq!(
            crate::supervise::liveness().describe(),
            "not ticking: the tick loop has not started"
        );
        assert_eq!(answer(&req("POST", "/healthz"), &reg).status(), 405);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn past_the_cap_the_connection_idle_longest_makes_room() {
        let mut c = Connections::new(3);
        let mut tasks = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..3 {
            let t = tokio::spawn(std::future::pending::<()>());
            ids.push(c.insert(t.abort_handle()));
            tasks.push(t);
        }
        assert_eq!(c.make_room().len(), 1);
        // The first one went; a request on the second makes the third the
        // idle one.
        assert_eq!(c.open.len(), 2);
        assert!(!c.open.contains_key(&ids[0]));
        c.touch(ids[1]);
        let t = tokio::spawn(std::future::pending::<()>());
        let id3 = c.insert(t.abort_handle());
        let gone = c.make_room();
        assert_eq!(gone.len(), 1);
        assert!(!c.open.contains_key(&ids[2]));
        assert!(c.open.contains_key(&ids[1]) && c.open.contains_key(&id3));
        // Room already: nothing closed.
        assert!(c.make_room().is_empty());
        c.remove(id3);
        assert_eq!(c.open.len(), 1);
        assert_eq!(c.by_age.len(), 1);
        for t in tasks {
            t.abort();
        }
        t.abort();
    }
}
