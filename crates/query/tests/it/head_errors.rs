//! The errors actix-http answers before a request reaches the application (a malformed head,
//! a head too large or with too many headers, a head not received in time) carry the contract's
//! body, over real HTTP/1.1 on loopback against the service; normal, keep-alive and pipelined
//! requests on the same connections are answered as before.

use std::time::{Duration, Instant};

use metrics_query::error::{MAX_HEAD_BYTES, MAX_HEADERS};
use metrics_test_support::TestDatabase;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::{TestApp, error, settings};

/// A response read off the connection.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// Status, content type and JSON body, for whole-value assertions.
    fn contract(&self) -> (u16, Option<&str>, Value) {
        (self.status, self.header("content-type"), self.json())
    }
}

/// A raw HTTP/1.1 connection to the API.
struct Connection {
    stream: TcpStream,
    /// Bytes read past the last response.
    read: Vec<u8>,
}

impl Connection {
    async fn open(app: &TestApp) -> Self {
        let address = app.api.trim_start_matches("http://");
        Self {
            stream: TcpStream::connect(address).await.unwrap(),
            read: Vec::new(),
        }
    }

    /// A connection that takes answers in slowly: a receive buffer of `bytes`, so that the
    /// service's writes fill the socket and are only partly taken.
    async fn open_narrow(app: &TestApp, bytes: u32) -> Self {
        let address = app.api.trim_start_matches("http://").parse().unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(bytes).unwrap();
        Self {
            stream: socket.connect(address).await.unwrap(),
            read: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn fill(&mut self) {
        let mut buf = [0; 8192];
        let read = self.stream.read(&mut buf).await.unwrap();
        assert!(
            read > 0,
            "the connection closed in a response: {:?}",
            String::from_utf8_lossy(&self.read)
        );
        self.read.extend_from_slice(&buf[..read]);
    }

    /// Reads the next response; `head_request`: the answer to a `HEAD`, without a body.
    async fn response(&mut self, head_request: bool) -> Response {
        let (status, headers, head_len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(len) = response.parse(&self.read).unwrap() {
                let headers = response
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_owned(),
                            String::from_utf8(h.value.to_vec()).unwrap(),
                        )
                    })
                    .collect::<Vec<_>>();
                break (response.code.unwrap(), headers, len);
            }
            self.fill().await;
        };
        self.read.drain(..head_len);
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if head_request {
            return response;
        }
        assert_eq!(response.header("transfer-encoding"), None, "{response:?}");
        let length: usize = response
            .header("content-length")
            .unwrap_or_else(|| panic!("no content-length: {response:?}"))
            .parse()
            .unwrap();
        while self.read.len() < length {
            self.fill().await;
        }
        response.body = self.read.drain(..length).collect();
        response
    }

    /// Asserts that the server closed the connection with nothing more to say.
    async fn assert_closed(mut self) {
        assert_eq!(self.read, b"", "bytes after the last response");
        let mut rest = Vec::new();
        self.stream.read_to_end(&mut rest).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&rest), "");
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n")
}

/// A request head actix-http cannot parse, and what it is.
const MALFORMED: [(&str, &str); 2] = [
    (
        "GET /metrics HTTP/1.1 extra\r\nhost: localhost\r\n\r\n",
        "a malformed request line",
    ),
    (
        "GET /metrics HTTP/1.1\r\nhost: localhost\r\nno colon here\r\n\r\n",
        "a header without a colon",
    ),
];

fn malformed_head() -> Value {
    error(
        "Malformed request: its request line or a header could not be parsed",
        "BAD_REQUEST",
    )
}

fn head_too_large() -> Value {
    error(
        "The request head is 128 KiB or more, or has more than 96 headers",
        "REQUEST_HEADER_FIELDS_TOO_LARGE",
    )
}

const JSON: Option<&str> = Some("application/json");

