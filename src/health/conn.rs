//! One health connection: one HTTP/1.x request read into a fixed buffer,
//! parsed by `httparse`, answered, then closed (docs/protocol.md "Lame duck
//! and health").
//!
//! It owns the request bytes, the answer and its unsent tail, and the
//! exchange's phase. It never touches the `Poll`: [`HealthConn::on_ready`]
//! returns a [`HealthStep`] saying what to wait for next, like
//! `connection.rs`; registration, the deadline and removal are the listener's
//! (`health.rs`). It reads no clock: its deadline is set when it is accepted.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use log::debug;
use mio::Interest;
use mio::net::TcpStream;

use super::REQUEST_LIMIT;
use super::metrics::{self, MetricsSnapshot, ProcessStats};
use crate::connection::Stream;
use crate::drain::ServeState;

/// Headers a request may have; more is a bad request.
const MAX_HEADERS: usize = 64;
/// Reads of unwanted input per event once the answer is sent; a peer that
/// sends more than that after its answer is not a probe and is closed.
const LINGER_READS: usize = 16;

/// What the server should do with a health connection after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStep {
    /// Keep it, registered for this readiness.
    Keep(Interest),
    /// Remove it (after the batch): answered and closed by the peer, failed,
    /// or closed without an answer.
    Close,
}

/// Where a health connection is in its one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading the request head; registered readable.
    Reading,
    /// Writing the answer; registered writable.
    Writing,
    /// The answer is sent and the write side shut; reading and dropping
    /// input until the peer closes; registered readable.
    Lingering,
}

/// What a request asked for, once its head is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `/livez`: the loop runs.
    Live,
    /// `/readyz`: serving, or not.
    Ready,
    /// `/metrics`.
    Metrics,
    /// An unknown path.
    NotFound,
    /// A known path with a method other than `GET` or `HEAD`.
    MethodNotAllowed,
    /// A request that could not be parsed or breaks HTTP/1.1's rules.
    BadRequest,
}

/// A complete request: what to answer, and whether with headers only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Request {
    /// What was asked for.
    route: Route,
    /// `HEAD`: the same headers as `GET`, no body.
    head_only: bool,
}

/// One health connection: one request, one answer, then close.
#[derive(Debug)]
pub struct HealthConn<S = TcpStream> {
    /// The socket.
    pub(super) stream: S,
    /// The peer's address, for log lines.
    pub(super) peer: SocketAddr,
    /// The request head as read so far, then scratch for dropped input;
    /// always [`REQUEST_LIMIT`] bytes long.
    buf: Box<[u8]>,
    /// Bytes of `buf` holding the request so far; never more than `buf.len()`.
    len: usize,
    /// The whole answer (head and body); empty until the request is complete
    /// and again once it is sent.
    out: Vec<u8>,
    /// Bytes of `out` already written; never more than `out.len()`.
    sent: usize,
    /// Where the exchange is.
    phase: Phase,
    /// When the listener closes it, whatever its phase: accepted +
    /// [`super::REQUEST_TIMEOUT`].
    pub(super) deadline: Instant,
    /// The readiness it is registered for; kept by the listener ([`super::Health`]).
    pub(super) registered: Interest,
    /// Closed during this batch: ignored until the listener removes it after
    /// the batch, so its key is not reused while the batch may name it.
    pub(super) closing: bool,
}

impl<S: Stream> HealthConn<S> {
    /// A connection just accepted from `peer`, registered readable, closed
    /// at `deadline` at the latest.
    pub fn new(stream: S, peer: SocketAddr, deadline: Instant) -> Self {
        HealthConn {
            stream,
            peer,
            buf: vec![0; REQUEST_LIMIT].into_boxed_slice(),
            len: 0,
            out: Vec::new(),
            sent: 0,
            phase: Phase::Reading,
            deadline,
            registered: Interest::READABLE,
            closing: false,
        }
    }

