//! Registered OAuth clients: apps (authorization code + PKCE) and backends (SMART Backend Services,
//! `private_key_jwt`). Registered with `fhirgate client add`; see `config.rs` for the flags.

use anyhow::{bail, Context};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::auth::scopes::ScopeSet;

/// A registered client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The `client_id`.
    pub client_id: String,
    /// `app` or `backend`.
    pub kind: String,
    /// The scopes it may be granted, space-separated.
    pub scopes: String,
    /// Exact redirect URIs (apps).
    pub redirect_uris: Vec<String>,
    /// Whether an app holds a secret.
    pub confidential: bool,
    /// SHA-256 of the secret of a confidential app.
    pub secret_hash: Option<String>,
    /// The public JWKS of a backend.
    pub jwks: Option<Value>,
    /// `Organization/<id>` of a partner backend; `None` for first-party.
    pub organization: Option<String>,
}

type ClientRow = (
    String,
    String,
    String,
    Vec<String>,
    bool,
    Option<String>,
    Option<Value>,
    Option<String>,
);

fn from_row(r: ClientRow) -> Client {
    Client {
        client_id: r.0,
        kind: r.1,
        scopes: r.2,
        redirect_uris: r.3,
        confidential: r.4,
        secret_hash: r.5,
        jwks: r.6,
        organization: r.7,
    }
}

/// The client `client_id`, if registered.
pub async fn get(db: &PgPool, client_id: &str) -> sqlx::Result<Option<Client>> {
    // language=PostgreSQL
    let row: Option<ClientRow> = sqlx::query_as(
        "select client_id, kind, scopes, redirect_uris, confidential, secret_hash, jwks, organization from client where client_id = $1",
    )
    .bind(client_id)
    .fetch_optional(db)
    .await?;
    Ok(row.map(from_row))
}

