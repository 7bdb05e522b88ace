//! The API listener's server: what actix-web's `HttpServer::listen` builds (actix-server
//! accepting, actix-http's HTTP/1 dispatcher per connection, the same settings), with every
//! connection's socket wrapped in a [`ContractStream`], so that the responses the dispatcher
//! writes by itself carry the contract's `{"detail", "error_code"}` body too.
//!
//! Why a stream: actix-http's dispatcher answers a malformed request head (400), a head not
//! received within the client request timeout (408) and a head too large or with too many
//! headers (431) before any service sees a request, with a response it builds inline with an
//! empty body (actix-http 3, `h1/dispatcher.rs`); it offers no hook to replace it. The
//! application never answers one of these statuses with an empty body (`error::contract_errors`
//! renders every error with one), so on the way out a response head with status 400, 408 or 431
//! and `content-length: 0` is the dispatcher's, and is rewritten: same status and headers, the
//! [`ApiError`]'s JSON body with its `content-type` and `content-length`, and `connection: close`
//! (the dispatcher closes the connection after each of them).
//!
//! Invariants of [`ContractStream`]:
//!
//! - Response heads are found by following HTTP/1 message framing (RFC 9112 §6.3) through what
//!   the dispatcher writes: `content-length`, `chunked`, no body for 1xx, 204, 304 and the
//!   answers to `HEAD` requests (learnt by decoding the requests read, with actix-http's own
//!   decoder). Everything but such an error head passes byte for byte. When the framing cannot
//!   be followed (a body delimited by the connection's close, a head that does not parse), the
//!   rest of the connection passes unchanged.
//! - Every other byte goes from the dispatcher's buffer straight to the socket, in writes as
//!   large as the dispatcher's, as without this stream: responses are followed, not copied.
//!   Only a rewritten error (and a head not whole in one write, which actix-http does not
//!   write) is copied, into a buffer that must be empty before anything more is taken (flush
//!   and shutdown empty it first). This relies on what `AsyncWrite` callers do and actix-http's
//!   dispatcher does: bytes the socket did not take are written again, first.
//! - Nothing taken is lost: the dispatcher drops a connection right after its own error without
//!   waiting for the socket, so a stream dropped with bytes still to write, or after such an
//!   error, is closed gracefully in the background (write, shut down, read until the client
//!   closes: no reset that could discard the answer), within the client disconnect timeout.
//! - HTTP/1 only, as before (no h2c), plain TCP (TLS is terminated in front, if anywhere).

use std::collections::VecDeque;
use std::io;
use std::net::TcpListener;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use actix_http::body::MessageBody;
use actix_http::error::DispatchError;
use actix_http::h1::{Codec, Message};
use actix_http::{HttpService, KeepAlive, Method, Request, Response, ServiceConfig};
use actix_server::Server;
use actix_service::{IntoServiceFactory, Service, ServiceFactory, ServiceFactoryExt, map_config};
use actix_web::dev::{AppConfig, fn_service};
use actix_web::rt::net::TcpStream;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::codec::Decoder;

use crate::error::ApiError;

/// How the API listener serves: actix-web's `HttpServer` defaults, named.
#[derive(Debug, Clone, Copy)]
pub struct ServerSettings {
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    /// How long in-flight requests may take to finish on a graceful stop.
    pub shutdown_timeout: Duration,
    /// Longest a connection may take to send its first request head; past it, 408.
    pub client_request_timeout: Duration,
    /// Longest a connection may wait idle between requests.
    pub keep_alive: Duration,
    /// Longest the closing of a connection may take.
    pub client_disconnect_timeout: Duration,
    /// Most connections one worker serves at once.
    pub max_connections: usize,
    /// Most blocking threads of one worker (what `web::block` runs on); 0 keeps actix's default.
    pub max_blocking_threads: usize,
}

impl Default for ServerSettings {
    /// actix-web's `HttpServer` and actix-server's defaults.
    fn default() -> Self {
        Self {
            workers: 0,
            shutdown_timeout: Duration::from_secs(30),
            client_request_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(5),
            client_disconnect_timeout: Duration::from_secs(1),
            max_connections: 25_600,
            max_blocking_threads: 0,
        }
    }
}

