//! [`JwtVerifier`]: JWTs as AgentOS issues and verifies them (`agentos-compat.md`,
//! Authentication), checked with the `jsonwebtoken` crate.
//!
//! Keys come from `auth.jwt.verification_key` (`JWT_VERIFICATION_KEY`: a PEM public key, or the
//! shared secret of an HS algorithm) and/or `auth.jwt.jwks_file` (`JWT_JWKS_FILE`: a JWKS whose
//! key the token's `kid` picks; a key without `kid` serves tokens without a match). Checked:
//! the signature with the one configured algorithm, `exp` (required), `nbf` and `iat` when
//! present, each with the leeway, and `aud` when an audience is configured. The verified token
//! yields its scopes (a list of strings or one space-separated string) and its user.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use secrecy::ExposeSecret;
use serde_json::Value;

use crate::config::JwtSettings;

/// The scope that grants every other.
pub const ADMIN_SCOPE: &str = "agent_os:admin";

/// What a verified token says about its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The scopes it grants.
    pub scopes: Vec<String>,
    /// The user it speaks for, when the user claim is a non-empty string.
    pub user: Option<String>,
}

impl Claims {
    /// Whether the token grants `scope` (directly or through [`ADMIN_SCOPE`]).
    pub fn grants(&self, scope: &str) -> bool {
        self.is_admin() || self.scopes.iter().any(|granted| granted == scope)
    }

    /// Whether the token holds [`ADMIN_SCOPE`].
    pub fn is_admin(&self) -> bool {
        self.scopes.iter().any(|granted| granted == ADMIN_SCOPE)
    }
}

/// Why a token was refused; each is a 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Its `exp` has passed.
    #[error("Token has expired")]
    Expired,
    /// Its `aud` is missing or names another audience.
    #[error("Invalid token audience")]
    Audience,
    /// Anything else: not a JWT, wrong algorithm, unknown key, bad signature, not yet valid.
    #[error("Invalid authentication token")]
    Invalid,
}

impl TokenError {
    /// The error's detail, as the 401 body carries it.
    pub fn detail(self) -> &'static str {
        match self {
            TokenError::Expired => "Token has expired",
            TokenError::Audience => "Invalid token audience",
            TokenError::Invalid => "Invalid authentication token",
        }
    }
}

