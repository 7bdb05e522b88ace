//! JWT authentication with scopes (`agentos-compat.md`, Authentication): RS256 keys from PEM and
//! from a JWKS file, HS secrets, every 401 and 403, the restriction of non-admin tokens to their
//! own user, and the security key beside JWTs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use metrics_events::SessionType::Agent;
use metrics_query::config::JwtSettings;
use metrics_test_support::TestDatabase;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::support::{TestApp, by, error, run, settings, usage, write};

/// An RSA key pair made with `openssl` in a scratch directory.
struct KeyPair {
    dir: PathBuf,
    private_pem: Vec<u8>,
    public_pem: String,
}

impl KeyPair {
    fn generate(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "metrics-query-jwt-{}-{name}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let private = dir.join("private.pem");
        let public = dir.join("public.pem");
        openssl(
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ],
            &private,
        );
        let status = Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .status()
            .unwrap();
        assert!(status.success());
        Self {
            private_pem: std::fs::read(&private).unwrap(),
            public_pem: std::fs::read_to_string(&public).unwrap(),
            dir,
        }
    }

    /// The public key as a JWK with `kid`.
    fn jwk(&self, kid: &str) -> Value {
        let output = Command::new("openssl")
            .args(["pkey", "-pubin", "-noout", "-text", "-in"])
            .arg(self.dir.join("public.pem"))
            .output()
            .unwrap();
        let text = String::from_utf8(output.stdout).unwrap();
        let hex: String = text
            .split("Modulus:")
            .nth(1)
            .unwrap()
            .split("Exponent")
            .next()
            .unwrap()
            .chars()
            .filter(char::is_ascii_hexdigit)
            .collect();
        let mut bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        while bytes.first() == Some(&0) {
            bytes.remove(0);
        }
        json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": base64url(&bytes), "e": "AQAB"})
    }

    fn sign(&self, claims: &Value, kid: Option<&str>) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = kid.map(str::to_owned);
        encode(
            &header,
            claims,
            &EncodingKey::from_rsa_pem(&self.private_pem).unwrap(),
        )
        .unwrap()
    }
}

impl Drop for KeyPair {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(args: &[&str], out: &Path) {
    let status = Command::new("openssl")
        .args(args)
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success(), "openssl {args:?}");
}

fn rand_suffix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        .into()
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str, scopes: Value) -> Value {
    json!({"sub": sub, "scopes": scopes, "exp": now() + 600, "iat": now(), "aud": "my-os"})
}

fn jwt_settings(public_pem: Option<&str>, jwks: Option<&Path>) -> JwtSettings {
    JwtSettings {
        verification_key: public_pem.map(SecretString::from),
        jwks_file: jwks.map(Path::to_path_buf),
        algorithm: "RS256".to_owned(),
        audience: Some("my-os".to_owned()),
        scopes_claim: "scopes".to_owned(),
        user_claim: "sub".to_owned(),
        leeway: std::time::Duration::from_secs(10),
    }
}

fn events(db: &TestDatabase) {
    write(
        db,
        "agno_metrics",
        &[
            by(
                run(
                    "r1",
                    "s1",
                    "2025-07-30T10:00:00Z",
                    Agent,
                    None,
                    usage(1, "0"),
                ),
                Some("alice"),
            ),
            by(
                run(
                    "r2",
                    "s2",
                    "2025-07-30T11:00:00Z",
                    Agent,
                    None,
                    usage(1, "0"),
                ),
                Some("bob"),
            ),
            by(
                run(
                    "r3",
                    "s3",
                    "2025-07-30T12:00:00Z",
                    Agent,
                    None,
                    usage(1, "0"),
                ),
                Some("bob"),
            ),
        ],
    );
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn agent_runs(reply: &Value) -> Vec<Value> {
    let rows = if reply.is_array() {
        reply
    } else {
        &reply["metrics"]
    };
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["agent_runs_count"].clone())
        .collect()
}