/// Serves the application `app` builds on `listener`, HTTP/1 over plain TCP, each connection a
/// [`ContractStream`]. Call `run` on the result inside the actix runtime; the server does not
/// handle signals (stop it through its handle).
///
/// The application sees the `AppConfig` default (host `localhost:8080`), which only matters for
/// a request without a `Host` header: actix-web's constructor of the listener's own is private.
///
/// # Errors
///
/// When the listener cannot be registered.
pub fn server<F, I, S, B>(
    listener: TcpListener,
    settings: ServerSettings,
    app: F,
) -> io::Result<Server>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: std::fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as Service<Request>>::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    let addr = listener.local_addr()?;
    let mut builder = Server::build()
        .disable_signals()
        .shutdown_timeout(settings.shutdown_timeout.as_secs().max(1))
        .max_concurrent_connections(settings.max_connections);
    if settings.workers > 0 {
        builder = builder.workers(settings.workers);
    }
    if settings.max_blocking_threads > 0 {
        builder = builder.worker_max_blocking_threads(settings.max_blocking_threads);
    }
    let graceful_shutdown = builder.graceful_shutdown_signal();
    Ok(builder
        .listen("metrics-query-api", listener, move || {
            let signal = graceful_shutdown.clone();
            let application = app().into_factory().map_err(|err| {
                let err: actix_web::Error = err.into();
                err.error_response()
            });
            let http = HttpService::build()
                .graceful_shutdown_signal(move || {
                    let signal = signal.clone();
                    async move { signal.notified().await }
                })
                .keep_alive(KeepAlive::Timeout(settings.keep_alive))
                .client_request_timeout(settings.client_request_timeout)
                .client_disconnect_timeout(settings.client_disconnect_timeout)
                .h1_allow_half_closed(true)
                .local_addr(addr)
                .h1(map_config(application, |()| AppConfig::default()));
            // Only how requests are framed matters to the streams' decoders.
            let decoding = ServiceConfig::default();
            fn_service(move |io: TcpStream| {
                // A body goes out in several writes, the last of them usually shorter than a
                // segment: with Nagle's algorithm that one would wait for the client's
                // (possibly delayed, up to 40 ms) acknowledgement of the others.
                if let Err(err) = io.set_nodelay(true) {
                    tracing::debug!(error = %err, "could not set TCP_NODELAY");
                }
                let peer = io.peer_addr().ok();
                std::future::ready(Ok::<_, DispatchError>((
                    ContractStream::new(io, decoding.clone(), &settings),
                    peer,
                )))
            })
            .and_then(http)
        })?
        .run())
}

/// A connection's socket that rewrites the dispatcher's own error responses (see the module
/// docs).
#[derive(Debug)]
pub struct ContractStream {
    /// `None` once handed to [`close_gracefully`].
    io: Option<TcpStream>,
    requests: Requests,
    responses: Responses,
    /// Bytes taken from the dispatcher, not yet in the socket: rewritten errors, and heads
    /// that were not whole in one write.
    out: BytesMut,
    /// How many of the next bytes written were followed already and pass unchanged (the
    /// dispatcher writes again, first, what the socket did not take).
    owed: usize,
    /// Whether the dispatcher shut the socket's write side down.
    shut_down: bool,
    /// Longest [`close_gracefully`] takes.
    linger: Duration,
}

impl ContractStream {
    /// Wraps `io`; `config` is the worker's request decoding configuration (one per worker:
    /// each starts a task); `settings` give the timeouts.
    pub fn new(io: TcpStream, config: ServiceConfig, settings: &ServerSettings) -> Self {
        Self {
            io: Some(io),
            requests: Requests::new(config),
            responses: Responses::new(settings.client_request_timeout),
            out: BytesMut::new(),
            owed: 0,
            shut_down: false,
            linger: settings.client_disconnect_timeout,
        }
    }

