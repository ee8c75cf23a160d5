//! The server's token-signing keys (ES256), generated at first start, stored sealed with the
//! system data key, published as a JWKS, and rotatable (`fhirgate keys rotate-signing`): a new key
//! signs from then on and older ones keep verifying until they are retired.

use std::collections::HashMap;

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::EncodePrivateKey;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::crypto::Keyring;

/// The compartment whose data key seals the signing keys.
const SIGNING_COMPARTMENT: &str = "#signing";

/// Signing and verification keys of this server.
pub struct SigningKeys {
    kid: String,
    encoding: EncodingKey,
    decoding: HashMap<String, DecodingKey>,
    jwks: Value,
}

fn aad(kid: &str) -> Vec<u8> {
    format!("signing_key/{kid}").into_bytes()
}

impl SigningKeys {
    /// Loads the active keys, creating the first one if there is none.
    pub async fn load(db: &PgPool, keyring: &Keyring) -> anyhow::Result<Self> {
        if Self::active_count(db).await? == 0 {
            Self::create(db, keyring, false).await?;
        }
        // language=PostgreSQL
        let rows: Vec<(String, Vec<u8>, i64, Value)> = sqlx::query_as(
            "select kid, private_key, key_id, public_jwk from signing_key where retired_at is null order by created_at desc, kid",
        )
        .fetch_all(db)
        .await?;
        let (kid, sealed, key_id, _) = rows.first().context("no signing key")?;
        let dek = keyring.by_id(*key_id).await?;
        let der = dek.decrypt(sealed, &aad(kid))?;
        let encoding = EncodingKey::from_ec_der(&der);
        let mut decoding = HashMap::new();
        let mut keys = Vec::new();
        for (kid, _, _, jwk) in &rows {
            let x = jwk["x"].as_str().context("jwk x")?;
            let y = jwk["y"].as_str().context("jwk y")?;
            decoding.insert(kid.clone(), DecodingKey::from_ec_components(x, y)?);
            keys.push(jwk.clone());
        }
        Ok(Self {
            kid: kid.clone(),
            encoding,
            decoding,
            jwks: json!({ "keys": keys }),
        })
    }

    async fn active_count(db: &PgPool) -> anyhow::Result<i64> {
        // language=PostgreSQL
        Ok(
            sqlx::query_scalar("select count(*) from signing_key where retired_at is null")
                .fetch_one(db)
                .await?,
        )
    }

    /// Creates a new signing key; with `rotate`, it becomes the one that signs (the newest
    /// active key signs). Two servers starting together create one key: an advisory lock.
    pub async fn create(db: &PgPool, keyring: &Keyring, rotate: bool) -> anyhow::Result<String> {
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let der = secret.to_pkcs8_der().context("encoding the signing key")?;
        let point = secret.public_key().to_encoded_point(false);
        let x = URL_SAFE_NO_PAD.encode(point.x().context("x")?);
        let y = URL_SAFE_NO_PAD.encode(point.y().context("y")?);
        let kid = hex::encode(&Sha256::digest(format!("{x}.{y}"))[..8]);
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "alg": "ES256", "use": "sig"});
        let dek = keyring.for_compartment(SIGNING_COMPARTMENT).await?;
        let sealed = dek.encrypt(der.as_bytes(), &aad(&kid))?;
        let mut tx = db.begin().await?;
        // language=PostgreSQL
        sqlx::query("select pg_advisory_xact_lock(hashtext('fhirgate-signing-key'))")
            .execute(&mut *tx)
            .await?;
        // language=PostgreSQL
        let active: i64 =
            sqlx::query_scalar("select count(*) from signing_key where retired_at is null")
                .fetch_one(&mut *tx)
                .await?;
        if active > 0 && !rotate {
            tx.rollback().await?;
            return Ok(String::new());
        }
        // language=PostgreSQL
        sqlx::query("insert into signing_key (kid, algorithm, private_key, key_id, public_jwk) values ($1, 'ES256', $2, $3, $4)")
            .bind(&kid)
            .bind(sealed)
            .bind(dek.key_id)
            .bind(&jwk)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(kid)
    }

    /// Retires every key but the newest: tokens they signed stop verifying.
    pub async fn retire_old(db: &PgPool) -> anyhow::Result<u64> {
        // language=PostgreSQL
        let done = sqlx::query(
            r#"update signing_key set retired_at = now()
               where retired_at is null and kid <> (select kid from signing_key where retired_at is null order by created_at desc, kid limit 1)"#,
        )
        .execute(db)
        .await?;
        Ok(done.rows_affected())
    }

    /// Signs `claims` as an ES256 JWT with this server's current key.
    pub fn sign<T: serde::Serialize>(&self, claims: &T) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".to_owned());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }

    /// The verification key with id `kid`.
    pub fn decoding_key(&self, kid: &str) -> Option<&DecodingKey> {
        self.decoding.get(kid)
    }

    /// The public JWKS.
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }
}