#[actix_web::test]
async fn a_malformed_head_is_a_bad_request_with_the_contract_body() {
    let db = TestDatabase::migrated();
    let app = TestApp::spawn(settings(db.url()));
    for (request, what) in MALFORMED {
        let mut connection = Connection::open(&app).await;
        connection.send(request.as_bytes()).await;
        let response = connection.response(false).await;
        assert_eq!(response.contract(), (400, JSON, malformed_head()), "{what}");
        assert_eq!(response.header("connection"), Some("close"), "{what}");
        connection.assert_closed().await;
    }
    app.stop().await;
}

#[actix_web::test]
async fn the_answer_to_a_malformed_head_survives_bytes_sent_after_it() {
    let db = TestDatabase::migrated();
    let app = TestApp::spawn(settings(db.url()));
    let mut connection = Connection::open(&app).await;
    // More than the service reads before it answers: were the socket closed with them unread,
    // the connection would be reset, and the answer could be lost with it.
    let mut request = MALFORMED[0].0.as_bytes().to_vec();
    request.resize(8 * MAX_HEAD_BYTES, b'a');
    connection.send(&request).await;
    let response = connection.response(false).await;
    assert_eq!(response.contract(), (400, JSON, malformed_head()));
    connection.assert_closed().await;
    app.stop().await;
}

#[actix_web::test]
async fn a_head_over_the_limit_is_431_with_the_contract_body() {
    let db = TestDatabase::migrated();
    let app = TestApp::spawn(settings(db.url()));
    let mut connection = Connection::open(&app).await;
    // A head that never ends, half as large again as the limit: the service stops reading it
    // at the limit, and answers.
    let mut request = b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nx-long: ".to_vec();
    request.resize(MAX_HEAD_BYTES * 3 / 2, b'a');
    connection.send(&request).await;
    let response = connection.response(false).await;
    assert_eq!(response.contract(), (431, JSON, head_too_large()));
    assert_eq!(response.header("connection"), Some("close"));
    connection.assert_closed().await;
    app.stop().await;
}

#[actix_web::test]
async fn too_many_headers_are_431_with_the_contract_body() {
    let db = TestDatabase::migrated();
    let app = TestApp::spawn(settings(db.url()));
    let mut connection = Connection::open(&app).await;
    let mut request = "GET /metrics HTTP/1.1\r\nhost: localhost\r\n".to_owned();
    for header in 0..MAX_HEADERS {
        request.push_str(&format!("x-header-{header}: {header}\r\n"));
    }
    request.push_str("\r\n");
    connection.send(request.as_bytes()).await;
    let response = connection.response(false).await;
    assert_eq!(response.contract(), (431, JSON, head_too_large()));
    connection.assert_closed().await;
    app.stop().await;
}

#[actix_web::test]
async fn a_head_not_received_in_time_is_408_with_the_contract_body() {
    const HEADER_TIMEOUT_MS: u64 = 1200;
    let db = TestDatabase::migrated();
    let mut settings = settings(db.url());
    settings.http.header_timeout = Duration::from_millis(HEADER_TIMEOUT_MS);
    let app = TestApp::spawn(settings);
    let mut connection = Connection::open(&app).await;
    let sent = Instant::now();
    connection
        .send(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\n")
        .await;
    // The service answers once the timeout has passed, not before.
    let response = connection.response(false).await;
    assert!(
        sent.elapsed() >= Duration::from_millis(HEADER_TIMEOUT_MS - 200),
        "answered after {:?}",
        sent.elapsed()
    );
    assert_eq!(
        response.contract(),
        (
            408,
            JSON,
            error(
                &format!("The request head was not received within {HEADER_TIMEOUT_MS} ms"),
                "REQUEST_TIMEOUT"
            )
        )
    );
    assert_eq!(response.header("connection"), Some("close"));
    connection.assert_closed().await;
    app.stop().await;
}

#[actix_web::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_keep_alive_time() {
    const KEEP_ALIVE_MS: u64 = 1200;
    let db = TestDatabase::migrated();
    let mut settings = settings(db.url());
    settings.http.keep_alive = Duration::from_millis(KEEP_ALIVE_MS);
    let app = TestApp::spawn(settings);
    let mut connection = Connection::open(&app).await;
    connection.send(get("/metrics").as_bytes()).await;
    assert_eq!(connection.response(false).await.status, 200);
    let idle = Instant::now();
    connection.assert_closed().await;
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_millis(KEEP_ALIVE_MS - 200) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
    app.stop().await;
}

