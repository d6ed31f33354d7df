//! Who a connection acts as. A client presents a JWT (as PostgREST takes them); it is checked
//! here against the keys of `realtime.jwt_secret` and becomes a `Principal`: the database role
//! its role claim names, and its claims, which policies read as `request.jwt.claims`. Whether
//! that role may be used at all is the worker's question (`bridge::Request::Authorize`).

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// Clock skew tolerated between the token's issuer and this server, in seconds, for `exp` and
/// `nbf`.
pub const LEEWAY_SECS: u64 = 5;
/// The latest time a token's `exp`, `nbf` or `iat` may name: 9999-12-31T23:59:59Z. Later,
/// negative or not a number, and the token is refused: no time claim may overflow a clock.
pub const MAX_TOKEN_TIME: u64 = 253_402_300_799;
/// HMAC secrets shorter than this are refused (as PostgREST does): they can be brute-forced.
const MIN_SECRET_BYTES: usize = 32;

/// The identity a connection acts as.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    pub role: String,
    /// The token's claims as JSON text (for `request.jwt.claims`); for the anonymous role,
    /// `{"role": <anon_role>}`.
    pub claims: String,
    /// The token's `exp` (Unix seconds); it is accepted until `LEEWAY_SECS` after.
    pub expires: Option<u64>,
    /// Acting as realtime.anon_role, without a token.
    pub anonymous: bool,
}

impl Principal {
    pub fn anonymous(role: &str) -> Principal {
        Principal {
            role: role.to_string(),
            claims: serde_json::json!({ "role": role }).to_string(),
            expires: None,
            anonymous: true,
        }
    }
}

/// Why a token, or the lack of one, was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required: send a token (realtime.anon_role is not set)")]
    NoToken,
    #[error("tokens are not accepted: realtime.jwt_secret is not set")]
    NoKeys,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("token audience is not accepted (realtime.jwt_audience)")]
    Audience,
    #[error("token names no role and realtime.anon_role is not set")]
    NoRole,
    #[error("{0}")]
    Role(String),
}

/// One verification key and the algorithms it may verify.
struct Key {
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
    kid: Option<String>,
}

/// How tokens are checked and what a connection without one acts as, from the settings.
pub struct AuthConfig {
    keys: Vec<Key>,
    audience: Option<String>,
    role_claim: Vec<Step>,
    anon_role: Option<String>,
}

/// The settings `AuthConfig` is made from, as the worker reads them.
#[derive(Default, Clone)]
pub struct AuthSettings {
    /// An HMAC secret, a JWK or JWKS as JSON, or `@path` of a file holding one of those.
    pub secret: String,
    pub secret_is_base64: bool,
    pub audience: String,
    /// Where the role is in the claims, as PostgREST's jwt-role-claim-key: `.role`,
    /// `.app_metadata.role`, `."https://example.com/role"`, `.roles[0]`.
    pub role_claim_key: String,
    pub anon_role: String,
}

/// A step of the role claim path: an object key or an array index.
#[derive(Debug, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

impl AuthConfig {
    /// Nobody is let in: no keys and no anonymous role.
    pub fn closed() -> AuthConfig {
        AuthConfig {
            keys: Vec::new(),
            audience: None,
            role_claim: vec![Step::Key("role".into())],
            anon_role: None,
        }
    }

    pub fn new(settings: &AuthSettings) -> Result<AuthConfig, String> {
        let role_claim = parse_claim_path(&settings.role_claim_key)
            .map_err(|e| format!("realtime.jwt_role_claim_key: {e}"))?;
        let keys = keys(&settings.secret, settings.secret_is_base64)
            .map_err(|e| format!("realtime.jwt_secret: {e}"))?;
        let non_empty = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
        Ok(AuthConfig {
            keys,
            audience: non_empty(&settings.audience),
            role_claim,
            anon_role: non_empty(&settings.anon_role),
        })
    }

    /// What a connection that presented no token acts as.
    pub fn anonymous(&self) -> Result<Principal, AuthError> {
        self.anon_role
            .as_deref()
            .map(Principal::anonymous)
            .ok_or(AuthError::NoToken)
    }

