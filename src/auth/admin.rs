//! The admin API: registering apps and partner backends over HTTP, the same checks as
//! `fhirgate client add`. It needs a bearer token with the `fhirgate/admin` scope, which a
//! first-party backend gets through client_credentials. That scope grants no FHIR access: an
//! administrator manages clients and keys and sees no health data.
//!
//! - `GET /admin/clients`: every client.
//! - `POST /admin/clients`: register one; JSON `{"kind": "app"|"backend", "client_id", "scopes",
//!   "redirect_uris", "confidential", "jwks", "organization"}`. 201 with the client, and for a
//!   confidential app its `client_secret`, shown this once.
//! - `GET /admin/clients/{id}`, `DELETE /admin/clients/{id}`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::clients::{self, Client};
use crate::auth::guard::Principal;
use crate::error::{FhirError, Result};
use crate::state::AppState;

/// The scope an admin token carries.
pub const ADMIN_SCOPE: &str = "fhirgate/admin";

/// The admin routes, behind the bearer-token guard.
pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/admin/clients", get(list).post(add))
        .route("/admin/clients/{id}", get(show).delete(remove))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::guard::require_token,
        ))
}

fn require_admin(p: &Principal) -> Result<()> {
    if p.scopes.has(ADMIN_SCOPE) && p.claims.patient.is_none() && p.claims.organization.is_none() {
        Ok(())
    } else {
        Err(FhirError::Forbidden(format!(
            "the admin API needs a first-party token with the {ADMIN_SCOPE} scope"
        )))
    }
}

fn public_view(c: &Client) -> Value {
    json!({
        "client_id": c.client_id,
        "kind": c.kind,
        "scopes": c.scopes,
        "redirect_uris": c.redirect_uris,
        "confidential": c.confidential,
        "jwks": c.jwks,
        "organization": c.organization,
    })
}

async fn list(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Response> {
    require_admin(&p)?;
    let all: Vec<Value> = clients::list(&state.db)
        .await?
        .iter()
        .map(public_view)
        .collect();
    Ok(Json(json!({ "clients": all })).into_response())
}

async fn show(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response> {
    require_admin(&p)?;
    let c = clients::get(&state.db, &id)
        .await?
        .ok_or_else(|| FhirError::NotFound(format!("no client {id}")))?;
    Ok(Json(public_view(&c)).into_response())
}

async fn remove(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response> {
    require_admin(&p)?;
    if clients::remove(&state.db, &id).await? {
        state.revoked.revoke_client(&id);
        tracing::info!(client = %id, "client removed through the admin API");
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(FhirError::NotFound(format!("no client {id}")))
    }
}

/// The body of `POST /admin/clients`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewClient {
    kind: String,
    client_id: String,
    scopes: String,
    #[serde(default)]
    redirect_uris: Vec<String>,
    #[serde(default)]
    confidential: bool,
    jwks: Option<Value>,
    organization: Option<String>,
}

async fn add(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    body: axum::body::Bytes,
) -> Result<Response> {
    require_admin(&p)?;
    let new: NewClient = serde_json::from_slice(&body)
        .map_err(|e| FhirError::bad_request("client", format!("the body is not a client: {e}")))?;
    if new.kind == "app" && (new.jwks.is_some() || new.organization.is_some()) {
        return Err(FhirError::bad_request(
            "client",
            "jwks and organization are for backends; an app has redirect_uris",
        ));
    }
    if new.kind == "backend" && (!new.redirect_uris.is_empty() || new.confidential) {
        return Err(FhirError::bad_request(
            "client",
            "redirect_uris and confidential are for apps; a backend has a jwks",
        ));
    }
    let secret =
        (new.kind == "app" && new.confidential).then(|| hex::encode(rand::random::<[u8; 32]>()));
    let client = Client {
        client_id: new.client_id,
        kind: new.kind,
        scopes: new.scopes,
        redirect_uris: new.redirect_uris,
        confidential: new.confidential,
        secret_hash: secret.as_deref().map(clients::hash_secret),
        jwks: new.jwks,
        organization: new.organization,
    };
    clients::add(&state.db, &client).await.map_err(|e| {
        let msg = format!("{e:#}");
        if msg.contains("already registered") {
            FhirError::Conflict(msg)
        } else {
            FhirError::bad_request("client", msg)
        }
    })?;
    if let Some(org) = &client.organization {
        clients::ensure_organization(&state, org, &client.client_id).await?;
    }
    tracing::info!(client = %client.client_id, kind = %client.kind, "client registered through the admin API");
    let mut view = public_view(&client);
    if let Some(s) = secret {
        view["client_secret"] = json!(s);
    }
    let mut resp = (StatusCode::CREATED, Json(view)).into_response();
    crate::audit::api::AuditInfo {
        query: Some(format!("admin/clients/{}", client.client_id)),
        ..Default::default()
    }
    .attach(&mut resp);
    Ok(resp)
}