    fn io(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        self.io
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::ErrorKind::NotConnected.into())
    }

    /// Writes what waits in `out`.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let Some(io) = &mut self.io else {
                return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
            };
            match ready!(Pin::new(io).poll_write(cx, &self.out))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                written => self.out.advance(written),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for ContractStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(this.io()?.poll_read(cx, buf))?;
        this.requests.read(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ContractStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        if this.owed == 0 {
            match this
                .responses
                .follow(buf, &mut this.requests, &mut this.out)
            {
                Step::Pass(unchanged) => this.owed = unchanged,
                Step::Took(taken) => {
                    // Start writing now; what the socket does not take yet goes before the
                    // next write, at the flush that follows, or when the stream is dropped.
                    if let Poll::Ready(Err(err)) = this.poll_write_out(cx) {
                        return Poll::Ready(Err(err));
                    }
                    return Poll::Ready(Ok(taken));
                }
            }
        }
        // Bytes already followed pass as they are, in writes as large as the dispatcher's.
        let unchanged = this.owed.min(buf.len());
        if unchanged == 0 {
            return Poll::Ready(Ok(0));
        }
        let written = ready!(this.io()?.poll_write(cx, &buf[..unchanged]))?;
        this.owed -= written;
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.responses.flush(&mut this.out);
        ready!(this.poll_write_out(cx))?;
        this.io()?.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        let this = self.get_mut();
        ready!(this.io()?.poll_shutdown(cx))?;
        this.shut_down = true;
        Poll::Ready(Ok(()))
    }
}

impl Drop for ContractStream {
    /// After one of its own errors, the dispatcher drops the connection at once, possibly with
    /// bytes still here (a slow reader) and unread requests in the socket (a head over the
    /// limit): closing then would lose the former and reset the connection, which can discard
    /// the response at the client. Such a connection is closed gracefully instead.
    fn drop(&mut self) {
        // Outside a runtime (or in one shutting down) the socket simply closes.
        if (!self.out.is_empty() || self.responses.closing)
            && let Some(io) = self.io.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let out = std::mem::take(&mut self.out);
            runtime.spawn(close_gracefully(io, out, self.shut_down, self.linger));
        }
    }
}

/// Writes `out`, shuts the write side down and reads until the client closes (RFC 9112 §9.6),
/// for `linger` at most.
async fn close_gracefully(mut io: TcpStream, out: BytesMut, shut_down: bool, linger: Duration) {
    let closing = async {
        io.write_all(&out).await?;
        if !shut_down {
            io.shutdown().await?;
        }
        let mut discarded = [0; 4096];
        while io.read(&mut discarded).await? > 0 {}
        Ok::<_, io::Error>(())
    };
    if let Ok(Err(err)) = tokio::time::timeout(linger, closing).await {
        tracing::debug!(error = %err, "closing a connection after an error failed");
    }
}

/// The requests read on the connection, decoded by a decoder of their own (actix-http's, so
/// they frame as the dispatcher frames them): whether each asked `HEAD`, whose answer has no
/// body whatever its head says.
#[derive(Debug)]
struct Requests {
    /// `None` once a request fails to decode: the dispatcher answers it last.
    decoder: Option<Codec>,
    /// Bytes read and not yet decoded.
    read: BytesMut,
    /// For each request not yet answered, in order: whether it is a `HEAD`.
    heads: VecDeque<bool>,
}

impl Requests {
    fn new(config: ServiceConfig) -> Self {
        Self {
            decoder: Some(Codec::new(config)),
            read: BytesMut::new(),
            heads: VecDeque::new(),
        }
    }

    /// Decodes what `bytes` completes.
    fn read(&mut self, bytes: &[u8]) {
        let Some(decoder) = &mut self.decoder else {
            return;
        };
        if bytes.is_empty() {
            return;
        }
        self.read.extend_from_slice(bytes);
        loop {
            match decoder.decode(&mut self.read) {
                Ok(Some(Message::Item(request))) => {
                    self.heads.push_back(request.method() == Method::HEAD);
                }
                Ok(Some(Message::Chunk(_))) => {}
                Ok(None) => return,
                Err(_) => {
                    self.decoder = None;
                    self.read = BytesMut::new();
                    return;
                }
            }
        }
    }