    /// Check `token`'s signature, algorithm, `exp`, `nbf` and `aud`, and read its role.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if self.keys.is_empty() {
            return Err(AuthError::NoKeys);
        }
        if unsigned(token) {
            return Err(AuthError::Invalid(
                "alg \"none\" is refused: tokens must be signed".into(),
            ));
        }
        // Algorithms outside the enum fail here.
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(&e))?;
        let candidates = self.keys.iter().filter(|k| {
            k.algorithms.contains(&header.alg)
                && (header.kid.is_none() || k.kid.is_none() || k.kid == header.kid)
        });
        let mut last = AuthError::Invalid(format!(
            "no configured key verifies {:?} tokens",
            header.alg
        ));
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(
                token,
                &key.key,
                &self.validation(header.alg),
            ) {
                Ok(data) => return self.principal(data.claims),
                Err(e) => last = refusal(e),
            }
            if last != AuthError::Invalid("signature does not match".into()) {
                break;
            }
        }
        Err(last)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        // Tokens without `exp` do not expire (as in PostgREST); with an audience set, `aud`
        // must be there and name it.
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                v.set_required_spec_claims(&["aud"]);
            }
            None => {
                v.validate_aud = false;
                v.set_required_spec_claims::<&str>(&[]);
            }
        }
        v
    }

    fn principal(&self, claims: Map<String, Value>) -> Result<Principal, AuthError> {
        for name in ["nbf", "iat"] {
            time_claim(&claims, name)?;
        }
        let expires = time_claim(&claims, "exp")?;
        let claimed = follow(&self.role_claim, &claims);
        let role = match claimed {
            Some(Value::String(role)) if !role.is_empty() => role.clone(),
            None | Some(Value::Null) => self.anon_role.clone().ok_or(AuthError::NoRole)?,
            Some(_) => return Err(AuthError::Invalid("the role claim is not a string".into())),
        };
        Ok(Principal {
            role,
            claims: Value::Object(claims).to_string(),
            expires,
            anonymous: false,
        })
    }
}

/// A NumericDate claim as whole seconds (fractions are dropped, as `exp` is checked in
/// seconds), refused unless it is a finite number from 0 to `MAX_TOKEN_TIME`.
fn time_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, AuthError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    value
        .as_f64()
        .filter(|t| t.is_finite() && (0.0..=MAX_TOKEN_TIME as f64).contains(t))
        .map(|t| Some(t as u64))
        .ok_or_else(|| {
            AuthError::Invalid(format!(
                "{name} must be a number of seconds from 0 to {MAX_TOKEN_TIME}"
            ))
        })
}

/// Whether the token's header says `"alg": "none"` (which jsonwebtoken cannot even parse;
/// named here so that the client learns why).
fn unsigned(token: &str) -> bool {
    use base64::Engine;
    let header = token.split('.').next().unwrap_or("");
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()
        .and_then(|h| serde_json::from_slice::<Value>(&h).ok())
        .and_then(|h| {
            h.get("alg")?
                .as_str()
                .map(|a| a.eq_ignore_ascii_case("none"))
        })
        .unwrap_or(false)
}

fn follow<'a>(path: &[Step], claims: &'a Map<String, Value>) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let Step::Key(key) = first else { return None };
    rest.iter()
        .try_fold(claims.get(key)?, |value, step| match step {
            Step::Key(k) => value.get(k),
            Step::Index(i) => value.get(i),
        })
}

fn invalid(e: &jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind::*;
    AuthError::Invalid(match e.kind() {
        InvalidAlgorithmName | InvalidAlgorithm => "unsupported or disallowed algorithm".into(),
        InvalidSignature => "signature does not match".into(),
        InvalidToken | Base64(_) | Json(_) | Utf8(_) => "not a well-formed JWT".into(),
        MissingRequiredClaim(c) => format!("claim \"{c}\" is required"),
        other => format!("{other:?}"),
    })
}

fn refusal(e: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind::*;
    match e.kind() {
        ExpiredSignature => AuthError::Expired,
        ImmatureSignature => AuthError::NotYetValid,
        InvalidAudience => AuthError::Audience,
        _ => invalid(&e),
    }
}

fn parse_claim_path(path: &str) -> Result<Vec<Step>, String> {
    let path = path.trim();
    let path = if path.is_empty() { ".role" } else { path };
    let mut steps = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            if let Some(quoted) = after.strip_prefix('"') {
                let end = quoted.find('"').ok_or("unterminated quoted key")?;
                steps.push(Step::Key(quoted[..end].to_string()));
                rest = &quoted[end + 1..];
            } else {
                let end = after.find(['.', '[']).unwrap_or(after.len());
                if end == 0 {
                    return Err(format!("empty key in \"{path}\""));
                }
                steps.push(Step::Key(after[..end].to_string()));
                rest = &after[end..];
            }
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']').ok_or("unterminated index")?;
            let index = after[..end]
                .parse()
                .map_err(|_| format!("\"{}\" is not an array index", &after[..end]))?;
            steps.push(Step::Index(index));
            rest = &after[end + 1..];
        } else {
            return Err(format!("\"{path}\" must start with . (like .role)"));
        }
    }
    if !matches!(steps.first(), Some(Step::Key(_))) {
        return Err(format!("\"{path}\" must start with a key"));
    }
    Ok(steps)
}

