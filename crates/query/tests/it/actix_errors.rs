//! The errors actix-web answers by itself (extractors, payload limits) carry the contract's
//! `{"detail", "error_code"}` body once `contract_errors` wraps the application. The service's
//! own routes read their parameters themselves, so these are exercised on an actix test server
//! with extractor routes, over real HTTP.

use std::net::TcpListener;

use actix_web::middleware::from_fn;
use actix_web::{App, HttpResponse, HttpServer, web};
use awc::Client;
use metrics_query::ApiError;
use metrics_query::error::contract_errors;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug, Deserialize)]
struct Limit {
    #[expect(dead_code, reason = "only its parsing matters")]
    limit: u32,
}

async fn query(_: web::Query<Limit>) -> HttpResponse {
    HttpResponse::Ok().finish()
}

async fn body(_: web::Json<Value>) -> HttpResponse {
    HttpResponse::Ok().finish()
}

async fn bytes(_: web::Bytes) -> HttpResponse {
    HttpResponse::Ok().finish()
}

async fn own() -> Result<HttpResponse, ApiError> {
    Err(ApiError::Validation("own detail".to_owned()))
}

#[actix_web::test]
async fn extractor_and_payload_errors_carry_the_contract_body() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = HttpServer::new(|| {
        App::new()
            .app_data(web::JsonConfig::default().limit(64))
            .app_data(web::PayloadConfig::default().limit(64))
            .wrap(from_fn(contract_errors))
            .route("/query", web::get().to(query))
            .route("/json", web::post().to(body))
            .route("/bytes", web::post().to(bytes))
            .route("/own", web::get().to(own))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    let running = actix_web::rt::spawn(server);
    let client = Client::default();
    let reply = |request: awc::ClientRequest, body: Option<&'static str>| async move {
        let mut response = match body {
            Some(body) => request.send_body(body).await.unwrap(),
            None => request.send().await.unwrap(),
        };
        let body: Value = response.json().await.unwrap();
        (response.status().as_u16(), body["error_code"].clone(), body)
    };

    let (status, code, body) = reply(client.get(format!("{base}/query?limit=many")), None).await;
    assert_eq!((status, code), (400, json!("BAD_REQUEST")), "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("Query deserialize error"),
        "{body}"
    );

    let json_request = || {
        client
            .post(format!("{base}/json"))
            .content_type("application/json")
    };
    let (status, code, body) = reply(json_request(), Some("{not json")).await;
    assert_eq!((status, code), (400, json!("BAD_REQUEST")), "{body}");
    let (status, code, body) = reply(
        json_request(),
        Some("[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]"),
    )
    .await;
    assert_eq!((status, code), (413, json!("PAYLOAD_TOO_LARGE")), "{body}");
    let (status, _, body) = reply(
        client
            .post(format!("{base}/json"))
            .content_type("text/plain"),
        Some("{}"),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"detail": "Content type error", "error_code": "BAD_REQUEST"})
        )
    );
    let (status, code, body) = reply(
        client.post(format!("{base}/bytes")),
        Some("0123456789012345678901234567890123456789012345678901234567890123456789"),
    )
    .await;
    assert_eq!((status, code), (413, json!("PAYLOAD_TOO_LARGE")), "{body}");
    assert!(body["detail"].is_string(), "{body}");

    // The service's own errors pass through unchanged.
    let (status, _, body) = reply(client.get(format!("{base}/own")), None).await;
    assert_eq!(
        (status, body),
        (
            422,
            json!({"detail": "own detail", "error_code": "VALIDATION_ERROR"})
        )
    );

    handle.stop(true).await;
    running.await.unwrap().unwrap();
}