#[actix_web::test]
async fn scopes_decide_what_a_valid_token_may_call() {
    let db = TestDatabase::migrated();
    events(&db);
    let keys = KeyPair::generate("scopes");
    let mut settings = settings(db.url());
    settings.auth.security_key = Some(SecretString::from("the-key"));
    settings.auth.jwt = Some(jwt_settings(Some(&keys.public_pem), None));
    let app = TestApp::spawn(settings);
    let token = |sub: &str, scopes: Value| bearer(&keys.sign(&claims(sub, scopes), None));

    let admin = token("root", json!(["agent_os:admin"]));
    let reader = token("bob", json!("metrics:read"));
    let writer = token("bob", json!(["metrics:write"]));
    let nothing = token("bob", json!([]));

    // Admin: everything, any user or all.
    let all = app.get("/metrics", &[("Authorization", &admin)]).await;
    assert_eq!(
        (all.status.as_u16(), agent_runs(&all.json())),
        (200, vec![json!(3)])
    );
    let alice = app
        .get("/metrics?user_id=alice", &[("Authorization", &admin)])
        .await;
    assert_eq!(agent_runs(&alice.json()), [json!(1)]);
    assert_eq!(
        app.post("/metrics/refresh", &[("Authorization", &admin)])
            .await
            .status
            .as_u16(),
        200
    );
    assert_eq!(
        app.get("/metrics/refresh/status", &[("Authorization", &admin)])
            .await
            .status
            .as_u16(),
        200
    );

    // metrics:read: reads, only its own rows whatever user_id it names; no refresh.
    for path in ["/metrics", "/metrics?user_id=alice", "/metrics?user_id="] {
        let reply = app.get(path, &[("Authorization", &reader)]).await;
        assert_eq!(
            (reply.status.as_u16(), agent_runs(&reply.json())),
            (200, vec![json!(2)]),
            "{path}"
        );
    }
    assert_eq!(
        app.get("/metrics/refresh/status", &[("Authorization", &reader)])
            .await
            .status
            .as_u16(),
        200
    );
    let forbidden = (403, error("Insufficient permissions", "FORBIDDEN"));
    assert_eq!(
        app.post("/metrics/refresh", &[("Authorization", &reader)])
            .await
            .status_json(),
        forbidden
    );

    // metrics:write: refreshes (its own rows back), reads nothing.
    let refreshed = app
        .post(
            "/metrics/refresh?user_id=alice",
            &[("Authorization", &writer)],
        )
        .await;
    assert_eq!(
        (refreshed.status.as_u16(), agent_runs(&refreshed.json())),
        (200, vec![json!(2)])
    );
    assert_eq!(
        app.get("/metrics", &[("Authorization", &writer)])
            .await
            .status_json(),
        forbidden
    );
    assert_eq!(
        app.get("/metrics/refresh/status", &[("Authorization", &writer)])
            .await
            .status_json(),
        forbidden
    );

    // No scope at all.
    assert_eq!(
        app.get("/metrics", &[("Authorization", &nothing)])
            .await
            .status_json(),
        forbidden
    );

    // The security key still opens everything.
    let key = app
        .get(
            "/metrics?user_id=alice",
            &[("Authorization", "Bearer the-key")],
        )
        .await;
    assert_eq!(agent_runs(&key.json()), [json!(1)]);
    app.stop().await;
}

