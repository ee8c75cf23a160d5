//! The ingest path: a provider payload (Apple Health export, HealthKit JSON, Fitbit, Google Fit,
//! Oura, Withings) is mapped by the `mappers` crate, validated, compared with what is stored and
//! written in one transaction, with a Provenance for the import. Re-importing the same data
//! creates nothing: the mappers give every record a deterministic id. A record whose content
//! changed becomes a new version with status `amended`.
//!
//! Used by `POST /ingest/{source}?patient=ID` and by `fhirgate import`.

use std::collections::{BTreeMap, HashMap};

use axum::response::IntoResponse;
use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{FhirError, Result};
use crate::state::AppState;
use crate::storage;
use crate::storage::write::{self, check_resource, WriteKind, WriteOp};

/// What an import did.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct IngestSummary {
    /// Resources stored for the first time.
    pub created: u64,
    /// Resources whose content changed (a new version).
    pub updated: u64,
    /// Resources already stored with the same content.
    pub unchanged: u64,
    /// Records that could not be mapped or did not validate, with where and why.
    pub rejected: Vec<Rejected>,
    /// Records deliberately not mapped, counted per reason.
    pub skipped: BTreeMap<String, u64>,
}

/// One rejected record.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Rejected {
    /// Line, JSON path or resource id of the record.
    pub location: String,
    /// Why.
    pub reason: String,
}

/// Maps `bytes` of `source` for `patient_id` off the async runtime (mapping is CPU work).
pub async fn map(
    source: fhirgate_mappers::Source,
    patient_id: &str,
    bytes: Vec<u8>,
) -> Result<fhirgate_mappers::MapOutput> {
    let ctx = fhirgate_mappers::MapContext::new(patient_id);
    tokio::task::spawn_blocking(move || fhirgate_mappers::map(source, &bytes, &ctx))
        .await
        .map_err(|e| FhirError::Internal(e.into()))?
        .map_err(|e| {
            FhirError::bad_request(
                "body",
                format!("the body cannot be read as {}: {e}", source.as_str()),
            )
        })
}

fn without_meta(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("meta");
    }
    v
}

/// Validates, de-duplicates and stores mapped resources in one transaction.
pub async fn store(
    state: &AppState,
    patient_id: &str,
    mapped: fhirgate_mappers::MapOutput,
) -> Result<IngestSummary> {
    let mut summary = IngestSummary {
        rejected: mapped
            .errors
            .into_iter()
            .map(|e| Rejected {
                location: e.location,
                reason: e.reason,
            })
            .collect(),
        skipped: mapped.skipped,
        ..Default::default()
    };
    // Validate first; group ids by type to fetch what is stored in one query per type.
    let mut valid: Vec<(String, String, Value)> = Vec::new();
    for r in mapped.resources {
        let rt = r
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let id = r
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match check_resource(r, &rt, Some(&id)) {
            Ok(canonical) => valid.push((rt, id, canonical)),
            Err(e) => {
                let (_, issues) = e.client_response();
                let reason = issues
                    .into_iter()
                    .map(|i| i.message)
                    .collect::<Vec<_>>()
                    .join("; ");
                summary.rejected.push(Rejected {
                    location: format!("{rt}/{id}"),
                    reason,
                });
            }
        }
    }
    let mut by_type: HashMap<String, Vec<String>> = HashMap::new();
    for (rt, id, _) in &valid {
        by_type.entry(rt.clone()).or_default().push(id.clone());
    }
    let mut stored: HashMap<(String, String), Value> = HashMap::new();
    for (rt, ids) in &by_type {
        for v in storage::read_many(state, rt, ids).await? {
            if let Some(b) = v.body {
                stored.insert((v.resource_type, v.id), fhirgate_codec::parse_json(&b)?);
            }
        }
    }
    let mut ops = Vec::new();
    let mut written = Vec::new();
    for (rt, id, mut resource) in valid {
        match stored.get(&(rt.clone(), id.clone())) {
            Some(old) if without_meta(old) == without_meta(&resource) => {
                summary.unchanged += 1;
                continue;
            }
            Some(_) => {
                // The content changed: a new version, marked as amended (R4 observation-status).
                summary.updated += 1;
                if rt == "Observation" {
                    resource["status"] = json!("amended");
                }
            }
            None => summary.created += 1,
        }
        written.push(json!({"reference": format!("{rt}/{id}")}));
        ops.push(WriteOp {
            kind: WriteKind::Update,
            resource_type: rt,
            id,
            resource: Some(resource),
            if_match: None,
        });
    }
    if ops.is_empty() {
        return Ok(summary);
    }
    // One Provenance per import batch: what was written, on whose behalf, when.
    let provenance_id = write::new_id();
    let provenance = json!({
        "resourceType": "Provenance",
        "id": provenance_id,
        "target": written,
        "recorded": write::instant(&write::now()),
        "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "CREATE"}]},
        "agent": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "author"}]},
                   "who": {"reference": format!("Patient/{patient_id}")}}],
    });
    let provenance = check_resource(provenance, "Provenance", Some(&provenance_id))?;
    ops.push(WriteOp {
        kind: WriteKind::Create,
        resource_type: "Provenance".into(),
        id: provenance_id,
        resource: Some(provenance),
        if_match: None,
    });
    let mut tx = state.db.begin().await?;
    write::apply(state, &mut tx, ops, &crate::access::Policy::server()).await?;
    tx.commit().await?;
    Ok(summary)
}

