//! Bearer-key authentication (`metrics-api.md`, Authentication).

use metrics_test_support::TestDatabase;
use secrecy::SecretString;
use serde_json::json;

use crate::support::{TestApp, error, settings};

fn secured(db: &TestDatabase) -> TestApp {
    let mut settings = settings(db.url());
    settings.auth.security_key = Some(SecretString::from("s3cret-key"));
    TestApp::spawn(settings)
}

#[actix_web::test]
async fn a_missing_or_non_bearer_header_is_unauthenticated() {
    let db = TestDatabase::migrated();
    let app = secured(&db);

    for headers in [
        vec![],
        vec![("Authorization", "Basic czNjcmV0LWtleQ==")],
        vec![("Authorization", "Bearer")],
        vec![("Authorization", "s3cret-key")],
    ] {
        let reply = app.get("/metrics", &headers).await;
        assert_eq!(
            reply.status_json(),
            (
                401,
                error("Authorization header required", "UNAUTHENTICATED")
            ),
            "{headers:?}"
        );
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    }
    app.stop().await;
}

#[actix_web::test]
async fn a_wrong_key_is_unauthenticated() {
    let db = TestDatabase::migrated();
    let app = secured(&db);

    for key in [
        "Bearer wrong",
        "Bearer s3cret-ke",
        "Bearer s3cret-key2",
        "Bearer S3CRET-KEY",
    ] {
        let reply = app.get("/metrics", &[("Authorization", key)]).await;
        assert_eq!(
            reply.status_json(),
            (
                401,
                error("Invalid authentication token", "UNAUTHENTICATED")
            ),
            "{key}"
        );
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    }
    app.stop().await;
}

#[actix_web::test]
async fn the_right_key_passes_with_any_scheme_case() {
    let db = TestDatabase::migrated();
    let app = secured(&db);

    for header in [
        "Bearer s3cret-key",
        "bearer s3cret-key",
        "BEARER s3cret-key",
    ] {
        let reply = app.get("/metrics", &[("Authorization", header)]).await;
        assert_eq!(
            reply.status_json(),
            (200, json!({"metrics": [], "updated_at": null})),
            "{header}"
        );
    }
    app.stop().await;
}

#[actix_web::test]
async fn authentication_comes_before_parameter_validation() {
    let db = TestDatabase::migrated();
    let app = secured(&db);

    let reply = app.get("/metrics?starting_date=nope&db_id=nope", &[]).await;
    assert_eq!(reply.status.as_u16(), 401);
    app.stop().await;
}

#[actix_web::test]
async fn without_a_key_the_api_is_open() {
    let db = TestDatabase::migrated();
    let app = TestApp::spawn(settings(db.url()));

    let reply = app
        .get("/metrics", &[("Authorization", "Bearer anything")])
        .await;
    assert_eq!(
        reply.status_json(),
        (200, json!({"metrics": [], "updated_at": null}))
    );
    app.stop().await;
}

#[actix_web::test]
async fn probes_and_prometheus_need_no_key() {
    let db = TestDatabase::migrated();
    let app = secured(&db);

    for path in ["/livez", "/readyz", "/metrics"] {
        assert_eq!(app.admin_get(path).await.status.as_u16(), 200, "{path}");
    }
    app.stop().await;
}