    /// Whether the next request to be answered is a `HEAD`.
    fn next_is_head(&mut self) -> bool {
        self.heads.pop_front().unwrap_or(false)
    }
}

/// Where the responses written so far stand.
#[derive(Debug)]
enum Framing {
    /// Between responses: what comes is a head.
    Head,
    /// Inside a body of known length: the bytes left.
    Sized(u64),
    /// Inside a chunked body.
    Chunked(Chunked),
    /// The rest of the connection passes unchanged.
    Opaque,
}

/// What [`Responses::follow`] did with the bytes written.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Their first `n` pass unchanged.
    Pass(usize),
    /// Their first `n` were taken into `out`.
    Took(usize),
}

/// What a whole response head is.
#[derive(Debug)]
enum Kind {
    /// The dispatcher's own error: the bytes to send instead.
    Rewrite(Vec<u8>),
    /// An interim (1xx) response.
    Interim,
    /// A final response, with the framing of its body (unless it answers a `HEAD`).
    Final(Framing),
    /// Not a head this stream can follow.
    Unknown,
}

/// The longest response head followed; a longer one turns the connection [`Framing::Opaque`].
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// The response side of a [`ContractStream`].
#[derive(Debug)]
struct Responses {
    framing: Framing,
    /// The head being written, until its end.
    head: BytesMut,
    /// The client request timeout, for the 408's detail.
    head_timeout: Duration,
    /// Whether a dispatcher error was written: the connection closes after it.
    closing: bool,
}

impl Responses {
    fn new(head_timeout: Duration) -> Self {
        Self {
            framing: Framing::Head,
            head: BytesMut::new(),
            head_timeout,
            closing: false,
        }
    }

    /// Follows `bytes` written by the dispatcher: either a first part that passes unchanged,
    /// or bytes taken into `out` (a dispatcher error rewritten, a head not whole in one write).
    fn follow(&mut self, bytes: &[u8], requests: &mut Requests, out: &mut BytesMut) -> Step {
        let mut at = 0;
        while at < bytes.len() {
            let rest = &bytes[at..];
            match &mut self.framing {
                Framing::Opaque => at = bytes.len(),
                Framing::Sized(left) => {
                    let taken = usize::try_from(*left).map_or(rest.len(), |l| l.min(rest.len()));
                    *left -= taken as u64;
                    if *left == 0 {
                        self.framing = Framing::Head;
                    }
                    at += taken;
                }
                Framing::Chunked(chunked) => match chunked.take(rest) {
                    Some((taken, ended)) => {
                        at += taken;
                        if ended {
                            self.framing = Framing::Head;
                        }
                    }
                    None => self.framing = Framing::Opaque,
                },
                Framing::Head => {
                    let held = !self.head.is_empty();
                    match head_end(&self.head, rest) {
                        Some(end) if !held => {
                            let kind = self.classify(&rest[..end]);
                            if matches!(kind, Kind::Rewrite(_)) && at > 0 {
                                return Step::Pass(at);
                            }
                            match self.apply(kind, requests) {
                                Some(rewritten) => {
                                    out.extend_from_slice(&rewritten);
                                    return Step::Took(end);
                                }
                                None => at += end,
                            }
                        }
                        // A head not whole in one write (actix-http writes them whole): held
                        // until it is, then written from `out`.
                        _ if at > 0 => return Step::Pass(at),
                        Some(end) => {
                            let mut head = std::mem::take(&mut self.head);
                            head.extend_from_slice(&rest[..end]);
                            let kind = self.classify(&head);
                            match self.apply(kind, requests) {
                                Some(rewritten) => out.extend_from_slice(&rewritten),
                                None => out.extend_from_slice(&head),
                            }
                            head.clear();
                            self.head = head;
                            return Step::Took(end);
                        }
                        None => {
                            self.head.extend_from_slice(rest);
                            if self.head.len() > MAX_RESPONSE_HEAD {
                                out.extend_from_slice(&self.head.split());
                                self.framing = Framing::Opaque;
                            }
                            return Step::Took(rest.len());
                        }
                    }
                }
            }
        }
        Step::Pass(at)
    }

