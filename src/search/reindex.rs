//! `fhirgate reindex`: rebuilds every search index row and consent grant from the stored
//! resources, after the SearchParameter definitions or the extraction rules change. The server
//! runs it by itself at start-up when the stored index was built from other definitions.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::state::AppState;
use crate::storage;

/// Bumped when extraction or storage of index rows changes in a way that needs a rebuild.
/// 2: blind-indexed dates (birth dates) also keep their plain year (`birthdate:year`).
const INDEX_RULES_VERSION: &str = "2";

/// Fingerprint of what the index is built from: the definitions and the rules version.
pub fn fingerprint() -> String {
    let defs = include_str!("../../fhir-profiles/search-parameters.json");
    let digest = Sha256::digest([defs.as_bytes(), INDEX_RULES_VERSION.as_bytes()].concat());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the stored index was built from the current definitions (or the store is empty).
pub async fn is_current(state: &AppState) -> Result<bool> {
    // language=PostgreSQL
    let stored: Option<String> =
        sqlx::query_scalar("select fingerprint from search_index_state where id = 1")
            .fetch_optional(&state.db)
            .await?;
    if stored.as_deref() == Some(fingerprint().as_str()) {
        return Ok(true);
    }
    // language=PostgreSQL
    let empty: bool = sqlx::query_scalar("select not exists (select 1 from resource)")
        .fetch_one(&state.db)
        .await?;
    if empty {
        mark_current(state).await?;
    }
    Ok(empty)
}

async fn mark_current(state: &AppState) -> Result<()> {
    // language=PostgreSQL
    sqlx::query(
        "insert into search_index_state (id, fingerprint) values (1, $1) on conflict (id) do update set fingerprint = excluded.fingerprint",
    )
    .bind(fingerprint())
    .execute(&state.db)
    .await?;
    Ok(())
}

/// What a rebuild did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Report {
    /// Resources reindexed.
    pub resources: u64,
    /// Index rows written.
    pub rows: u64,
    /// Patients whose consent grants were rebuilt.
    pub patients: u64,
}

/// Rebuilds the index of every current resource, `batch` at a time, each batch in its own
/// transaction (searches keep working meanwhile), then every patient's consent grants.
pub async fn run(state: &AppState, batch: i64) -> Result<Report> {
    let mut report = Report::default();
    let mut after: i64 = 0;
    loop {
        // language=PostgreSQL
        let rids: Vec<i64> = sqlx::query_scalar(
            "select rid from resource where not deleted and rid > $1 order by rid limit $2",
        )
        .bind(after)
        .bind(batch)
        .fetch_all(&state.db)
        .await?;
        let Some(&last) = rids.last() else { break };
        after = last;
        let versions = storage::read_rids(state, &rids).await?;
        let mut rows = Vec::with_capacity(versions.len());
        for (rid, v) in &versions {
            let Some(body) = &v.body else { continue };
            let resource = fhirgate_codec::parse_json(body)?;
            let r = crate::search::index::rows(
                &state.keys,
                &state.search_params,
                &v.resource_type,
                &resource,
            );
            report.rows += r.len() as u64;
            rows.push((*rid, v.compartment.as_deref(), r));
        }
        let items: Vec<(i64, Option<&str>, &[crate::search::index::Row])> = rows
            .iter()
            .map(|(rid, c, r)| (*rid, *c, r.as_slice()))
            .collect();
        let mut tx = state.db.begin().await?;
        storage::index::replace(&mut tx, &rids, &items).await?;
        tx.commit().await?;
        report.resources += versions.len() as u64;
    }
    // language=PostgreSQL
    let patients: Vec<String> = sqlx::query_scalar(
        "select distinct compartment from resource where resource_type = 'Consent' and compartment is not null",
    )
    .fetch_all(&state.db)
    .await?;
    let mut tx = state.db.begin().await?;
    // Patients whose Consents are all gone keep no grants.
    // language=PostgreSQL
    sqlx::query("delete from consent_grant where patient <> all($1)")
        .bind(&patients)
        .execute(&mut *tx)
        .await?;
    let set: BTreeSet<&str> = patients.iter().map(String::as_str).collect();
    storage::index::grants_of(state, &mut tx, set.into_iter()).await?;
    tx.commit().await?;
    report.patients = patients.len() as u64;
    mark_current(state).await?;
    Ok(report)
}

/// At start-up: rebuild in the background when the index was built from other definitions.
pub fn spawn_if_stale(state: AppState) {
    tokio::spawn(async move {
        match is_current(&state).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("the search index was built from other definitions; rebuilding it in the background (searches may miss resources until it finishes)");
                match run(&state, 1000).await {
                    Ok(r) => tracing::info!(
                        resources = r.resources,
                        rows = r.rows,
                        "search index rebuilt"
                    ),
                    Err(e) => {
                        tracing::error!(error = %e, "rebuilding the search index failed; run `fhirgate reindex`")
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not check the search index state"),
        }
    });
}