/// The keys `secret` holds: nothing when it is empty.
fn keys(secret: &str, is_base64: bool) -> Result<Vec<Key>, String> {
    let secret = secret.trim();
    if let Some(path) = secret.strip_prefix('@') {
        let text = std::fs::read_to_string(path.trim())
            .map_err(|e| format!("cannot read \"{}\": {e}", path.trim()))?;
        return keys(&text, is_base64);
    }
    if secret.is_empty() {
        return Ok(Vec::new());
    }
    if secret.starts_with('{') {
        let json: Value = serde_json::from_str(secret).map_err(|e| format!("invalid JSON: {e}"))?;
        let set: JwkSet = if json.get("keys").is_some() {
            serde_json::from_value(json).map_err(|e| format!("invalid JWKS: {e}"))?
        } else {
            JwkSet {
                keys: vec![serde_json::from_value(json).map_err(|e| format!("invalid JWK: {e}"))?],
            }
        };
        return set.keys.iter().map(jwk_key).collect();
    }
    let bytes = if is_base64 {
        use jsonwebtoken::DecodingKey as D;
        let key = D::from_base64_secret(secret).map_err(|e| format!("invalid base64: {e}"))?;
        return Ok(vec![hmac(key)]);
    } else {
        secret.as_bytes()
    };
    if bytes.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "an HMAC secret must be at least {MIN_SECRET_BYTES} characters"
        ));
    }
    Ok(vec![hmac(DecodingKey::from_secret(bytes))])
}

fn hmac(key: DecodingKey) -> Key {
    Key {
        key,
        algorithms: vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
        kid: None,
    }
}

fn jwk_key(jwk: &Jwk) -> Result<Key, String> {
    use Algorithm::*;
    let mut algorithms = match &jwk.algorithm {
        AlgorithmParameters::OctetKey(_) => vec![HS256, HS384, HS512],
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![ES256],
            EllipticCurve::P384 => vec![ES384],
            _ => return Err("only P-256 and P-384 elliptic curve keys are supported".into()),
        },
        AlgorithmParameters::OctetKeyPair(_) => vec![EdDSA],
    };
    if let Some(alg) = &jwk.common.key_algorithm {
        let named: Algorithm = alg
            .to_string()
            .parse()
            .map_err(|_| format!("key algorithm {alg} cannot verify signatures"))?;
        algorithms.retain(|a| *a == named);
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable key: {e}"))?;
    Ok(Key {
        key,
        algorithms,
        kid: jwk.common.key_id.clone(),
    })
}