#[actix_web::test]
async fn a_keep_alive_connection_serves_requests_then_a_malformed_one_gets_the_contract_body() {
    let db = TestDatabase::migrated();
    let app = TestApp::spawn(settings(db.url()));
    let mut connection = Connection::open(&app).await;

    connection.send(get("/openapi.json").as_bytes()).await;
    let openapi = connection.response(false).await;
    assert_eq!(
        (openapi.status, openapi.header("content-type")),
        (200, JSON)
    );
    assert_eq!(
        openapi.json()["openapi"].as_str().map(|v| &v[..2]),
        Some("3.")
    );

    // The answer to a HEAD says how long the body would be, and has none.
    connection
        .send(b"HEAD /openapi.json HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await;
    let head = connection.response(true).await;
    assert!(head.header("content-length").is_some(), "{head:?}");

    connection.send(get("/nowhere").as_bytes()).await;
    let not_found = connection.response(false).await;
    assert_eq!(
        not_found.contract(),
        (404, JSON, error("Not found", "NOT_FOUND"))
    );

    connection.send(MALFORMED[0].0.as_bytes()).await;
    assert_eq!(
        connection.response(false).await.contract(),
        (400, JSON, malformed_head())
    );
    connection.assert_closed().await;
    app.stop().await;
}

#[actix_web::test]
async fn pipelined_requests_are_answered_in_order_up_to_a_malformed_one() {
    let db = TestDatabase::migrated();
    let app = TestApp::spawn(settings(db.url()));
    let mut connection = Connection::open(&app).await;
    let pipeline = [
        get("/openapi.json"),
        get("/nowhere"),
        get("/openapi.json"),
        MALFORMED[1].0.to_owned(),
        get("/openapi.json"),
    ]
    .concat();
    connection.send(pipeline.as_bytes()).await;

    let first = connection.response(false).await;
    assert_eq!((first.status, first.header("content-type")), (200, JSON));
    assert_eq!(
        connection.response(false).await.contract(),
        (404, JSON, error("Not found", "NOT_FOUND"))
    );
    let third = connection.response(false).await;
    assert_eq!((third.status, &third.body), (200, &first.body));
    // Nothing is answered after the malformed request.
    assert_eq!(
        connection.response(false).await.contract(),
        (400, JSON, malformed_head())
    );
    connection.assert_closed().await;
    app.stop().await;
}

/// How many answers of 27 KB the narrow connection asks for at once: more than the service's
/// socket buffers hold (a few MiB), so its writes are taken in parts.
const ANSWERS: usize = 200;

#[actix_web::test]
async fn answers_the_socket_takes_in_parts_are_followed_up_to_a_malformed_request() {
    let db = TestDatabase::migrated();
    let app = TestApp::spawn(settings(db.url()));
    let mut connection = Connection::open_narrow(&app, 4096).await;
    let mut pipeline = vec![get("/openapi.json"); ANSWERS];
    pipeline.extend([get("/nowhere"), MALFORMED[0].0.to_owned(), get("/nowhere")]);
    connection.send(pipeline.concat().as_bytes()).await;

    let first = connection.response(false).await;
    assert_eq!((first.status, first.header("content-type")), (200, JSON));
    for _ in 1..ANSWERS {
        let next = connection.response(false).await;
        assert_eq!((next.status, &next.body), (200, &first.body));
    }
    assert_eq!(
        connection.response(false).await.contract(),
        (404, JSON, error("Not found", "NOT_FOUND"))
    );
    assert_eq!(
        connection.response(false).await.contract(),
        (400, JSON, malformed_head())
    );
    connection.assert_closed().await;
    app.stop().await;
}