/// Why the JWT settings cannot be used; names the key at fault.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration key `{key}`: {reason}")]
pub struct JwtConfigError {
    /// The dotted key path.
    pub key: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn config_error(key: &'static str, reason: impl Into<String>) -> JwtConfigError {
    JwtConfigError {
        key,
        reason: reason.into(),
    }
}

/// Verifies bearer JWTs against the configured keys.
pub struct JwtVerifier {
    algorithm: Algorithm,
    validation: Validation,
    /// The verification key, when configured.
    key: Option<DecodingKey>,
    /// JWKS keys by `kid`.
    by_kid: HashMap<String, DecodingKey>,
    /// The JWKS key without a `kid`, when there is one.
    unnamed: Option<DecodingKey>,
    leeway_s: u64,
    scopes_claim: String,
    user_claim: String,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys stay out of logs, even public ones: a shared secret may be among them.
        f.debug_struct("JwtVerifier")
            .field("algorithm", &self.algorithm)
            .field(
                "keys",
                &(usize::from(self.key.is_some()) + self.by_kid.len()),
            )
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Builds the verifier, reading the JWKS file and parsing the keys.
    ///
    /// # Errors
    ///
    /// [`JwtConfigError`] naming the key whose value cannot be used.
    pub fn new(settings: &JwtSettings) -> Result<Self, JwtConfigError> {
        let algorithm = Algorithm::from_str(&settings.algorithm).map_err(|_| {
            config_error(
                "auth.jwt.algorithm",
                format!(
                    "`{}` is not one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, \
                     PS512, ES256, ES384, EdDSA",
                    settings.algorithm
                ),
            )
        })?;
        let key = settings
            .verification_key
            .as_ref()
            .map(|key| decoding_key(algorithm, key.expose_secret()))
            .transpose()?;
        let (by_kid, unnamed) = match &settings.jwks_file {
            Some(path) => jwks(path)?,
            None => (HashMap::new(), None),
        };
        if key.is_none() && by_kid.is_empty() && unnamed.is_none() {
            return Err(config_error(
                "auth.jwt.jwks_file",
                "holds no key, and no verification key is set",
            ));
        }
        let leeway_s = settings.leeway.as_secs();
        let mut validation = Validation::new(algorithm);
        validation.leeway = leeway_s;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &settings.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.set_required_spec_claims(&["exp", "aud"]);
            }
            None => validation.validate_aud = false,
        }
        Ok(Self {
            algorithm,
            validation,
            key,
            by_kid,
            unnamed,
            leeway_s,
            scopes_claim: settings.scopes_claim.clone(),
            user_claim: settings.user_claim.clone(),
        })
    }

    /// Verifies `token` and returns its scopes and user.
    ///
    /// # Errors
    ///
    /// [`TokenError`] when the token is not valid now.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let now = now_s();
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.by_kid.get(kid))
            .or(self.key.as_ref())
            .or(self.unnamed.as_ref())
            .ok_or(TokenError::Invalid)?;
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, key, &self.validation)
                .map_err(|err| match err.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    ErrorKind::InvalidAudience => TokenError::Audience,
                    ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => {
                        TokenError::Audience
                    }
                    _ => TokenError::Invalid,
                })?;
        let claims = data.claims;
        // `jsonwebtoken` leaves `iat` alone: a token issued in the future (beyond the leeway)
        // is refused as AgentOS (PyJWT) refuses it.
        if let Some(iat) = claims.get("iat") {
            let iat = iat.as_f64().ok_or(TokenError::Invalid)?;
            #[expect(
                clippy::cast_precision_loss,
                reason = "seconds since 1970 fit a double exactly for billions of years"
            )]
            let latest = (now + self.leeway_s) as f64;
            if iat > latest {
                return Err(TokenError::Invalid);
            }
        }
        let scopes = match claims.get(&self.scopes_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(scopes)) => scopes.split_whitespace().map(str::to_owned).collect(),
            Some(Value::Array(scopes)) => scopes
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(_) => return Err(TokenError::Invalid),
        };
        let user = claims
            .get(&self.user_claim)
            .and_then(Value::as_str)
            .filter(|user| !user.is_empty())
            .map(str::to_owned);
        Ok(Claims { scopes, user })
    }
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// The verification key: the shared secret for HS algorithms, else a PEM public key of the
/// algorithm's family.
fn decoding_key(algorithm: Algorithm, key: &str) -> Result<DecodingKey, JwtConfigError> {
    const KEY: &str = "auth.jwt.verification_key";
    let pem = key.as_bytes();
    let parsed = match algorithm.family() {
        AlgorithmFamily::Hmac => DecodingKey::from_secret(key.as_bytes()),
        AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem),
        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem),
        AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem),
    };
    parsed.map_err(|err| {
        config_error(
            KEY,
            format!("not a key for {algorithm:?} (a PEM public key, or an HS secret): {err}"),
        )
    })
}

type Jwks = (HashMap<String, DecodingKey>, Option<DecodingKey>);

