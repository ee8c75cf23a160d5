//! Envelope encryption of resource bodies and the keyed blind index.
//!
//! - Each patient compartment has a random 256-bit data key (DEK); resources outside any patient
//!   use the system compartment (`""`). DEKs are stored in `data_key_wrapping`, wrapped by a master
//!   key (KEK) through the [`KeyProvider`] seam, so a cloud KMS can replace [`LocalKeyProvider`].
//! - Bodies are AES-256-GCM with a fresh random 96-bit nonce per encryption; the AAD is
//!   `type/id/version`, so a ciphertext copied into another row does not decrypt. A stored body is
//!   `[12-byte nonce][ciphertext + tag]`.
//! - Person-identifying search values are stored as HMAC-SHA256 blind indexes under a separate index
//!   key, itself a wrapped key of the reserved compartment `#index`.
//!
//! The KEK never enters the database. `fhirgate keys rotate` adds a wrapping under a new KEK to
//! every DEK, so servers holding the old or the new key both keep working during a rolling restart.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{AeadCore, Aes256Gcm, Key, Nonce};
use anyhow::{anyhow, bail, Context};
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

const NONCE_LEN: usize = 12;
/// The reserved compartment whose key is the blind-index HMAC key.
const INDEX_COMPARTMENT: &str = "#index";

/// A 256-bit master key (KEK) with its public id (a hash prefix, safe to store).
pub struct MasterKey {
    id: String,
    cipher: Aes256Gcm,
}