    /// A flush with a head not yet whole: actix-http encodes heads whole, so this is not its
    /// framing; the head goes out as it is and the rest of the connection passes unchanged.
    fn flush(&mut self, out: &mut BytesMut) {
        if !self.head.is_empty() {
            out.extend_from_slice(&self.head.split());
            self.framing = Framing::Opaque;
        }
    }

    /// What the whole response head `head` is.
    fn classify(&self, head: &[u8]) -> Kind {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut response = httparse::Response::new(&mut headers);
        let code = match response.parse(head) {
            Ok(httparse::Status::Complete(_)) => response.code,
            _ => None,
        };
        let Some(code) = code else {
            return Kind::Unknown;
        };
        if (100..200).contains(&code) {
            // Interim: the final response follows (101 hands the connection over).
            return if code == 101 {
                Kind::Unknown
            } else {
                Kind::Interim
            };
        }
        let mut length = Some(None);
        let mut chunked = false;
        for header in response.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                length = std::str::from_utf8(header.value)
                    .ok()
                    .and_then(|value| value.trim().parse::<u64>().ok())
                    .map(Some);
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = header
                    .value
                    .rsplit(|&byte| byte == b',')
                    .next()
                    .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
        }
        let Some(length) = length else {
            // A content-length that does not parse: not actix-http's.
            return Kind::Unknown;
        };
        if !chunked
            && length == Some(0)
            && let Some(error) = self.dispatcher_error(code)
        {
            return Kind::Rewrite(rewrite(head, &response, &error));
        }
        Kind::Final(if code == 204 || code == 304 {
            Framing::Head
        } else if chunked {
            Framing::Chunked(Chunked::default())
        } else {
            match length {
                Some(0) => Framing::Head,
                Some(length) => Framing::Sized(length),
                None => Framing::Opaque,
            }
        })
    }

    /// Sets the framing of what follows a head of `kind`; returns its rewrite, if any.
    fn apply(&mut self, kind: Kind, requests: &mut Requests) -> Option<Vec<u8>> {
        self.framing = match kind {
            Kind::Rewrite(rewritten) => {
                self.framing = Framing::Head;
                self.closing = true;
                return Some(rewritten);
            }
            Kind::Interim => Framing::Head,
            // Only final responses answer requests.
            Kind::Final(_) if requests.next_is_head() => Framing::Head,
            Kind::Final(framing) => framing,
            Kind::Unknown => Framing::Opaque,
        };
        None
    }

    /// The error a bodiless response with status `code` is, if the dispatcher writes it.
    fn dispatcher_error(&self, code: u16) -> Option<ApiError> {
        match code {
            400 => Some(ApiError::MalformedHead),
            408 => Some(ApiError::HeadTimeout(self.head_timeout)),
            431 => Some(ApiError::HeadTooLarge),
            _ => None,
        }
    }
}

/// Where in `bytes` the head begun with `before` ends: just past its first empty line, which
/// may straddle the two.
fn head_end(before: &[u8], bytes: &[u8]) -> Option<usize> {
    const END: &[u8] = b"\r\n\r\n";
    (1..END.len())
        .filter(|&split| before.ends_with(&END[..split]) && bytes.starts_with(&END[split..]))
        .map(|split| END.len() - split)
        .min()
        .or_else(|| {
            bytes
                .windows(END.len())
                .position(|window| window == END)
                .map(|at| at + END.len())
        })
}