/// Seconds since the epoch now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod unit {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &str = "a-test-secret-that-is-32-bytes-long!!";

    fn config(audience: &str, anon: &str) -> AuthConfig {
        AuthConfig::new(&AuthSettings {
            secret: SECRET.into(),
            audience: audience.into(),
            anon_role: anon.into(),
            ..Default::default()
        })
        .unwrap()
    }

    fn token(alg: Algorithm, claims: Value) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn tokens_are_checked() {
        let c = config("", "");
        let later = now() + 600;
        let p = c
            .verify(&token(
                Algorithm::HS384,
                serde_json::json!({"role": "alice", "sub": "1", "exp": later}),
            ))
            .unwrap();
        assert_eq!(p.role, "alice");
        assert_eq!(p.expires, Some(later));
        assert!(p.claims.contains("\"sub\":\"1\""));
        let expired = token(
            Algorithm::HS256,
            serde_json::json!({"role": "a", "exp": now() - 60}),
        );
        assert_eq!(c.verify(&expired), Err(AuthError::Expired));
        let early = token(
            Algorithm::HS256,
            serde_json::json!({"role": "a", "nbf": now() + 60}),
        );
        assert_eq!(c.verify(&early), Err(AuthError::NotYetValid));
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"role": "a"}),
            &EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes"),
        )
        .unwrap();
        assert!(matches!(c.verify(&forged), Err(AuthError::Invalid(_))));
        // alg: none, with the signature left off.
        let b64 = |s: &str| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
        };
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(r#"{"role":"postgres"}"#)
        );
        assert!(matches!(c.verify(&none), Err(AuthError::Invalid(_))));
        assert!(matches!(c.verify("garbage"), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn audience_and_roles() {
        let c = config("realtime", "web_anon");
        let with = |aud: Value| token(Algorithm::HS256, serde_json::json!({"aud": aud}));
        assert_eq!(c.verify(&with("other".into())), Err(AuthError::Audience));
        assert!(c
            .verify(&token(Algorithm::HS256, serde_json::json!({})))
            .is_err());
        // No role claim: the anonymous role, with the token's claims.
        let p = c.verify(&with("realtime".into())).unwrap();
        assert_eq!((p.role.as_str(), p.anonymous), ("web_anon", false));
        assert_eq!(c.anonymous().unwrap().role, "web_anon");
        assert_eq!(config("", "").anonymous(), Err(AuthError::NoToken));
    }

    #[test]
    fn role_claim_paths() {
        assert_eq!(
            parse_claim_path(r#".app."https://x.io/r".roles[1]"#).unwrap(),
            vec![
                Step::Key("app".into()),
                Step::Key("https://x.io/r".into()),
                Step::Key("roles".into()),
                Step::Index(1)
            ]
        );
        for bad in ["role", ".", ".a[", ".a[x]", "[0]"] {
            assert!(parse_claim_path(bad).is_err(), "{bad}");
        }
        let claims = serde_json::json!({"app": {"roles": ["a", "b"]}});
        let path = parse_claim_path(".app.roles[1]").unwrap();
        assert_eq!(
            follow(&path, claims.as_object().unwrap()),
            Some(&Value::from("b"))
        );
    }

    /// A key made for this test only.
    const EC_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgvIzN7+H4N063V/XJ
zMLavcf9TypjzBC+jtAIX1441AOhRANCAAQrQQfw91G33RvwYYglH2g5rjEzFQUH
NoDtY4O0hq0l9XzAKRw4WT3nEbNVT4j/ccA7zSxBaV29u6bcYs+2ku2d
-----END PRIVATE KEY-----";
    const EC_JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256","x":"K0EH8PdRt90b8GGIJR9oOa4xMxUFBzaA7WODtIatJfU","y":"fMApHDhZPecRs1VPiP9xwDvNLEFpXb27ptxiz7aS7Z0"}]}"#;

    #[test]
    fn es256_tokens_verify_against_a_jwks_inline_or_in_a_file() {
        let key = EncodingKey::from_ec_pem(EC_KEY.as_bytes()).unwrap();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k1".into());
        let signed = encode(&header, &serde_json::json!({"role": "web_user"}), &key).unwrap();
        let file = std::env::temp_dir().join(format!("realtime_jwks_{}.json", std::process::id()));
        std::fs::write(&file, EC_JWKS).unwrap();
        for secret in [EC_JWKS.to_string(), format!("@{}", file.display())] {
            let c = AuthConfig::new(&AuthSettings {
                secret,
                ..Default::default()
            })
            .map_err(|e| e.to_string())
            .unwrap();
            assert_eq!(c.verify(&signed).unwrap().role, "web_user");
            // The same claims under HS256 with the key's x as secret: refused.
            let forged = encode(
                &Header::new(Algorithm::HS256),
                &serde_json::json!({"role": "web_user"}),
                &EncodingKey::from_secret(b"K0EH8PdRt90b8GGIJR9oOa4xMxUFBzaA7WODtIatJfU"),
            )
            .unwrap();
            assert!(matches!(c.verify(&forged), Err(AuthError::Invalid(_))));
        }
        let _ = std::fs::remove_file(file);
    }

    #[test]
    fn secrets() {
        let short = AuthSettings {
            secret: "short".into(),
            ..Default::default()
        };
        assert!(AuthConfig::new(&short)
            .err()
            .unwrap()
            .contains("at least 32"));
        let jwks = AuthSettings {
            secret: r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#.into(),
            ..Default::default()
        };
        let c = AuthConfig::new(&jwks).unwrap();
        assert_eq!(c.keys[0].algorithms, vec![Algorithm::ES256]);
        let missing = AuthSettings {
            secret: "@/nonexistent/jwks.json".into(),
            ..Default::default()
        };
        assert!(AuthConfig::new(&missing)
            .err()
            .unwrap()
            .contains("cannot read"));
    }
}