/// The `/ingest/{source}` route; it needs a token like the FHIR API.
pub fn router(state: &AppState) -> axum::Router<AppState> {
    axum::Router::new()
        .route("/ingest/{source}", axum::routing::post(ingest))
        .route("/ingest/jobs/{job}", axum::routing::get(job_status))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::guard::require_token,
        ))
}

/// `POST /ingest/{source}?patient=ID`: maps the body and answers with the summary. The token must
/// allow creating and updating Observations and Devices (a first-party backend or admin).
async fn ingest(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::Extension(policy): axum::Extension<std::sync::Arc<crate::access::Policy>>,
    axum::extract::Path(source): axum::extract::Path<String>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
    body: axum::body::Body,
) -> Result<axum::response::Response> {
    use crate::auth::scopes::Permission;
    let source: fhirgate_mappers::Source = source.parse().map_err(|_| {
        FhirError::NotFound(format!(
            "unknown source '{source}' (apple-health, healthkit, fitbit, google-fit, oura, withings)"
        ))
    })?;
    for rt in ["Observation", "Device"] {
        policy.require(rt, Permission::Create)?;
        policy.require(rt, Permission::Update)?;
    }
    policy.require("Provenance", Permission::Create)?;
    let pairs = crate::fhir::format::query_pairs(q.as_deref());
    // A patient's own app uploads to that patient only; `patient` may then be left out.
    let patient = pairs
        .iter()
        .find(|(k, _)| k == "patient")
        .map(|(_, v)| v.clone())
        .or_else(|| policy.patient().map(str::to_owned))
        .ok_or_else(|| FhirError::bad_request("patient", "the patient parameter is required"))?;
    crate::fhir::logical_id(&patient)?;
    if !policy.reaches("Observation", Some(&patient)) {
        return Err(FhirError::Forbidden(
            "a patient token can only upload to its own patient".into(),
        ));
    }
    if source == fhirgate_mappers::Source::AppleHealth {
        return start_job(state, patient, body).await;
    }
    let bytes = crate::fhir::body::read_limited(body, state.max_body_bytes).await?;
    let mapped = map(source, &patient, bytes.to_vec()).await?;
    // One audit event per stored batch (with its Provenance), not one per Observation.
    let summary = batched(store(&state, &patient, mapped)).await?;
    Ok(axum::response::IntoResponse::into_response(axum::Json(
        summary,
    )))
}

/// Runs `work` with the caller of the current request in batched-audit mode.
async fn batched<T>(work: impl std::future::Future<Output = T>) -> T {
    let outer = crate::audit::current();
    let inner = std::sync::Arc::new(outer.as_deref().map(|c| c.fork(true)).unwrap_or_default());
    let result = crate::audit::REQUEST.scope(inner.clone(), work).await;
    if let (true, Some(outer)) = (inner.wrote(), outer) {
        outer.mark_written();
    }
    result
}

/// Resources written per transaction (and per Provenance) when streaming a large export.
const CHUNK: usize = 1000;

