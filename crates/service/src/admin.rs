//! The admin listener (its own port; never the public API, never authenticated): `GET /livez`
//! (the process answers), `GET /readyz` (the service says whether it can work) and the Prometheus
//! text exposition at `GET /metrics`. What each answer says is the service's ([`Probes`]); the
//! listener, its routes and its single worker are here. Also the tiny HTTP client behind each
//! binary's `healthcheck` subcommand.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context as _;

/// The media type of the Prometheus text exposition served at `/metrics`.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long the `healthcheck` subcommand waits for `/readyz`.
pub const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// What a service answers on its admin listener.
pub trait Probes: Send + Sync + 'static {
    /// `GET /livez`: depends on nothing but the process.
    fn live(&self) -> HttpResponse;

    /// `GET /readyz`: 200 when the service can do its work, 503 with the reason otherwise.
    fn ready(&self) -> impl Future<Output = HttpResponse>;

    /// The Prometheus text exposition of the service's metrics.
    ///
    /// # Errors
    ///
    /// Only if formatting fails.
    fn exposition(&self) -> Result<String, std::fmt::Error>;

    /// Any other path.
    fn not_found(&self) -> HttpResponse {
        HttpResponse::NotFound().finish()
    }
}

/// Serves `probes` on `listener` with one worker; the caller drives the returned server and
/// stops it through its handle (signals are the service's business, not the server's).
///
/// # Errors
///
/// When the listener cannot be used.
pub fn serve<P: Probes>(listener: TcpListener, probes: Arc<P>) -> std::io::Result<Server> {
    let probes = web::Data::from(probes);
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(probes.clone())
            .route("/livez", web::get().to(livez::<P>))
            .route("/readyz", web::get().to(readyz::<P>))
            .route("/metrics", web::get().to(metrics::<P>))
            .default_service(web::to(not_found::<P>))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run())
}

async fn livez<P: Probes>(probes: web::Data<P>) -> HttpResponse {
    probes.live()
}

async fn readyz<P: Probes>(probes: web::Data<P>) -> HttpResponse {
    probes.ready().await
}

async fn metrics<P: Probes>(probes: web::Data<P>) -> HttpResponse {
    match probes.exposition() {
        Ok(text) => HttpResponse::Ok().content_type(OPENMETRICS).body(text),
        Err(err) => {
            tracing::error!(error = %err, "encoding metrics failed");
            HttpResponse::InternalServerError().finish()
        }
    }
}

async fn not_found<P: Probes>(probes: web::Data<P>) -> HttpResponse {
    probes.not_found()
}

/// `GET path` on the listener at `addr`, waiting at most `timeout` for each step; returns the
/// status code and the body.
///
/// # Errors
///
/// When the listener cannot be reached, does not answer in time, or answers garbage.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The address to probe for a listen address: a wildcard listens on loopback too.
pub fn probe_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => Ipv4Addr::LOCALHOST.into(),
        IpAddr::V6(ip) if ip.is_unspecified() => Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// The `healthcheck` subcommand (Docker's `HEALTHCHECK`): GETs `/readyz` of the admin listener
/// listening at `listen` and succeeds on 200. Blocking.
///
/// # Errors
///
/// When the listener cannot be reached within `timeout` or answers anything but 200.
pub fn healthcheck(listen: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let addr = probe_address(listen);
    let (status, body) =
        get(addr, "/readyz", timeout).with_context(|| format!("asking {addr}/readyz"))?;
    anyhow::ensure!(
        status == 200,
        "{addr}/readyz answered {status}: {}",
        body.trim()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_addresses_are_probed_on_loopback() {
        let probe = |listen: &str| probe_address(listen.parse().unwrap()).to_string();
        assert_eq!(probe("0.0.0.0:9091"), "127.0.0.1:9091");
        assert_eq!(probe("[::]:9091"), "[::1]:9091");
        assert_eq!(probe("10.1.2.3:80"), "10.1.2.3:80");
    }

    struct Fixed;

    impl Probes for Fixed {
        fn live(&self) -> HttpResponse {
            HttpResponse::Ok().body("ok")
        }

        async fn ready(&self) -> HttpResponse {
            HttpResponse::ServiceUnavailable().body("not ready: testing")
        }

        fn exposition(&self) -> Result<String, std::fmt::Error> {
            Ok("# EOF\n".to_owned())
        }
    }

    #[actix_web::test]
    async fn the_listener_serves_the_probes_and_the_healthcheck_follows_readiness() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = serve(listener, Arc::new(Fixed)).unwrap();
        let handle = server.handle();
        let running = actix_web::rt::spawn(server);
        let wait = Duration::from_secs(5);
        let answers = web::block(move || {
            (
                get(addr, "/livez", wait).unwrap(),
                get(addr, "/metrics", wait).unwrap(),
                get(addr, "/nope", wait).unwrap().0,
                healthcheck(addr, wait).unwrap_err().to_string(),
            )
        })
        .await
        .unwrap();
        assert_eq!(answers.0, (200, "ok".to_owned()));
        assert_eq!(answers.1, (200, "# EOF\n".to_owned()));
        assert_eq!(answers.2, 404);
        assert_eq!(
            answers.3,
            format!("{addr}/readyz answered 503: not ready: testing")
        );
        handle.stop(true).await;
        running.await.unwrap().unwrap();
    }
}
