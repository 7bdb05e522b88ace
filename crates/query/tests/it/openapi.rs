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
    // CI and every developer have `shared/` beside the clone; the contract lives there.
    let shared = workspace_root().join("../shared/contract/metrics-openapi.yaml");
    assert!(
        shared.exists(),
        "the shared contract is missing at {}: check out shared/ beside the repository",
        shared.display()
    );
    assert_eq!(
        yaml(&workspace_root().join("docs/metrics-openapi.yaml")),
        yaml(&shared)
    );
}