fn jwks(path: &Path) -> Result<Jwks, JwtConfigError> {
    const KEY: &str = "auth.jwt.jwks_file";
    let text = std::fs::read_to_string(path)
        .map_err(|err| config_error(KEY, format!("reading {}: {err}", path.display())))?;
    let set: JwkSet = serde_json::from_str(&text)
        .map_err(|err| config_error(KEY, format!("{} is not a JWKS: {err}", path.display())))?;
    let mut by_kid = HashMap::new();
    let mut unnamed = None;
    for jwk in &set.keys {
        let key = DecodingKey::from_jwk(jwk).map_err(|err| {
            config_error(
                KEY,
                format!(
                    "key {} of {} cannot be used: {err}",
                    jwk.common.key_id.as_deref().unwrap_or("without kid"),
                    path.display()
                ),
            )
        })?;
        match &jwk.common.key_id {
            Some(kid) => {
                by_kid.insert(kid.clone(), key);
            }
            None => unnamed = unnamed.or(Some(key)),
        }
    }
    Ok((by_kid, unnamed))
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode};
    use secrecy::SecretString;
    use serde_json::json;

    use super::*;

    const SECRET: &str = "a shared secret of enough length for HS256";

    fn settings(audience: Option<&str>) -> JwtSettings {
        JwtSettings {
            verification_key: Some(SecretString::from(SECRET)),
            jwks_file: None,
            algorithm: "HS256".to_owned(),
            audience: audience.map(str::to_owned),
            scopes_claim: "scopes".to_owned(),
            user_claim: "sub".to_owned(),
            leeway: Duration::from_secs(10),
        }
    }

    fn token(claims: &Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    /// `jsonwebtoken` checks `exp` and `nbf` against the system clock: the tests use it too.
    fn verify(settings: &JwtSettings, claims: &Value) -> Result<Claims, TokenError> {
        JwtVerifier::new(settings).unwrap().verify(&token(claims))
    }

    #[test]
    fn scopes_come_as_a_list_or_a_space_separated_string() {
        let expected = Ok(Claims {
            scopes: vec!["metrics:read".to_owned(), "metrics:write".to_owned()],
            user: Some("u1".to_owned()),
        });
        let list =
            json!({"sub": "u1", "exp": now_s() + 60, "scopes": ["metrics:read", "metrics:write"]});
        let string =
            json!({"sub": "u1", "exp": now_s() + 60, "scopes": "metrics:read  metrics:write"});
        assert_eq!(verify(&settings(None), &list), expected);
        assert_eq!(verify(&settings(None), &string), expected);
    }

    #[test]
    fn claim_names_are_configurable() {
        let mut settings = settings(None);
        settings.scopes_claim = "permissions".to_owned();
        settings.user_claim = "uid".to_owned();
        let claims = json!({"uid": "u2", "exp": now_s() + 60, "permissions": ["agent_os:admin"]});
        assert_eq!(
            verify(&settings, &claims),
            Ok(Claims {
                scopes: vec![ADMIN_SCOPE.to_owned()],
                user: Some("u2".to_owned())
            })
        );
    }

    #[test]
    fn exp_is_required_and_checked_with_the_leeway() {
        let s = settings(None);
        assert_eq!(
            verify(&s, &json!({"sub": "u"})),
            Err(TokenError::Invalid),
            "no exp"
        );
        assert_eq!(
            verify(&s, &json!({"sub": "u", "exp": now_s() - 11})),
            Err(TokenError::Expired)
        );
        assert!(verify(&s, &json!({"sub": "u", "exp": now_s() - 5})).is_ok());
    }

    #[test]
    fn nbf_and_iat_in_the_future_are_refused_beyond_the_leeway() {
        let s = settings(None);
        for claim in ["nbf", "iat"] {
            assert_eq!(
                verify(&s, &json!({"exp": now_s() + 60, claim: now_s() + 30})),
                Err(TokenError::Invalid),
                "{claim}"
            );
            assert!(
                verify(&s, &json!({"exp": now_s() + 60, claim: now_s() + 5})).is_ok(),
                "{claim}"
            );
        }
    }

    #[test]
    fn the_audience_is_checked_only_when_configured() {
        let claims = json!({"exp": now_s() + 60, "aud": "other-os"});
        assert!(verify(&settings(None), &claims).is_ok());
        assert_eq!(
            verify(&settings(Some("my-os")), &claims),
            Err(TokenError::Audience)
        );
        assert_eq!(
            verify(&settings(Some("my-os")), &json!({"exp": now_s() + 60})),
            Err(TokenError::Audience)
        );
        assert!(
            verify(
                &settings(Some("my-os")),
                &json!({"exp": now_s() + 60, "aud": ["x", "my-os"]})
            )
            .is_ok()
        );
    }

    #[test]
    fn a_token_of_another_key_or_algorithm_or_shape_is_invalid() {
        let verifier = JwtVerifier::new(&settings(None)).unwrap();
        let other = encode(
            &Header::new(Algorithm::HS256),
            &json!({"exp": now_s() + 60}),
            &EncodingKey::from_secret(b"another secret entirely, also long").unwrap(),
        )
        .unwrap();
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &json!({"exp": now_s() + 60}),
            &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        )
        .unwrap();
        for token in [other.as_str(), hs384.as_str(), "not.a.jwt", "abc"] {
            assert_eq!(verifier.verify(token), Err(TokenError::Invalid), "{token}");
        }
    }

    #[test]
    fn configuration_errors_name_their_key() {
        let mut s = settings(None);
        s.algorithm = "none".to_owned();
        assert_eq!(JwtVerifier::new(&s).unwrap_err().key, "auth.jwt.algorithm");
        let mut s = settings(None);
        s.algorithm = "RS256".to_owned();
        assert_eq!(
            JwtVerifier::new(&s).unwrap_err().key,
            "auth.jwt.verification_key"
        );
        let mut s = settings(None);
        s.verification_key = None;
        s.jwks_file = Some("/nonexistent/jwks.json".into());
        assert_eq!(JwtVerifier::new(&s).unwrap_err().key, "auth.jwt.jwks_file");
    }
}
