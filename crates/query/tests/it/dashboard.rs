//! The dashboard's page and assets: public (no key, even when the API needs one), embedded, with
//! a Content-Security-Policy that keeps the page to this service; `/` leads to it. What the page
//! does in a browser is tested end to end in `tests/e2e/dashboard.rs`.

use metrics_test_support::TestDatabase;
use secrecy::SecretString;

use crate::support::{TestApp, error, settings};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn secured(db: &TestDatabase) -> TestApp {
    let mut settings = settings(db.url());
    settings.auth.security_key = Some(SecretString::from("s3cret-key"));
    TestApp::spawn(settings)
}

#[actix_web::test]
async fn the_page_and_its_assets_need_no_key_while_the_api_does() {
    let db = TestDatabase::migrated();
    let app = secured(&db);

    for (path, content_type, contains) in [
        (
            "/dashboard",
            "text/html; charset=utf-8",
            r#"<script src="dashboard/dashboard.js" defer></script>"#,
        ),
        (
            "/dashboard/dashboard.js",
            "text/javascript; charset=utf-8",
            r#"fetch("metrics?" + query.toString()"#,
        ),
        (
            "/dashboard/dashboard.css",
            "text/css; charset=utf-8",
            ".charts {",
        ),
        ("/dashboard/icon.svg", "image/svg+xml", "<svg"),
    ] {
        let reply = app.get(path, &[]).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.header("content-type"), Some(content_type), "{path}");
        assert_eq!(reply.header("content-security-policy"), Some(CSP), "{path}");
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(reply.header("cache-control"), Some("no-cache"));
        let body = String::from_utf8(reply.body).unwrap();
        assert!(body.contains(contains), "{path} lacks {contains}");
    }
    // The data still needs the key.
    let reply = app.get("/metrics", &[]).await;
    assert_eq!(
        reply.status_json(),
        (
            401,
            error("Authorization header required", "UNAUTHENTICATED")
        )
    );
    app.stop().await;
}

#[actix_web::test]
async fn the_root_and_a_trailing_slash_lead_to_the_dashboard() {
    let db = TestDatabase::migrated();
    let app = TestApp::spawn(settings(db.url()));

    // awc follows redirects unless told not to.
    let client = awc::Client::builder().disable_redirects().finish();
    for (path, location) in [("/", "dashboard"), ("/dashboard/", "../dashboard")] {
        let response = client
            .get(format!("{}{path}", app.api))
            .send()
            .await
            .unwrap();
        assert_eq!(
            (
                response.status().as_u16(),
                response
                    .headers()
                    .get("location")
                    .unwrap()
                    .to_str()
                    .unwrap()
            ),
            (302, location),
            "{path}"
        );
    }
    drop(client);
    app.stop().await;
}

#[actix_web::test]
async fn other_methods_and_unknown_assets_answer_in_the_contract_shape() {
    let db = TestDatabase::migrated();
    let app = TestApp::spawn(settings(db.url()));

    let response = app
        .client
        .post(format!("{}/dashboard", app.api))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(
        response.headers().get("allow").unwrap().to_str().unwrap(),
        "GET"
    );
    let reply = app.get("/dashboard/missing.js", &[]).await;
    assert_eq!(reply.status_json(), (404, error("Not found", "NOT_FOUND")));
    app.stop().await;
}
