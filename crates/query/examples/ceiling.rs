//! Benchmark reference: the HTTP ceiling of this machine for `GET /metrics`. Serves the bytes
//! of `--body` (a response saved from the real service) from memory at `/metrics`, through the
//! same actix-web server, worker count and request-span middleware as `metrics-query`, with no
//! database. Used by `scripts/bench-query.sh` and `scripts/bench-query-users.sh`.

use std::io::Write as _;
use std::path::PathBuf;

use actix_web::http::header::ContentType;
use actix_web::web::Bytes;
use actix_web::{App, HttpResponse, HttpServer, web};
use clap::Parser;
use tracing_actix_web::TracingLogger;

#[derive(Debug, Parser)]
struct Args {
    /// The response body to serve.
    #[arg(long)]
    body: PathBuf,
    /// Where to listen (port 0: a free port, printed as `listening on ADDRESS`).
    #[arg(long, default_value = "127.0.0.1:7789")]
    listen: String,
    /// Worker threads; 0 means one per core, as `http.workers`.
    #[arg(long, default_value_t = 0)]
    workers: usize,
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let body = Bytes::from(std::fs::read(&args.body)?);
    let mut server = HttpServer::new(move || {
        let body = body.clone();
        App::new().wrap(TracingLogger::default()).route(
            "/metrics",
            web::get().to(move || {
                let body = body.clone();
                async move {
                    HttpResponse::Ok()
                        .content_type(ContentType::json())
                        .body(body)
                }
            }),
        )
    });
    if args.workers > 0 {
        server = server.workers(args.workers);
    }
    let server = server.bind(&args.listen)?;
    for address in server.addrs() {
        writeln!(std::io::stdout(), "listening on {address}")?;
    }
    server.run().await?;
    Ok(())
}