#[actix_web::test]
async fn bad_tokens_are_unauthenticated_with_a_bearer_challenge() {
    let db = TestDatabase::migrated();
    let keys = KeyPair::generate("bad");
    let stranger = KeyPair::generate("stranger");
    let mut settings = settings(db.url());
    settings.auth.jwt = Some(jwt_settings(Some(&keys.public_pem), None));
    let app = TestApp::spawn(settings);
    let admin = json!(["agent_os:admin"]);

    let expired = {
        let mut c = claims("u", admin.clone());
        c["exp"] = json!(now() - 60);
        keys.sign(&c, None)
    };
    let wrong_audience = {
        let mut c = claims("u", admin.clone());
        c["aud"] = json!("another-os");
        keys.sign(&c, None)
    };
    let no_exp = {
        let mut c = claims("u", admin.clone());
        c.as_object_mut().unwrap().remove("exp");
        keys.sign(&c, None)
    };
    let hs256 = encode(
        &Header::new(Algorithm::HS256),
        &claims("u", admin.clone()),
        &EncodingKey::from_secret(keys.public_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let cases = [
        (None, "Authorization header required"),
        (
            Some("Basic abc".to_owned()),
            "Authorization header required",
        ),
        (Some(bearer("not-a-jwt")), "Invalid authentication token"),
        (
            Some(bearer(&stranger.sign(&claims("u", admin.clone()), None))),
            "Invalid authentication token",
        ),
        (Some(bearer(&hs256)), "Invalid authentication token"),
        (Some(bearer(&no_exp)), "Invalid authentication token"),
        (Some(bearer(&expired)), "Token has expired"),
        (Some(bearer(&wrong_audience)), "Invalid token audience"),
    ];
    for (header, detail) in cases {
        let headers: Vec<(&str, &str)> = header
            .iter()
            .map(|h| ("Authorization", h.as_str()))
            .collect();
        for reply in [
            app.get("/metrics", &headers).await,
            app.post("/metrics/refresh", &headers).await,
            app.get("/metrics/refresh/status", &headers).await,
        ] {
            assert_eq!(
                reply.status_json(),
                (401, error(detail, "UNAUTHENTICATED")),
                "{header:?}"
            );
            assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        }
    }
    app.stop().await;
}

#[actix_web::test]
async fn a_jwks_file_picks_the_key_by_kid() {
    let db = TestDatabase::migrated();
    events(&db);
    let first = KeyPair::generate("jwks-1");
    let second = KeyPair::generate("jwks-2");
    let jwks = first.dir.join("jwks.json");
    std::fs::write(
        &jwks,
        json!({"keys": [first.jwk("k1"), second.jwk("k2")]}).to_string(),
    )
    .unwrap();
    let mut settings = settings(db.url());
    settings.auth.jwt = Some(jwt_settings(None, Some(&jwks)));
    let app = TestApp::spawn(settings);
    let admin = claims("root", json!(["agent_os:admin"]));

    for (keys, kid) in [(&first, "k1"), (&second, "k2")] {
        let reply = app
            .get(
                "/metrics",
                &[("Authorization", &bearer(&keys.sign(&admin, Some(kid))))],
            )
            .await;
        assert_eq!(reply.status.as_u16(), 200, "{kid}");
    }
    // Signed by one key, naming the other's kid; or naming no key of the set.
    for (keys, kid) in [(&first, Some("k2")), (&first, Some("k3")), (&first, None)] {
        let reply = app
            .get(
                "/metrics",
                &[("Authorization", &bearer(&keys.sign(&admin, kid)))],
            )
            .await;
        assert_eq!(reply.status.as_u16(), 401, "{kid:?}");
    }
    app.stop().await;
}

#[actix_web::test]
async fn an_hs256_secret_verifies_tokens_and_claim_names_are_configurable() {
    let db = TestDatabase::migrated();
    events(&db);
    let mut settings = settings(db.url());
    let mut jwt = jwt_settings(None, None);
    jwt.verification_key = Some(SecretString::from("a shared secret of some length"));
    jwt.algorithm = "HS256".to_owned();
    jwt.audience = None;
    jwt.scopes_claim = "permissions".to_owned();
    jwt.user_claim = "uid".to_owned();
    settings.auth.jwt = Some(jwt);
    let app = TestApp::spawn(settings);
    let token = encode(
        &Header::new(Algorithm::HS256),
        &json!({"uid": "alice", "permissions": "metrics:read", "exp": now() + 60}),
        &EncodingKey::from_secret(b"a shared secret of some length").unwrap(),
    )
    .unwrap();
    let reply = app
        .get("/metrics", &[("Authorization", &bearer(&token))])
        .await;
    assert_eq!(
        (reply.status.as_u16(), agent_runs(&reply.json())),
        (200, vec![json!(1)])
    );
    app.stop().await;
}