/// How far a streamed import has got: records handled (stored or rejected) and bytes of the
/// file read by the parser.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub records: u64,
    pub bytes_read: u64,
    pub bytes_total: u64,
}

impl Progress {
    /// Whole percent of the file read, 0 to 100.
    pub fn percent(&self) -> u64 {
        (self.bytes_read.saturating_mul(100))
            .checked_div(self.bytes_total)
            .unwrap_or(100)
            .min(100)
    }
}

/// A reader that counts the bytes taken from it, for progress.
struct Counted<R> {
    inner: R,
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: std::io::Read> std::io::Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// Maps an Apple Health export read from `path` in constant memory and stores it in chunks,
/// calling `progress` after each stored chunk.
pub async fn import_apple_stream(
    state: &AppState,
    patient_id: &str,
    path: std::path::PathBuf,
    mut progress: impl FnMut(Progress) + Send,
) -> Result<IngestSummary> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<fhirgate_mappers::MapOutput>(2);
    let ctx = fhirgate_mappers::MapContext::new(patient_id);
    let bytes_total = std::fs::metadata(&path)
        .map_err(|e| FhirError::Internal(e.into()))?
        .len();
    let bytes_read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = bytes_read.clone();
    let mapper = tokio::task::spawn_blocking(move || {
        let file = Counted {
            inner: std::fs::File::open(&path)?,
            read: counter,
        };
        let mut chunk = fhirgate_mappers::MapOutput::default();
        let summary = fhirgate_mappers::map_apple_health_stream(
            std::io::BufReader::with_capacity(1 << 20, file),
            &ctx,
            |record| {
                match record {
                    fhirgate_mappers::MappedRecord::Resource(r) => chunk.resources.push(r),
                    fhirgate_mappers::MappedRecord::Error(e) => chunk.errors.push(e),
                }
                if chunk.resources.len() >= CHUNK {
                    // The receiver stops only when the import fails; then mapping may stop too.
                    let _ = tx.blocking_send(std::mem::take(&mut chunk));
                }
            },
        );
        let _ = tx.blocking_send(chunk);
        summary
    });
    let mut total = IngestSummary::default();
    let mut records = 0u64;
    while let Some(chunk) = rx.recv().await {
        records += (chunk.resources.len() + chunk.errors.len()) as u64;
        let s = store(state, patient_id, chunk).await?;
        total.created += s.created;
        total.updated += s.updated;
        total.unchanged += s.unchanged;
        total.rejected.extend(s.rejected);
        progress(Progress {
            records,
            bytes_read: bytes_read.load(std::sync::atomic::Ordering::Relaxed),
            bytes_total,
        });
    }
    let summary = mapper
        .await
        .map_err(|e| FhirError::Internal(e.into()))?
        .map_err(|e| {
            FhirError::bad_request(
                "body",
                format!("the body cannot be read as apple-health: {e}"),
            )
        })?;
    total.skipped = summary.skipped;
    Ok(total)
}

/// Largest Apple Health export accepted (exports of several GB exist).
const MAX_EXPORT_BYTES: u64 = 8 * 1024 * 1024 * 1024;

