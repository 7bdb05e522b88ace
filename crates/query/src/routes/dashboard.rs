//! The dashboard: a page at `/dashboard` (`/` redirects to it) whose script reads the same
//! `GET /metrics` a client does and draws its rows as charts.
//!
//! The page and its assets are public and embedded in the binary (`assets/dashboard/` beside
//! `Cargo.toml`): loading them needs no key, and they hold no data. The data comes only through
//! `GET /metrics`, with the security key or JWT the person enters, which the script keeps in
//! `sessionStorage` and sends as `Authorization: Bearer`. The charts are SVG drawn by the
//! script itself, so the page needs no network beyond the service; the Content-Security-Policy
//! says so to the browser (`'self'` only, no inline script or style).

use actix_web::http::header::{self, ContentType};
use actix_web::{HttpResponse, web};

use super::method_not_allowed;

/// The page.
const PAGE: &str = include_str!("../../assets/dashboard/index.html");
/// Its script: fetching, totals and charts.
const SCRIPT: &str = include_str!("../../assets/dashboard/dashboard.js");
/// Its style sheet.
const STYLE: &str = include_str!("../../assets/dashboard/dashboard.css");
/// Its icon.
const ICON: &str = include_str!("../../assets/dashboard/icon.svg");

/// What the page may load and where it may connect: this service only.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

/// Registers `/`, `/dashboard` and the assets under `/dashboard/`.
pub fn configure(config: &mut web::ServiceConfig) {
    let asset = |path: &'static str, content_type: &'static str, body: &'static str| {
        web::resource(path)
            .route(web::get().to(move || async move { serve(content_type, body) }))
            .default_service(web::to(method_not_allowed))
    };
    config
        .service(
            web::resource("/")
                .route(web::get().to(redirect))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/dashboard/")
                .route(web::get().to(redirect_from_slash))
                .default_service(web::to(method_not_allowed)),
        )
        .service(asset("/dashboard", "text/html; charset=utf-8", PAGE))
        .service(asset(
            "/dashboard/dashboard.js",
            "text/javascript; charset=utf-8",
            SCRIPT,
        ))
        .service(asset(
            "/dashboard/dashboard.css",
            "text/css; charset=utf-8",
            STYLE,
        ))
        .service(asset("/dashboard/icon.svg", "image/svg+xml", ICON));
}

/// An embedded asset, revalidated on every load so a new release shows at once.
fn serve(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .body(body)
}

/// `GET /`: to the dashboard. The location is relative, so it holds behind a path prefix.
async fn redirect() -> HttpResponse {
    found("dashboard")
}

/// `GET /dashboard/`: to `/dashboard`, where the page's relative links resolve.
async fn redirect_from_slash() -> HttpResponse {
    found("../dashboard")
}

fn found(location: &'static str) -> HttpResponse {
    HttpResponse::Found()
        .insert_header((header::LOCATION, location))
        .content_type(ContentType::plaintext())
        .finish()
}