/// `head` with `error`'s body: the status line and headers as they are, except the framing
/// and connection headers, which say what is sent now.
fn rewrite(head: &[u8], response: &httparse::Response<'_, '_>, error: &ApiError) -> Vec<u8> {
    let body = error.to_json();
    let mut out = Vec::with_capacity(head.len() + 96 + body.len());
    let status_line = head
        .windows(2)
        .position(|window| window == b"\r\n")
        .map_or(head, |end| &head[..end + 2]);
    out.extend_from_slice(status_line);
    for header in response.headers.iter() {
        let replaced = [
            "content-length",
            "content-type",
            "connection",
            "transfer-encoding",
        ]
        .iter()
        .any(|name| header.name.eq_ignore_ascii_case(name));
        if !replaced {
            out.extend_from_slice(header.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(header.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(
        format!(
            "content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body);
    out
}

/// Where a chunked body (RFC 9112 §7.1) stands.
#[derive(Debug)]
enum Chunked {
    /// In a chunk-size line: the size so far, whether a digit was seen, whether the digits
    /// ended (an extension or the line's end follows).
    Size {
        size: u64,
        digits: bool,
        ended: bool,
    },
    /// In a chunk's data: the bytes left.
    Data(u64),
    /// In the CRLF after a chunk's data: the bytes left.
    DataEnd(u8),
    /// In the trailer section: whether the current line is empty so far.
    Trailer { empty: bool },
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked::Size {
            size: 0,
            digits: false,
            ended: false,
        }
    }
}

impl Chunked {
    /// Follows `bytes`; returns how many belong to the body and whether it ended there, or
    /// `None` when they are not a chunked body.
    fn take(&mut self, bytes: &[u8]) -> Option<(usize, bool)> {
        let mut at = 0;
        while at < bytes.len() {
            match self {
                Chunked::Size {
                    size,
                    digits,
                    ended,
                } => {
                    let byte = bytes[at];
                    at += 1;
                    match byte {
                        b'\n' if *digits => {
                            *self = if *size == 0 {
                                Chunked::Trailer { empty: true }
                            } else {
                                Chunked::Data(*size)
                            };
                        }
                        b'\n' => return None,
                        _ if *ended => {}
                        b';' | b'\r' | b' ' | b'\t' if *digits => *ended = true,
                        _ => {
                            let digit = char::from(byte).to_digit(16)?;
                            *size = size.checked_mul(16)?.checked_add(u64::from(digit))?;
                            *digits = true;
                        }
                    }
                }
                Chunked::Data(left) => {
                    let taken = usize::try_from(*left)
                        .map_or(bytes.len() - at, |left| left.min(bytes.len() - at));
                    at += taken;
                    *left -= taken as u64;
                    if *left == 0 {
                        *self = Chunked::DataEnd(2);
                    }
                }
                Chunked::DataEnd(left) => {
                    let expected = if *left == 2 { b'\r' } else { b'\n' };
                    if bytes[at] != expected {
                        return None;
                    }
                    at += 1;
                    *left -= 1;
                    if *left == 0 {
                        *self = Chunked::default();
                    }
                }
                Chunked::Trailer { empty } => {
                    let byte = bytes[at];
                    at += 1;
                    match byte {
                        b'\n' if *empty => return Some((at, true)),
                        b'\n' => *empty = true,
                        b'\r' => {}
                        _ => *empty = false,
                    }
                }
            }
        }
        Some((at, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "date: Wed, 02 Dec 2026 05:00:00 GMT\r\n";

    /// What goes out when the dispatcher writes `written` in writes cut at `cuts`, after
    /// reading `requests`.
    fn out(requests: &str, written: &str, cuts: &[usize]) -> String {
        let mut reqs = Requests::new(ServiceConfig::default());
        reqs.read(requests.as_bytes());
        let mut responses = Responses::new(Duration::from_secs(5));
        let mut out = BytesMut::new();
        let mut from = 0;
        for &cut in cuts.iter().chain([written.len()].iter()) {
            // What the stream does with one write, until it took all of it.
            let mut write = &written.as_bytes()[from..cut];
            while !write.is_empty() {
                let taken = match responses.follow(write, &mut reqs, &mut out) {
                    Step::Pass(unchanged) => {
                        out.extend_from_slice(&write[..unchanged]);
                        unchanged
                    }
                    Step::Took(taken) => taken,
                };
                assert!(taken > 0, "no progress");
                write = &write[taken..];
            }
            from = cut;
        }
        responses.flush(&mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    /// `out` with every way of cutting `written` in two and three.
    fn out_cut_anywhere(requests: &str, written: &str) -> String {
        let whole = out(requests, written, &[]);
        for cut in 0..=written.len() {
            assert_eq!(out(requests, written, &[cut]), whole, "cut at {cut}");
            for second in cut..=written.len() {
                assert_eq!(
                    out(requests, written, &[cut, second]),
                    whole,
                    "cut at {cut}, {second}"
                );
            }
        }
        whole
    }

    fn bad_request() -> String {
        format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n{DATE}\r\n")
    }

    fn rewritten_bad_request() -> String {
        let body = String::from_utf8(ApiError::MalformedHead.to_json()).unwrap();
        format!(
            "HTTP/1.1 400 Bad Request\r\n{DATE}content-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[actix_web::test]
    async fn each_dispatcher_error_gets_its_body() {
        for (status, error) in [
            ("400 Bad Request", ApiError::MalformedHead),
            (
                "408 Request Timeout",
                ApiError::HeadTimeout(Duration::from_secs(5)),
            ),
            (
                "431 Request Header Fields Too Large",
                ApiError::HeadTooLarge,
            ),
        ] {
            let body = String::from_utf8(error.to_json()).unwrap();
            assert_eq!(
                out_cut_anywhere(
                    "",
                    &format!(
                        "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n{DATE}\r\n"
                    )
                ),
                format!(
                    "HTTP/1.1 {status}\r\n{DATE}content-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
            );
        }
    }

    #[actix_web::test]
    async fn responses_of_the_application_pass_unchanged() {
        // Bodies that look like the dispatcher's error, sized and chunked.
        let lookalike = bad_request();
        let written = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n{DATE}\r\n{{}}\
             HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n{DATE}\r\n\
             5\r\nHTTP/\r\n{:x};ext=1\r\n{lookalike}\r\n0\r\n\r\n\
             HTTP/1.1 204 No Content\r\n{DATE}\r\n\
             HTTP/1.1 100 Continue\r\n\r\n\
             HTTP/1.1 404 Not Found\r\ncontent-length: {}\r\n{DATE}\r\n{lookalike}",
            lookalike.len(),
            lookalike.len(),
        );
        assert_eq!(out_cut_anywhere("", &written), written);
    }

    #[actix_web::test]
    async fn an_error_after_responses_is_found_by_their_framing() {
        let written = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{DATE}\r\n{{}}\
             HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n{DATE}\r\n\
             2\r\nab\r\n0\r\nx-trailer: 1\r\n\r\n{}",
            bad_request()
        );
        let expected = written.replace(&bad_request(), &rewritten_bad_request());
        assert_eq!(out_cut_anywhere("", &written), expected);
    }

    #[actix_web::test]
    async fn the_answer_to_a_head_request_has_no_body() {
        let requests = "HEAD /metrics HTTP/1.1\r\nhost: x\r\n\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n";
        let written = format!(
            "HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 64\r\n{DATE}\r\n{}",
            bad_request()
        );
        assert_eq!(
            out(requests, &written, &[]),
            written.replace(&bad_request(), &rewritten_bad_request())
        );
        // Without the request, the same bytes read as a body.
        assert_eq!(out("", &written, &[]), written);
    }

    #[actix_web::test]
    async fn what_cannot_be_followed_passes_unchanged() {
        for written in [
            format!(
                "HTTP/1.1 200 OK\r\n{DATE}\r\nbody until the close{}",
                bad_request()
            ),
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n{}",
                bad_request()
            ),
            format!(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n{}",
                bad_request()
            ),
            format!("not a head\r\n\r\n{}", bad_request()),
        ] {
            assert_eq!(out_cut_anywhere("", &written), written);
        }
    }
}