    /// Moves the exchange on as far as the socket allows: read the request,
    /// answer it (with `snapshot` when it asks for the state or the
    /// metrics), shut the write side, drop input until the peer closes.
    ///
    /// Every phase works until `WouldBlock` (or its end), so an
    /// edge-triggered registration never misses input, and a spurious call
    /// does no harm.
    pub fn on_ready(&mut self, snapshot: &MetricsSnapshot) -> HealthStep {
        match self.advance(snapshot) {
            Ok(step) => step,
            Err(err) => {
                debug!(
                    "health connection closed: peer={} error={}",
                    self.peer,
                    err.kind()
                );
                HealthStep::Close
            }
        }
    }

    fn advance(&mut self, snapshot: &MetricsSnapshot) -> io::Result<HealthStep> {
        if self.phase == Phase::Reading {
            let Some(request) = self.read_request(snapshot.state)? else {
                return Ok(HealthStep::Keep(Interest::READABLE));
            };
            let Ok(request) = request else {
                return Ok(HealthStep::Close);
            };
            self.out = answer(request, snapshot);
            self.sent = 0;
            self.phase = Phase::Writing;
        }
        if self.phase == Phase::Writing {
            if !self.write_out()? {
                return Ok(HealthStep::Keep(Interest::WRITABLE));
            }
            // One response per connection: FIN now tells the peer it is whole.
            self.stream.shutdown_write()?;
            self.out = Vec::new();
            self.phase = Phase::Lingering;
        }
        self.linger()
    }