impl MasterKey {
    /// Builds a KEK from 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> anyhow::Result<Self> {
        if bytes.len() != 32 {
            bail!("a master key must be 32 bytes, got {}", bytes.len());
        }
        let mut h = Sha256::new();
        h.update(b"fhirgate-kek-id\0");
        h.update(bytes);
        let id = hex::encode(&h.finalize()[..8]);
        Ok(Self {
            id,
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(bytes)),
        })
    }

    /// Parses a key written as base64 (standard alphabet) or as 64 hex digits.
    pub fn parse(text: &SecretBox<str>) -> anyhow::Result<Self> {
        let t = text.expose_secret().trim();
        let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(t)?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .context("the master key is neither base64 nor hex")?
        };
        Self::from_bytes(&bytes)
    }

    /// Reads a key file written by [`MasterKey::generate_file`] or by an operator.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading master key file {}", path.display()))?;
        Self::parse(&SecretBox::from(text.into_boxed_str()))
    }

    /// Writes a new random key to `path` (mode 0600) and returns it.
    pub fn generate_file(path: &Path) -> anyhow::Result<Self> {
        let mut raw = [0u8; 32];
        OsRng.fill_bytes(&mut raw);
        let text = base64::engine::general_purpose::STANDARD.encode(raw);
        write_private(path, &text)?;
        let key = Self::from_bytes(&raw);
        zeroize::Zeroize::zeroize(&mut raw);
        key
    }

    /// The key's id as stored beside each wrapping.
    pub fn id(&self) -> &str {
        &self.id
    }
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating key file {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Wraps and unwraps data keys. The seam where a KMS-backed provider plugs in.
pub trait KeyProvider: Send + Sync {
    /// Wraps `dek` under every KEK this provider can write with; returns `(kek_id, wrapped)` pairs.
    fn wrap(&self, dek: &[u8], aad: &[u8]) -> anyhow::Result<Vec<(String, Vec<u8>)>>;
    /// Unwraps with the KEK `kek_id`; `Ok(None)` when this provider does not hold that KEK.
    fn unwrap(&self, kek_id: &str, wrapped: &[u8], aad: &[u8]) -> anyhow::Result<Option<Vec<u8>>>;
    /// Id of the KEK new wrappings are made with.
    fn primary_id(&self) -> &str;
}

/// KEKs held in process memory: the primary one plus any previous ones kept for a rotation.
pub struct LocalKeyProvider {
    keys: Vec<MasterKey>,
}

impl LocalKeyProvider {
    /// `primary` first; `previous` are still accepted for unwrapping and also receive new wrappings,
    /// so that servers not yet restarted with the new key can read keys created meanwhile.
    pub fn new(primary: MasterKey, previous: Vec<MasterKey>) -> Self {
        let mut keys = vec![primary];
        keys.extend(previous);
        Self { keys }
    }
}

fn seal(cipher: &Aes256Gcm, plaintext: &[u8], aad: &[u8]) -> anyhow::Result<Vec<u8>> {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let ct = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| anyhow!("encryption failed"))?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

fn open(cipher: &Aes256Gcm, sealed: &[u8], aad: &[u8]) -> anyhow::Result<Vec<u8>> {
    if sealed.len() < NONCE_LEN + 16 {
        bail!("ciphertext too short");
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map_err(|_| anyhow!("decryption failed: wrong key or tampered row"))
}

impl KeyProvider for LocalKeyProvider {
    fn wrap(&self, dek: &[u8], aad: &[u8]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        self.keys
            .iter()
            .map(|k| Ok((k.id.clone(), seal(&k.cipher, dek, aad)?)))
            .collect()
    }

    fn unwrap(&self, kek_id: &str, wrapped: &[u8], aad: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        match self.keys.iter().find(|k| k.id == kek_id) {
            Some(k) => open(&k.cipher, wrapped, aad).map(Some),
            None => Ok(None),
        }
    }

    fn primary_id(&self) -> &str {
        &self.keys[0].id
    }
}

/// An unwrapped data key and its row id.
pub struct DataKey {
    /// `data_key.key_id`, stored beside every ciphertext made with it.
    pub key_id: i64,
    cipher: Aes256Gcm,
}

impl DataKey {
    /// Encrypts `plaintext` with a fresh nonce, bound to `aad`.
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> anyhow::Result<Vec<u8>> {
        seal(&self.cipher, plaintext, aad)
    }

    /// Decrypts a `[nonce][ciphertext]` made by [`DataKey::encrypt`] with the same `aad`.
    pub fn decrypt(&self, sealed: &[u8], aad: &[u8]) -> anyhow::Result<Vec<u8>> {
        open(&self.cipher, sealed, aad)
    }
}

/// The AAD of a resource version.
pub fn resource_aad(rt: &str, id: &str, version: i32) -> Vec<u8> {
    format!("{rt}/{id}/{version}").into_bytes()
}

/// The process-wide key ring: the KEK provider, a cache of unwrapped DEKs and the index key.
pub struct Keyring {
    provider: Box<dyn KeyProvider>,
    /// A small pool of its own: a request that holds a pooled connection inside a transaction must
    /// never wait for another pooled connection to fetch a key (that deadlocks under load).
    db: PgPool,
    by_compartment: RwLock<HashMap<String, Arc<DataKey>>>,
    by_id: RwLock<HashMap<i64, Arc<DataKey>>>,
    index: Hmac<Sha256>,
    /// Seals paging cursors (derived from the index key, so every server of a store agrees).
    cursor: Aes256Gcm,
}

impl Keyring {
    /// Loads (or creates) the index key and returns a ready key ring.
    pub async fn open(db: &PgPool, provider: Box<dyn KeyProvider>) -> anyhow::Result<Self> {
        let own = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_lazy_with((*db.connect_options()).clone());
        let mut ring = Self {
            provider,
            db: own,
            by_compartment: RwLock::default(),
            by_id: RwLock::default(),
            index: <Hmac<Sha256> as Mac>::new_from_slice(&[0u8; 32])
                .map_err(|_| anyhow!("hmac"))?,
            cursor: Aes256Gcm::new_from_slice(&[0u8; 32]).map_err(|_| anyhow!("aes key"))?,
        };
        let raw = ring.load_or_create_raw(INDEX_COMPARTMENT).await?;
        ring.index =
            <Hmac<Sha256> as Mac>::new_from_slice(&raw.1).map_err(|_| anyhow!("hmac key"))?;
        let mut derive = ring.index.clone();
        derive.update(b"fhirgate paging cursor key v1");
        ring.cursor = Aes256Gcm::new_from_slice(&derive.finalize().into_bytes())
            .map_err(|_| anyhow!("cursor key"))?;
        Ok(ring)
    }

    /// Id of the KEK used for new wrappings.
    pub fn primary_kek_id(&self) -> &str {
        self.provider.primary_id()
    }

    /// The DEK of a compartment (`""` for the system compartment), created on first use.
    pub async fn for_compartment(&self, compartment: &str) -> anyhow::Result<Arc<DataKey>> {
        if let Some(k) = read(&self.by_compartment).get(compartment) {
            return Ok(k.clone());
        }
        let (key_id, raw) = self.load_or_create_raw(compartment).await?;
        Ok(self.remember(Some(compartment), key_id, &raw))
    }

    /// The DEK with row id `key_id`, to decrypt a stored version.
    pub async fn by_id(&self, key_id: i64) -> anyhow::Result<Arc<DataKey>> {
        if let Some(k) = read(&self.by_id).get(&key_id) {
            return Ok(k.clone());
        }
        // language=PostgreSQL
        let rows: Vec<(String, String, Vec<u8>)> = sqlx::query_as(
            r#"select k.compartment, w.kek_id, w.wrapped
               from data_key k join data_key_wrapping w using (key_id) where k.key_id = $1"#,
        )
        .bind(key_id)
        .fetch_all(&self.db)
        .await?;
        let Some(compartment) = rows.first().map(|r| r.0.clone()) else {
            bail!("data key {key_id} does not exist (erased?)");
        };
        let raw = self.unwrap_any(&compartment, rows.into_iter().map(|r| (r.1, r.2)))?;
        Ok(self.remember(None, key_id, &raw))
    }

    fn remember(&self, compartment: Option<&str>, key_id: i64, raw: &[u8]) -> Arc<DataKey> {
        let dk = Arc::new(DataKey {
            key_id,
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(raw)),
        });
        if let Some(c) = compartment {
            write(&self.by_compartment).insert(c.to_owned(), dk.clone());
        }
        write(&self.by_id).insert(key_id, dk.clone());
        dk
    }

    fn unwrap_any(
        &self,
        compartment: &str,
        wrappings: impl IntoIterator<Item = (String, Vec<u8>)>,
    ) -> anyhow::Result<Vec<u8>> {
        for (kek_id, wrapped) in wrappings {
            if let Some(raw) = self
                .provider
                .unwrap(&kek_id, &wrapped, compartment.as_bytes())?
            {
                return Ok(raw);
            }
        }
        bail!("no wrapping of this data key is under a master key this server holds (rotated without keeping the previous key?)")
    }

    async fn load_or_create_raw(&self, compartment: &str) -> anyhow::Result<(i64, Vec<u8>)> {
        // language=PostgreSQL
        let select = r#"select k.key_id, w.kek_id, w.wrapped
                        from data_key k join data_key_wrapping w using (key_id) where k.compartment = $1"#;
        let rows: Vec<(i64, String, Vec<u8>)> = sqlx::query_as(select)
            .bind(compartment)
            .fetch_all(&self.db)
            .await?;
        if let Some(first) = rows.first() {
            let key_id = first.0;
            let raw = self.unwrap_any(compartment, rows.into_iter().map(|r| (r.1, r.2)))?;
            return Ok((key_id, raw));
        }
        let mut raw = vec![0u8; 32];
        OsRng.fill_bytes(&mut raw);
        let wrappings = self.provider.wrap(&raw, compartment.as_bytes())?;
        let mut tx = self.db.begin().await?;
        // Two servers may create the same compartment's key at once: the unique constraint picks one.
        // language=PostgreSQL
        let inserted: Option<(i64,)> =
            sqlx::query_as("insert into data_key (compartment) values ($1) on conflict (compartment) do nothing returning key_id")
                .bind(compartment)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((key_id,)) = inserted else {
            tx.rollback().await?;
            return Box::pin(self.load_or_create_raw(compartment)).await;
        };
        for (kek_id, wrapped) in wrappings {
            // language=PostgreSQL
            sqlx::query(
                "insert into data_key_wrapping (key_id, kek_id, wrapped) values ($1, $2, $3)",
            )
            .bind(key_id)
            .bind(kek_id)
            .bind(wrapped)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok((key_id, raw))
    }

    /// Seals a paging cursor: encrypted and authenticated, bound to `binding` (the caller and
    /// the query), as URL-safe text. It can be neither read nor forged, nor replayed by another
    /// caller or for another query.
    pub fn seal_cursor(&self, plaintext: &[u8], binding: &[u8]) -> String {
        use base64::Engine;
        let sealed = seal(&self.cursor, plaintext, binding).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed)
    }

    /// Opens a cursor of [`Keyring::seal_cursor`] made with the same `binding`.
    pub fn open_cursor(&self, text: &str, binding: &[u8]) -> Option<Vec<u8>> {
        use base64::Engine;
        let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()?;
        open(&self.cursor, &sealed, binding).ok()
    }

    /// Keyed blind index of a normalised search value (16 bytes of HMAC-SHA256).
    pub fn blind(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut mac = self.index.clone();
        for p in parts {
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        mac.finalize().into_bytes()[..16].to_vec()
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Adds a wrapping under `new` to every data key that lacks one, unwrapping with `current`.
/// With `retire`, then deletes every wrapping not under `new`, once all keys have one.
/// Each key is handled in its own short transaction, so serving servers are never blocked.
pub async fn rotate(
    db: &PgPool,
    current: &dyn KeyProvider,
    new: &MasterKey,
    retire: bool,
) -> anyhow::Result<RotateReport> {
    let mut report = RotateReport::default();
    // language=PostgreSQL
    let keys: Vec<(i64, String)> = sqlx::query_as(
        r#"select key_id, compartment from data_key k
           where not exists (select 1 from data_key_wrapping w where w.key_id = k.key_id and w.kek_id = $1)
           order by key_id"#,
    )
    .bind(&new.id)
    .fetch_all(db)
    .await?;
    for (key_id, compartment) in keys {
        // language=PostgreSQL
        let wrappings: Vec<(String, Vec<u8>)> =
            sqlx::query_as("select kek_id, wrapped from data_key_wrapping where key_id = $1")
                .bind(key_id)
                .fetch_all(db)
                .await?;
        let mut raw = None;
        for (kek_id, wrapped) in wrappings {
            if let Some(r) = current.unwrap(&kek_id, &wrapped, compartment.as_bytes())? {
                raw = Some(r);
                break;
            }
        }
        let Some(mut raw) = raw else {
            report.unreadable += 1;
            continue;
        };
        let wrapped = seal(&new.cipher, &raw, compartment.as_bytes())?;
        zeroize::Zeroize::zeroize(&mut raw);
        // language=PostgreSQL
        sqlx::query("insert into data_key_wrapping (key_id, kek_id, wrapped) values ($1, $2, $3) on conflict do nothing")
            .bind(key_id)
            .bind(&new.id)
            .bind(wrapped)
            .execute(db)
            .await?;
        report.rewrapped += 1;
    }
    if retire {
        if report.unreadable > 0 {
            bail!("{} data keys could not be unwrapped with the current key; refusing to retire old wrappings", report.unreadable);
        }
        // language=PostgreSQL
        let missing: (i64,) = sqlx::query_as(
            r#"select count(*) from data_key k
               where not exists (select 1 from data_key_wrapping w where w.key_id = k.key_id and w.kek_id = $1)"#,
        )
        .bind(&new.id)
        .fetch_one(db)
        .await?;
        if missing.0 > 0 {
            bail!("{} data keys were created meanwhile without a wrapping under the new key; run rotate again", missing.0);
        }
        // language=PostgreSQL
        let done = sqlx::query("delete from data_key_wrapping where kek_id <> $1")
            .bind(&new.id)
            .execute(db)
            .await?;
        report.retired = done.rows_affected();
    }
    Ok(report)
}

/// What [`rotate`] did.
#[derive(Debug, Default)]
pub struct RotateReport {
    /// Data keys that received a wrapping under the new KEK.
    pub rewrapped: u64,
    /// Data keys no KEK held by the current provider could unwrap.
    pub unreadable: u64,
    /// Old wrappings deleted.
    pub retired: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ciphertext_only_opens_with_its_own_aad() {
        let dk = DataKey {
            key_id: 1,
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&[7u8; 32])),
        };
        let sealed = dk
            .encrypt(b"{\"resourceType\":\"Patient\"}", b"Patient/a/1")
            .expect("encrypt");
        assert_eq!(
            dk.decrypt(&sealed, b"Patient/a/1").expect("decrypt"),
            b"{\"resourceType\":\"Patient\"}"
        );
        assert!(dk.decrypt(&sealed, b"Patient/b/1").is_err());
        assert!(dk.decrypt(&sealed, b"Patient/a/2").is_err());
    }

    #[test]
    fn two_encryptions_use_different_nonces() {
        let dk = DataKey {
            key_id: 1,
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&[7u8; 32])),
        };
        let a = dk.encrypt(b"x", b"a").expect("a");
        let b = dk.encrypt(b"x", b"a").expect("b");
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
    }

    #[test]
    fn master_keys_parse_from_hex_and_base64() {
        let hex_key = SecretBox::from("11".repeat(32).into_boxed_str());
        let b64 = SecretBox::from(
            base64::engine::general_purpose::STANDARD
                .encode([0x11u8; 32])
                .into_boxed_str(),
        );
        assert_eq!(
            MasterKey::parse(&hex_key).expect("hex").id,
            MasterKey::parse(&b64).expect("b64").id
        );
        assert!(MasterKey::parse(&SecretBox::from("short".to_owned().into_boxed_str())).is_err());
    }
}
