//! The served OpenAPI document is the contract's: it cannot drift from `metrics-openapi.yaml`.

use std::path::{Path, PathBuf};

use metrics_test_support::TestDatabase;
use serde_json::Value;

use crate::support::{TestApp, settings};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
    serde_norway::from_str(&text).unwrap()
}

#[actix_web::test]
async fn the_served_document_is_the_contract() {
    let db = TestDatabase::migrated();
    let app = TestApp::spawn(settings(db.url()));

    let reply = app.get("/openapi.json", &[]).await;
    assert_eq!(reply.status.as_u16(), 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        reply.json(),
        yaml(&workspace_root().join("docs/metrics-openapi.yaml"))
    );
    app.stop().await;
}

#[test]
fn the_committed_copy_equals_the_shared_contract() {
    // The contract is maintained in `shared/contract/` beside the clone (METRICS_CONTRACT_DIR
    // names another place). CI always has it; a clone of this repository alone does not, and
    // there the committed copy is the contract, so the comparison is reported and skipped.
    let dir = std::env::var_os("METRICS_CONTRACT_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/contract"));
    let shared = dir.join("metrics-openapi.yaml");
    if !shared.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the shared contract is missing at {} (CI must have shared/ beside the clone)",
            shared.display()
        );
        eprintln!(
            "note: no shared contract at {}; the committed copy is not compared",
            shared.display()
        );
        return;
    }
    assert_eq!(
        yaml(&workspace_root().join("docs/metrics-openapi.yaml")),
        yaml(&shared)
    );
}

#[actix_web::test]
async fn every_documented_parameter_and_error_status_is_the_handlers() {
    let db = TestDatabase::migrated();
    let mut settings = settings(db.url());
    settings.auth.security_key = Some(secrecy::SecretString::from("k"));
    let app = TestApp::spawn(settings);
    let document = yaml(&workspace_root().join("docs/metrics-openapi.yaml"));
    let operation = &document["paths"]["/metrics"]["get"];
    let auth = [("Authorization", "Bearer k")];

    // A value no parameter accepts: a renamed or dropped parameter would be ignored (200).
    let mut names = Vec::new();
    for parameter in operation["parameters"].as_array().unwrap() {
        let name = parameter["name"].as_str().unwrap();
        let reply = app.get(&format!("/metrics?{name}=%3Bnope"), &auth).await;
        assert!(
            [404, 422].contains(&reply.status.as_u16()),
            "{name}: {reply:?}"
        );
        names.push(name);
    }
    assert_eq!(names, ["starting_date", "ending_date", "db_id", "table"]);

    // Each documented error status, produced with the contract's code.
    let produced = [
        (
            400,
            app.get(
                "/metrics?starting_date=2024-02-02&ending_date=2024-02-01",
                &auth,
            )
            .await,
        ),
        (401, app.get("/metrics", &[]).await),
        (404, app.get("/metrics?db_id=nope", &auth).await),
        (422, app.get("/metrics?starting_date=nope", &auth).await),
    ];
    let mut documented: Vec<&str> = operation["responses"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    documented.sort_unstable();
    assert_eq!(documented, ["200", "400", "401", "404", "422", "500"]);
    for (status, reply) in produced {
        let schema = operation["responses"][status.to_string()]["content"]["application/json"]
            ["schema"]["$ref"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap();
        let example = &document["components"]["schemas"][schema]["example"]["error_code"];
        assert_eq!(reply.status.as_u16(), status);
        assert_eq!(&reply.json()["error_code"], example, "{status}");
    }
    app.stop().await;
}
