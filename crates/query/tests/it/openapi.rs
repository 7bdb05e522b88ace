//! The served OpenAPI document is the contract's (`metrics-openapi.yaml`) plus what
//! `agentos-compat.md` adds: the `user_id` parameter of `GET /metrics`, `POST /metrics/refresh`
//! and `GET /metrics/refresh/status`. It cannot drift from either.

use std::path::{Path, PathBuf};

use metrics_test_support::TestDatabase;
use serde_json::{Value, json};

use crate::support::{TestApp, settings};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
    serde_norway::from_str(&text).unwrap()
}

/// The additions of `agentos-compat.md`, as the served document has them.
const ADDED_PATHS: [&str; 2] = ["/metrics/refresh", "/metrics/refresh/status"];
const ADDED_SCHEMAS: [&str; 3] = [
    "MetricsRefreshResponse",
    "MetricsRefreshStatusResponse",
    "ForbiddenResponse",
];

fn parameter_names(operation: &Value) -> Vec<&str> {
    operation["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|parameter| parameter["name"].as_str().unwrap())
        .collect()
}

#[actix_web::test]
async fn the_served_document_is_the_contract_plus_the_agentos_additions() {
    let db = TestDatabase::migrated();
    let app = TestApp::spawn(settings(db.url()));

    let reply = app.get("/openapi.json", &[]).await;
    assert_eq!(reply.status.as_u16(), 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let served = reply.json();

    // GET /metrics: the seed's operation plus `user_id`.
    let get = &served["paths"]["/metrics"]["get"];
    assert_eq!(
        parameter_names(get),
        ["starting_date", "ending_date", "db_id", "table", "user_id"]
    );
    let user_id = &get["parameters"][4];
    assert_eq!(
        (
            &user_id["in"],
            &user_id["required"],
            &user_id["schema"]["anyOf"][0]
        ),
        (
            &json!("query"),
            &json!(false),
            &json!({"type": "string", "maxLength": 256})
        )
    );

    // The new routes, with the parameters and statuses the handlers have.
    let refresh = &served["paths"]["/metrics/refresh"]["post"];
    assert_eq!(refresh["operationId"], "refresh_metrics");
    assert_eq!(
        parameter_names(refresh),
        ["db_id", "table", "user_id", "background"]
    );
    let status = &served["paths"]["/metrics/refresh/status"]["get"];
    assert_eq!(status["operationId"], "get_metrics_refresh_status");
    assert_eq!(parameter_names(status), ["db_id", "table"]);
    let statuses = |operation: &Value| -> Vec<String> {
        operation["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(
        statuses(refresh),
        ["200", "202", "401", "403", "404", "422", "500"]
    );
    assert_eq!(statuses(status), ["200", "401", "403", "404", "422", "500"]);

    // Without the additions, the document is the contract, byte for byte in meaning.
    let mut reduced = served.clone();
    reduced["paths"]["/metrics"]["get"]["parameters"]
        .as_array_mut()
        .unwrap()
        .pop();
    for path in ADDED_PATHS {
        reduced["paths"].as_object_mut().unwrap().remove(path);
    }
    for schema in ADDED_SCHEMAS {
        reduced["components"]["schemas"]
            .as_object_mut()
            .unwrap()
            .remove(schema);
    }
    assert_eq!(
        reduced,
        yaml(&workspace_root().join("docs/metrics-openapi.yaml"))
    );
    app.stop().await;
}

#[actix_web::test]
async fn the_added_schemas_describe_the_added_answers() {
    let db = TestDatabase::migrated();
    let app = TestApp::spawn(settings(db.url()));
    let served = app.get("/openapi.json", &[]).await.json();
    let schemas = &served["components"]["schemas"];
    let required = |name: &str| -> Vec<&str> {
        schemas[name]["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|key| key.as_str().unwrap())
            .collect()
    };
    let status = app.get("/metrics/refresh/status", &[]).await.json();
    let mut keys: Vec<&str> = status
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    let mut documented = required("MetricsRefreshStatusResponse");
    documented.sort_unstable();
    assert_eq!(keys, documented);
    let started = app.post("/metrics/refresh?background=true", &[]).await;
    assert_eq!(started.status.as_u16(), 202);
    assert_eq!(
        served["paths"]["/metrics/refresh"]["post"]["responses"]["202"]["content"]["application/json"]
            ["example"],
        started.json()
    );
    assert_eq!(
        schemas["ForbiddenResponse"]["example"],
        json!({"detail": "Insufficient permissions", "error_code": "FORBIDDEN"})
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