/// Streams the upload to a private temporary file, records a job and imports it in the
/// background; answers 202 with the job's status URL in `Content-Location`.
async fn start_job(
    state: AppState,
    patient: String,
    body: axum::body::Body,
) -> Result<axum::response::Response> {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let file = tempfile::NamedTempFile::new().map_err(|e| FhirError::Internal(e.into()))?;
    let path = file.path().to_owned();
    let mut out = tokio::fs::File::create(&path)
        .await
        .map_err(|e| FhirError::Internal(e.into()))?;
    let mut stream = body.into_data_stream();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| {
            FhirError::bad_request("body", "the upload could not be read completely")
        })?;
        size += chunk.len() as u64;
        if size > MAX_EXPORT_BYTES {
            return Err(FhirError::PayloadTooLarge(MAX_EXPORT_BYTES as usize));
        }
        out.write_all(&chunk)
            .await
            .map_err(|e| FhirError::Internal(e.into()))?;
    }
    out.flush()
        .await
        .map_err(|e| FhirError::Internal(e.into()))?;
    let job = uuid::Uuid::new_v4();
    // language=PostgreSQL
    sqlx::query("insert into ingest_job (job_id, patient, source, status, bytes_total) values ($1::uuid, $2, 'apple-health', 'running', $3)")
        .bind(job.to_string())
        .bind(&patient)
        .bind(size as i64)
        .execute(&state.db)
        .await?;
    let worker = state.clone();
    let caller = std::sync::Arc::new(
        crate::audit::current()
            .map(|c| c.fork(true))
            .unwrap_or_default(),
    );
    let background = crate::audit::REQUEST.scope(caller, async move {
        let file = file; // removed when the import ends
        let db = worker.db.clone();
        let mut last = std::time::Instant::now();
        let progress = |p: Progress| {
            if last.elapsed() > std::time::Duration::from_secs(1) {
                last = std::time::Instant::now();
                let db = db.clone();
                tokio::spawn(async move {
                    // language=PostgreSQL
                    let _ = sqlx::query("update ingest_job set records = $2, bytes_read = $3, updated_at = now() where job_id = $1::uuid")
                        .bind(job.to_string())
                        .bind(p.records as i64)
                        .bind(p.bytes_read as i64)
                        .execute(&db)
                        .await;
                });
            }
        };
        let result = import_apple_stream(&worker, &patient, file.path().to_owned(), progress).await;
        let (status, summary, error) = match result {
            Ok(s) => ("done", serde_json::to_value(&s).ok(), None::<String>),
            Err(e) => (
                "failed",
                None,
                Some(
                    e.client_response()
                        .1
                        .into_iter()
                        .map(|i| i.message)
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
            ),
        };
        // language=PostgreSQL
        let _ = sqlx::query("update ingest_job set status = $2, summary = $3, error = $4, bytes_read = case when $2 = 'done' then bytes_total else bytes_read end, updated_at = now() where job_id = $1::uuid")
            .bind(job.to_string())
            .bind(status)
            .bind(summary)
            .bind(error)
            .execute(&worker.db)
            .await;
    });
    tokio::spawn(background);
    let status_url = format!("{}/ingest/jobs/{job}", state.issuer);
    let mut resp = (
        axum::http::StatusCode::ACCEPTED,
        axum::Json(json!({"job": job.to_string(), "status": status_url})),
    )
        .into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&status_url) {
        resp.headers_mut()
            .insert(axum::http::header::CONTENT_LOCATION, v);
    }
    Ok(resp)
}

/// `GET /ingest/jobs/{job}`: 202 with progress while running, 200 with the summary when done.
/// status, records, summary, error, patient, bytes read, bytes total
type JobRow = (String, i64, Option<Value>, Option<String>, String, i64, i64);

async fn job_status(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::Extension(policy): axum::Extension<std::sync::Arc<crate::access::Policy>>,
    axum::extract::Path(job): axum::extract::Path<String>,
) -> Result<axum::response::Response> {
    let id = uuid::Uuid::parse_str(&job)
        .map_err(|_| FhirError::NotFound("no such import job".into()))?;
    // language=PostgreSQL
    let row: Option<JobRow> = sqlx::query_as(
        "select status, records, summary, error, patient, bytes_read, bytes_total from ingest_job where job_id = $1::uuid",
    )
    .bind(id.to_string())
    .fetch_optional(&state.db)
    .await?;
    let (status, records, summary, error, _, bytes_read, bytes_total) = row
        .filter(|r| policy.reaches("Observation", Some(&r.4)))
        .ok_or_else(|| FhirError::NotFound("no such import job".into()))?;
    let code = if status == "running" {
        axum::http::StatusCode::ACCEPTED
    } else {
        axum::http::StatusCode::OK
    };
    let percent = Progress {
        records: records as u64,
        bytes_read: bytes_read as u64,
        bytes_total: bytes_total as u64,
    }
    .percent();
    let body = json!({
        "job": job, "status": status, "records": records, "percent": percent,
        "bytesRead": bytes_read, "bytesTotal": bytes_total, "summary": summary, "error": error,
    });
    let mut resp = (code, axum::Json(body)).into_response();
    // The header the FHIR asynchronous request pattern uses for progress.
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("{percent}% ({records} records)")) {
        resp.headers_mut().insert("x-progress", v);
    }
    Ok(resp)
}