    /// Reads until the request head is complete, the socket is empty, or the
    /// request ends without a head: `None` while waiting for more,
    /// `Some(Err(()))` to close without an answer (end-of-stream first, or
    /// over [`REQUEST_LIMIT`]), `Some(Ok(request))` once it can be answered.
    fn read_request(&mut self, state: ServeState) -> io::Result<Option<Result<Request, ()>>> {
        loop {
            let room = self.buf.get_mut(self.len..).unwrap_or_default();
            if room.is_empty() {
                debug!(
                    "health connection closed: peer={} request over {REQUEST_LIMIT} bytes",
                    self.peer
                );
                return Ok(Some(Err(())));
            }
            let n = match self.stream.read(room) {
                Ok(0) => {
                    debug!(
                        "health connection closed: peer={} end of stream before a request",
                        self.peer
                    );
                    return Ok(Some(Err(())));
                }
                Ok(n) => n.min(room.len()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let start = self.len;
            self.len += n;
            // A head is complete only after a line ends: parsing on every
            // read would let a peer sending a byte at a time cost a parse of
            // up to 8 KiB per byte. The first read is parsed whatever it
            // holds, so that what is not HTTP at all (a TLS hello) gets its
            // 400 at once instead of waiting out the deadline.
            let line_ended = self
                .buf
                .get(start..self.len)
                .is_some_and(|new| new.contains(&b'\n'));
            if start == 0 || line_ended {
                if let Some(request) = self.parse(state) {
                    return Ok(Some(Ok(request)));
                }
            }
        }
    }

    /// Parses what has arrived: `None` while the head is incomplete.
    /// `state` only makes the log line's status exact.
    fn parse(&self, state: ServeState) -> Option<Request> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let bytes = self.buf.get(..self.len).unwrap_or_default();
        let request = match req.parse(bytes) {
            Ok(httparse::Status::Partial) => return None,
            Ok(httparse::Status::Complete(_)) => route(&req),
            Err(_) => Request {
                route: Route::BadRequest,
                head_only: false,
            },
        };
        debug!(
            "health request: peer={} method={} path={} status={}",
            self.peer,
            req.method.unwrap_or("-"),
            req.path.unwrap_or("-"),
            status_line(request.route, state).0
        );
        Some(request)
    }

    /// Writes the rest of the answer; true once all of it is sent.
    fn write_out(&mut self) -> io::Result<bool> {
        loop {
            let Some(rest) = self.out.get(self.sent..).filter(|rest| !rest.is_empty()) else {
                return Ok(true);
            };
            match self.stream.write(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n.min(rest.len()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads and drops whatever input is queued (a few reads at most), so
    /// that closing the socket at the deadline sends FIN rather than the
    /// reset the kernel answers unread input with, where it can.
    pub fn discard_unread(&mut self) {
        crate::connection::read_off(&mut self.stream, &mut self.buf, LINGER_READS);
    }

    /// Reads and drops input until the peer closes. Closing a socket with
    /// unread input makes the kernel send a reset, which can destroy an
    /// answer the peer has not read yet; so wait for its end-of-stream.
    fn linger(&mut self) -> io::Result<HealthStep> {
        for _ in 0..LINGER_READS {
            match self.stream.read(&mut self.buf) {
                Ok(0) => return Ok(HealthStep::Close),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(HealthStep::Keep(Interest::READABLE));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        debug!(
            "health connection closed: peer={} input kept coming after the answer",
            self.peer
        );
        Ok(HealthStep::Close)
    }
}

/// What a complete, parsed request asks for.
fn route(req: &httparse::Request<'_, '_>) -> Request {
    let bad = Request {
        route: Route::BadRequest,
        head_only: false,
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return bad;
    };
    // RFC 9112 3.2: an HTTP/1.1 request has exactly one Host; none in
    // HTTP/1.0 is fine, two never are.
    let hosts = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .count();
    if hosts > 1 || (version >= 1 && hosts == 0) {
        return bad;
    }
    let Some(path) = path_of(target) else {
        return bad;
    };
    let route = match path {
        "/livez" => Route::Live,
        "/readyz" => Route::Ready,
        "/metrics" => Route::Metrics,
        _ => Route::NotFound,
    };
    let head_only = method == "HEAD";
    let route = if route != Route::NotFound && method != "GET" && !head_only {
        Route::MethodNotAllowed
    } else {
        route
    };
    Request { route, head_only }
}

/// The path of a request target: origin form (`/metrics?x=1`) or absolute
/// form (`http://host/metrics`), without its query; `None` for anything else.
fn path_of(target: &str) -> Option<&str> {
    let path = if target.starts_with('/') {
        target
    } else {
        let (scheme, rest) = target.split_once("://")?;
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return None;
        }
        rest.find('/')
            .map_or("/", |at| rest.get(at..).unwrap_or("/"))
    };
    path.split(['?', '#']).next()
}

/// The status line's code and reason, and the body, for `route` in `state`.
fn status_line(route: Route, state: ServeState) -> (&'static str, &'static str) {
    match route {
        Route::Live => ("200 OK", "ok\n"),
        // docs/protocol.md "Lame duck and health": 503 from the first drain
        // signal on, lame duck included; the lifecycle says which.
        Route::Ready if state.is_ready() => ("200 OK", "ready\n"),
        Route::Ready => match state {
            ServeState::LameDuck => ("503 Service Unavailable", "not ready: lame duck\n"),
            ServeState::Serving | ServeState::Draining => {
                ("503 Service Unavailable", "not ready: draining\n")
            }
        },
        Route::Metrics => ("200 OK", ""),
        Route::NotFound => ("404 Not Found", "not found\n"),
        Route::MethodNotAllowed => ("405 Method Not Allowed", "method not allowed\n"),
        Route::BadRequest => ("400 Bad Request", "bad request\n"),
    }
}

/// The whole answer to `request`: head, then body unless `HEAD` asked.
fn answer(request: Request, snapshot: &MetricsSnapshot) -> Vec<u8> {
    use std::fmt::Write;
    let (status, text) = status_line(request.route, snapshot.state);
    let mut body = String::new();
    let content_type = if request.route == Route::Metrics {
        body.reserve(4096);
        metrics::render(snapshot, &ProcessStats::read(), &mut body);
        metrics::CONTENT_TYPE
    } else {
        body.push_str(text);
        "text/plain; charset=utf-8"
    };
    let mut head = String::with_capacity(192);
    // Writing to a String cannot fail.
    let _ = write!(
        head,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if request.route == Route::MethodNotAllowed {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    if request.head_only {
        return head.into_bytes();
    }
    body.insert_str(0, &head);
    body.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::metrics::tests::{check_text_format, sample_snapshot};

    /// A scripted socket: the peer's bytes `arrive` step by step, reads are
    /// cut at `read_cap`, writes follow `write_caps` (0 = WouldBlock), and
    /// what is written is recorded.
    #[derive(Debug, Default)]
    struct Fake {
        /// Everything the peer will send.
        input: Vec<u8>,
        /// Bytes of `input` sent so far.
        arrived: usize,
        /// Bytes of `input` read so far.
        read_pos: usize,
        /// The peer closes its side once all of `input` has arrived.
        peer_eof: bool,
        /// The peer never stops sending (after `input`).
        endless: bool,
        /// Most bytes one read returns; 0 = no cap.
        read_cap: usize,
        /// Per write call, cycling: most bytes taken, 0 = WouldBlock; empty = all.
        write_caps: Vec<usize>,
        writes: usize,
        /// Reads fail with this error.
        fail: Option<io::ErrorKind>,
        output: Vec<u8>,
        shut: bool,
    }

    impl Stream for Fake {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if let Some(kind) = self.fail {
                return Err(kind.into());
            }
            let available = self.arrived - self.read_pos;
            if available == 0 {
                if self.endless {
                    buf.fill(b'x');
                    return Ok(buf.len());
                }
                return if self.peer_eof && self.arrived == self.input.len() {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            let cap = if self.read_cap == 0 {
                usize::MAX
            } else {
                self.read_cap
            };
            let n = available.min(buf.len()).min(cap);
            buf[..n].copy_from_slice(&self.input[self.read_pos..self.read_pos + n]);
            self.read_pos += n;
            Ok(n)
        }
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            assert!(!self.shut, "write after shutdown");
            let cap = if self.write_caps.is_empty() {
                usize::MAX
            } else {
                self.write_caps[self.writes % self.write_caps.len()]
            };
            self.writes += 1;
            if cap == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = cap.min(buf.len());
            self.output.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn shutdown_write(&mut self) -> io::Result<()> {
            self.shut = true;
            Ok(())
        }
        fn unread_bytes(&self) -> io::Result<usize> {
            Ok(self.arrived - self.read_pos)
        }
    }

    fn conn(fake: Fake) -> HealthConn<Fake> {
        let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
        HealthConn::new(fake, peer, Instant::now())
    }

    /// A peer that sends `request` at once and closes its side.
    fn sending(request: &[u8]) -> Fake {
        Fake {
            input: request.to_vec(),
            arrived: request.len(),
            peer_eof: true,
            ..Fake::default()
        }
    }

    /// Steps `conn` until it closes (ready events are assumed after each
    /// WouldBlock); returns what was written.
    #[track_caller]
    fn run(mut conn: HealthConn<Fake>, snapshot: &MetricsSnapshot) -> Vec<u8> {
        for _ in 0..1000 {
            if conn.on_ready(snapshot) == HealthStep::Close {
                return std::mem::take(&mut conn.stream.output);
            }
        }
        panic!("health connection never closed");
    }

    /// Status code, headers and body of one response.
    struct Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Response {
        #[track_caller]
        fn header(&self, name: &str) -> &str {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
        }
    }

    #[track_caller]
    fn parse_response(bytes: &[u8]) -> Response {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(len)) = resp.parse(bytes) else {
            panic!(
                "not a complete response: {:?}",
                String::from_utf8_lossy(bytes)
            );
        };
        Response {
            status: resp.code.unwrap_or(0),
            headers: resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
            body: bytes[len..].to_vec(),
        }
    }

    #[track_caller]
    fn ask(request: &str, snapshot: &MetricsSnapshot) -> Response {
        let response = parse_response(&run(conn(sending(request.as_bytes())), snapshot));
        assert_eq!(response.header("Connection"), "close");
        if !request.starts_with("HEAD ") {
            let length: usize = response
                .header("Content-Length")
                .parse()
                .unwrap_or(usize::MAX);
            assert_eq!(
                length,
                response.body.len(),
                "Content-Length for {request:?}"
            );
        }
        response
    }

    fn get(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n")
    }

    fn serving() -> MetricsSnapshot {
        MetricsSnapshot::default()
    }

    #[test]
    fn livez_answers_200() {
        let response = ask(&get("/livez"), &serving());
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"ok\n");
        assert_eq!(response.header("Content-Type"), "text/plain; charset=utf-8");
        let draining = MetricsSnapshot {
            state: ServeState::Draining,
            ..serving()
        };
        assert_eq!(
            ask(&get("/livez"), &draining).status,
            200,
            "live while draining"
        );
    }

    #[test]
    fn readyz_answers_200_while_serving_and_503_from_the_first_drain_signal_on() {
        let at = |state| MetricsSnapshot { state, ..serving() };
        let response = ask(&get("/readyz"), &at(ServeState::Serving));
        assert_eq!(
            (response.status, response.body.as_slice()),
            (200, &b"ready\n"[..])
        );
        let response = ask(&get("/readyz"), &at(ServeState::LameDuck));
        assert_eq!(response.status, 503);
        assert_eq!(response.body, b"not ready: lame duck\n");
        let response = ask(&get("/readyz"), &at(ServeState::Draining));
        assert_eq!(response.status, 503);
        assert_eq!(response.body, b"not ready: draining\n");
    }

    #[test]
    fn metrics_answers_in_the_text_format_0_0_4() {
        let response = ask(&get("/metrics"), &sample_snapshot());
        assert_eq!(response.status, 200);
        assert_eq!(response.header("Content-Type"), "text/plain; version=0.0.4");
        let text = String::from_utf8(response.body).expect("metrics are UTF-8");
        check_text_format(&text).unwrap_or_else(|why| panic!("{why}\n{text}"));
        assert!(text.contains("\nechod_state 1\n"), "{text}");
        assert!(
            text.contains("\nprocess_open_fds "),
            "process figures at scrape time: {text}"
        );
    }

    #[test]
    fn head_gets_the_headers_of_get_without_a_body() {
        for path in ["/livez", "/readyz", "/nope"] {
            let get_bytes = run(conn(sending(get(path).as_bytes())), &serving());
            let head_request = get(path).replacen("GET", "HEAD", 1);
            let head_bytes = run(conn(sending(head_request.as_bytes())), &serving());
            let get_response = parse_response(&get_bytes);
            assert!(
                head_bytes.ends_with(b"\r\n\r\n"),
                "HEAD {path} ends with its head"
            );
            assert_eq!(
                head_bytes.len(),
                get_bytes.len() - get_response.body.len(),
                "HEAD {path}"
            );
            assert!(
                get_bytes.starts_with(&head_bytes),
                "HEAD {path}: same head as GET"
            );
        }
        let response = ask("HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &serving());
        assert_eq!(response.status, 200);
        assert!(response.body.is_empty());
        let length: usize = response.header("Content-Length").parse().unwrap_or(0);
        assert!(
            length > 500,
            "HEAD /metrics says the GET body's length: {length}"
        );
    }

    #[test]
    fn another_method_on_a_known_path_gets_405_with_allow() {
        for request in [
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
            "PUT /livez HTTP/1.1\r\nHost: x\r\n\r\n",
            "DELETE /readyz HTTP/1.0\r\n\r\n",
            "get /livez HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            let response = ask(request, &serving());
            assert_eq!(response.status, 405, "{request:?}");
            assert_eq!(response.header("Allow"), "GET, HEAD");
        }
    }

    #[test]
    fn an_unknown_path_gets_404_whatever_the_method() {
        for request in [get("/"), get("/livez/"), get("/metricsx"), get("/LIVEZ")] {
            assert_eq!(ask(&request, &serving()).status, 404, "{request:?}");
        }
        let response = ask("POST /nope HTTP/1.1\r\nHost: x\r\n\r\n", &serving());
        assert_eq!(response.status, 404);
    }

    #[test]
    fn a_query_or_an_absolute_target_reaches_the_same_path() {
        for target in [
            "/livez?verbose=1",
            "/livez#top",
            "http://localhost:9100/livez",
            "HTTP://x/livez?a",
        ] {
            assert_eq!(ask(&get(target), &serving()).status, 200, "{target}");
        }
        assert_eq!(ask(&get("http://localhost"), &serving()).status, 404);
        assert_eq!(ask(&get("ftp://x/livez"), &serving()).status, 400);
    }

    #[test]
    fn a_bad_request_gets_400() {
        let many_headers: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: y\r\n"))
            .collect();
        for request in [
            "garbage\r\n\r\n".to_owned(),
            "\x00\x01\x02\x03\n\n".to_owned(),
            "GET /livez HTTP/2.0\r\nHost: x\r\n\r\n".to_owned(),
            "GET /livez\r\n\r\n".to_owned(),
            "GET /livez HTTP/1.1\r\n\r\n".to_owned(),
            "GET /livez HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_owned(),
            "GET * HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
            "GET /livez HTTP/1.1\r\nBad Header\r\n\r\n".to_owned(),
            format!("GET /livez HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n"),
        ] {
            let response = ask(&request, &serving());
            assert_eq!(response.status, 400, "{request:?}");
            assert_eq!(response.body, b"bad request\n");
        }
    }

    #[test]
    fn what_is_not_http_at_all_gets_400_without_waiting_for_a_line_end() {
        // The start of a TLS ClientHello: no newline anywhere.
        let hello = [
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        let mut conn = conn(Fake {
            input: hello.to_vec(),
            arrived: hello.len(),
            ..Fake::default()
        });
        assert_eq!(
            conn.on_ready(&serving()),
            HealthStep::Keep(Interest::READABLE)
        );
        assert_eq!(parse_response(&conn.stream.output).status, 400);
    }

    #[test]
    fn http_1_0_needs_no_host() {
        assert_eq!(ask("GET /livez HTTP/1.0\r\n\r\n", &serving()).status, 200);
        // Bare LF line ends are read as CRLF, as most servers do.
        assert_eq!(ask("GET /livez HTTP/1.0\n\n", &serving()).status, 200);
    }

    #[test]
    fn a_request_split_over_many_reads_is_answered() {
        let request = get("/readyz");
        let mut conn = conn(Fake {
            input: request.clone().into_bytes(),
            read_cap: 1,
            ..Fake::default()
        });
        for sent in 1..request.len() {
            conn.stream.arrived = sent;
            let step = conn.on_ready(&serving());
            assert_eq!(
                step,
                HealthStep::Keep(Interest::READABLE),
                "after {sent} bytes"
            );
            assert!(conn.stream.output.is_empty(), "answered after {sent} bytes");
        }
        conn.stream.arrived = request.len();
        // Answered and shut; then waits for the peer's end-of-stream.
        assert_eq!(
            conn.on_ready(&serving()),
            HealthStep::Keep(Interest::READABLE)
        );
        assert!(conn.stream.shut);
        conn.stream.peer_eof = true;
        assert_eq!(conn.on_ready(&serving()), HealthStep::Close);
        assert_eq!(parse_response(&conn.stream.output).status, 200);
    }

    #[test]
    fn a_request_over_8_kib_is_closed_without_an_answer() {
        let mut request = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
        request.resize(REQUEST_LIMIT + 1000, b'a');
        let mut conn = conn(Fake {
            input: request,
            read_cap: 1000,
            ..Fake::default()
        });
        conn.stream.arrived = conn.stream.input.len();
        assert_eq!(conn.on_ready(&serving()), HealthStep::Close);
        assert!(conn.stream.output.is_empty());
        assert_eq!(
            conn.stream.read_pos, REQUEST_LIMIT,
            "read no more than the limit"
        );
    }

    #[test]
    fn a_request_of_exactly_8_kib_is_answered() {
        let mut request = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
        request.resize(REQUEST_LIMIT - 4, b'a');
        request.extend_from_slice(b"\r\n\r\n");
        let response = parse_response(&run(conn(sending(&request)), &serving()));
        assert_eq!(response.status, 200);
    }

    #[test]
    fn end_of_stream_before_a_whole_request_closes_without_an_answer() {
        for partial in [&b""[..], b"GET /livez HTTP/1.1\r\nHost: x\r\n"] {
            let mut conn = conn(sending(partial));
            assert_eq!(conn.on_ready(&serving()), HealthStep::Close);
            assert!(conn.stream.output.is_empty());
            assert!(!conn.stream.shut);
        }
    }

    #[test]
    fn an_answer_the_kernel_takes_in_pieces_keeps_its_unsent_tail() {
        let mut slow = sending(get("/metrics").as_bytes());
        slow.write_caps = vec![100, 0, 37, 0];
        slow.peer_eof = false;
        let mut conn = conn(slow);
        let mut rounds = 0;
        loop {
            // Each writable event: the kernel takes a piece, then would block.
            let step = conn.on_ready(&sample_snapshot());
            if conn.stream.shut {
                assert_eq!(step, HealthStep::Keep(Interest::READABLE));
                break;
            }
            assert_eq!(step, HealthStep::Keep(Interest::WRITABLE));
            assert!(conn.sent < conn.out.len(), "the unsent tail is kept");
            rounds += 1;
            assert!(rounds < 1000, "never finished writing");
        }
        assert!(rounds > 3, "the answer took several writes ({rounds})");
        let response = parse_response(&conn.stream.output);
        let text = String::from_utf8(response.body).expect("UTF-8");
        check_text_format(&text).unwrap_or_else(|why| panic!("{why}\n{text}"));
    }

    #[test]
    fn after_the_answer_input_is_dropped_until_the_peer_closes() {
        // A second, pipelined request gets no second answer.
        let two = format!("{}{}", get("/livez"), get("/readyz"));
        let mut conn = conn(Fake {
            input: two.into_bytes(),
            read_cap: 0,
            ..Fake::default()
        });
        conn.stream.arrived = conn.stream.input.len();
        assert_eq!(
            conn.on_ready(&serving()),
            HealthStep::Keep(Interest::READABLE)
        );
        assert!(conn.stream.shut, "write side shut after the one answer");
        assert_eq!(
            conn.stream.read_pos,
            conn.stream.input.len(),
            "the rest was read off"
        );
        conn.stream.peer_eof = true;
        assert_eq!(conn.on_ready(&serving()), HealthStep::Close);
        let output = String::from_utf8_lossy(&conn.stream.output).into_owned();
        assert_eq!(output.matches("HTTP/1.1 ").count(), 1, "{output}");
        assert!(output.ends_with("ok\n"), "{output}");
    }

    #[test]
    fn a_peer_that_keeps_sending_after_its_answer_is_closed() {
        let mut flood = sending(get("/livez").as_bytes());
        flood.peer_eof = false;
        flood.endless = true;
        let mut conn = conn(flood);
        assert_eq!(conn.on_ready(&serving()), HealthStep::Close);
        assert_eq!(parse_response(&conn.stream.output).status, 200);
    }

    #[test]
    fn a_socket_error_closes_the_connection() {
        let mut conn = conn(Fake {
            fail: Some(io::ErrorKind::ConnectionReset),
            ..Fake::default()
        });
        assert_eq!(conn.on_ready(&serving()), HealthStep::Close);
    }

    #[test]
    fn a_spurious_event_changes_nothing() {
        let mut conn = conn(Fake::default());
        for _ in 0..3 {
            assert_eq!(
                conn.on_ready(&serving()),
                HealthStep::Keep(Interest::READABLE)
            );
        }
        assert_eq!(conn.len, 0);
    }
}