/// Every registered client, by id.
pub async fn list(db: &PgPool) -> sqlx::Result<Vec<Client>> {
    // language=PostgreSQL
    let rows: Vec<ClientRow> = sqlx::query_as(
        "select client_id, kind, scopes, redirect_uris, confidential, secret_hash, jwks, organization from client order by client_id",
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// Removes a client and revokes every token it was issued until now; `false` if there was none.
pub async fn remove(db: &PgPool, client_id: &str) -> sqlx::Result<bool> {
    let mut tx = db.begin().await?;
    // language=PostgreSQL
    let done = sqlx::query("delete from client where client_id = $1")
        .bind(client_id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 1 {
        // language=PostgreSQL
        sqlx::query(
            "insert into revoked_client (client_id) values ($1) on conflict (client_id) do update set revoked_at = now()",
        )
        .bind(client_id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}

/// SHA-256 (hex) of a client secret. Secrets are 256-bit random values, so a fast hash suffices.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Checks a public JWKS for a backend: a `keys` array of RSA or EC public keys, no private parts,
/// no two keys with the same `kid`.
pub fn check_jwks(jwks: &Value) -> anyhow::Result<()> {
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .context("the JWKS has no \"keys\" array")?;
    if keys.is_empty() {
        bail!("the JWKS has no keys");
    }
    let mut kids = std::collections::HashSet::new();
    for k in keys {
        match k.get("kty").and_then(Value::as_str) {
            Some("RSA" | "EC") => {}
            other => {
                bail!("key type {other:?} is not supported (RSA for RS384, EC P-384 for ES384)")
            }
        }
        if k.get("d").is_some() {
            bail!("the JWKS holds a private key; register only the public keys");
        }
        if let Some(kid) = k.get("kid").and_then(Value::as_str) {
            if !kids.insert(kid.to_owned()) {
                bail!("two keys share the kid {kid}");
            }
        }
    }
    Ok(())
}

/// Registers a client after checking it; fails if the id is taken.
pub async fn add(db: &PgPool, c: &Client) -> anyhow::Result<()> {
    if c.client_id.is_empty()
        || c.client_id.len() > 128
        || c.client_id
            .chars()
            .any(|ch| ch.is_whitespace() || ch.is_control())
    {
        bail!("--id must be 1 to 128 visible characters");
    }
    ScopeSet::parse(&c.scopes)?;
    match c.kind.as_str() {
        "backend" => {
            check_jwks(c.jwks.as_ref().context("a backend needs --jwks")?)?;
            if let Some(org) = &c.organization {
                let ok = org
                    .strip_prefix("Organization/")
                    .is_some_and(fhirgate_codec::is_valid_id);
                if !ok {
                    bail!("--organization must be Organization/<id>");
                }
            }
        }
        "app" => {
            if c.redirect_uris.is_empty() {
                bail!("an app needs at least one --redirect-uri");
            }
            for u in &c.redirect_uris {
                if !(u.starts_with("https://") || u.starts_with("http://")) || u.contains('#') {
                    bail!("redirect URI {u} must be an absolute http(s) URL without a fragment");
                }
            }
        }
        other => bail!("--kind must be app or backend, not {other}"),
    }
    // language=PostgreSQL
    let done = sqlx::query(
        r#"insert into client (client_id, kind, scopes, redirect_uris, confidential, secret_hash, jwks, organization)
           values ($1, $2, $3, $4, $5, $6, $7, $8) on conflict (client_id) do nothing"#,
    )
    .bind(&c.client_id)
    .bind(&c.kind)
    .bind(&c.scopes)
    .bind(&c.redirect_uris)
    .bind(c.confidential)
    .bind(&c.secret_hash)
    .bind(&c.jwks)
    .bind(&c.organization)
    .execute(db)
    .await?;
    if done.rows_affected() == 0 {
        bail!("a client with id {} is already registered", c.client_id);
    }
    Ok(())
}

/// Makes sure the Organization a partner belongs to exists as a FHIR resource, creating a minimal
/// one (named after the client) when it does not. Consents name it, so it must resolve. Called by
/// the server (the command line has no access to the encryption keys of a running server).
pub async fn ensure_organization(
    state: &crate::state::AppState,
    organization: &str,
    client_id: &str,
) -> crate::error::Result<()> {
    use crate::storage::write::{self, WriteKind, WriteOp};
    let Some(id) = organization.strip_prefix("Organization/") else {
        return Ok(());
    };
    if crate::storage::read_current(state, "Organization", id)
        .await?
        .is_some()
    {
        return Ok(());
    }
    let org = serde_json::json!({"resourceType": "Organization", "id": id, "active": true,
        "name": format!("Partner {client_id}")});
    let org = write::check_resource(org, "Organization", Some(id))?;
    let op = WriteOp {
        kind: WriteKind::Update,
        resource_type: "Organization".into(),
        id: id.to_owned(),
        resource: Some(org),
        if_match: None,
    };
    let mut tx = state.db.begin().await?;
    let written = write::apply(state, &mut tx, vec![op], &crate::access::Policy::server()).await;
    match written {
        Ok(_) => {
            tx.commit().await?;
            tracing::info!(organization, "created the Organization of a partner client");
            Ok(())
        }
        // Another request created it at the same moment.
        Err(_)
            if crate::storage::read_current(state, "Organization", id)
                .await?
                .is_some() =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// `fhirgate client add --generate-key PATH`: a fresh ES384 key pair; the private key goes to
/// `path` (PKCS#8 PEM, created new with mode 0600, never overwritten) and the public JWKS (kid =
/// the client id) is returned for the registration.
pub fn generate_key_file(path: &std::path::Path, kid: &str) -> anyhow::Result<serde_json::Value> {
    use base64::Engine;
    use p384::elliptic_curve::sec1::ToEncodedPoint;
    use p384::pkcs8::{EncodePrivateKey, LineEnding};
    use std::io::Write;
    let secret = p384::SecretKey::random(&mut rand::rngs::OsRng);
    let pem = secret
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the key: {e}"))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| anyhow::anyhow!("writing {} (it must not exist yet): {e}", path.display()))?;
    f.write_all(pem.as_bytes())?;
    f.sync_all()?;
    let point = secret.public_key().to_encoded_point(false);
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let (x, y) = (
        point.x().ok_or_else(|| anyhow::anyhow!("no x"))?,
        point.y().ok_or_else(|| anyhow::anyhow!("no y"))?,
    );
    Ok(
        serde_json::json!({"keys": [{"kty": "EC", "crv": "P-384", "kid": kid, "alg": "ES384",
        "use": "sig", "x": b64(x), "y": b64(y)}]}),
    )
}
