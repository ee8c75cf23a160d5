//! The patient's sharing page (`/account/sharing`): every partner organisation, what it may see
//! (data classes, period, purpose), a switch per class, and the history of the patient's consent
//! changes. Each change is a new version of the patient's Consent for that partner (fhirgate's
//! profile), written through the same path as the FHIR API and audited.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use serde_json::{json, Value};

use crate::auth::limit::ClientAddr;
use crate::auth::users::User;
use crate::state::AppState;
use crate::storage::write::{self, WriteKind, WriteOp};
use crate::ui::{csrf, csrf_ok, csrf_refused, current_user, esc, failure_page, page, see_other};

/// The purpose partners are granted access for on this page.
const PURPOSE: &str = "TREAT";

/// Partner organisations: those of the registered partner clients.
async fn partners(state: &AppState) -> crate::error::Result<Vec<String>> {
    // language=PostgreSQL
    let orgs: Vec<String> = sqlx::query_scalar(
        "select distinct organization from client where organization is not null order by organization",
    )
    .fetch_all(&state.db)
    .await?;
    Ok(orgs
        .iter()
        .map(|o| crate::access::organization_reference(o))
        .collect())
}

/// A partner's name as its Organization gives it, else the reference. The patient's own policy
/// decides whether the Organization may be read (shared resources are).
async fn partner_name(state: &AppState, patient: &str, org: &str) -> crate::error::Result<String> {
    let Some(id) = org.strip_prefix("Organization/") else {
        return Ok(org.to_owned());
    };
    let stored = crate::storage::read_current(state, "Organization", id).await?;
    let policy = crate::access::Policy::patient_self(patient);
    let name = stored
        .filter(|v| !v.deleted && policy.reaches("Organization", v.compartment.as_deref()))
        .and_then(|v| v.body)
        .and_then(|b| fhirgate_codec::parse_json(&b).ok())
        .and_then(|o| o["name"].as_str().map(str::to_owned));
    Ok(name.unwrap_or_else(|| org.to_owned()))
}

/// The Consent this page manages for `org`: the patient's Consent naming only that partner.
fn managed<'a>(consents: &'a [Value], org: &str) -> Option<&'a Value> {
    consents
        .iter()
        .find(|c| fhirgate_consent::organizations_named(c) == [org.to_owned()])
}

fn class_label(class: &str) -> &'static str {
    match class {
        "vital-signs" => "Vital signs",
        "activity" => "Activity",
        "sleep" => "Sleep",
        _ => "Body measurements",
    }
}

/// An id safe in HTML ids: `acme-vital-signs`.
fn slug(org: &str) -> String {
    org.trim_start_matches("Organization/")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// `GET /account/sharing`.
pub async fn sharing_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(user) = current_user(&state, &headers).await else {
        return see_other("/auth/login", &[]);
    };
    match render(&state, &headers, &user).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::error!(error = %e, "sharing page failed");
            failure_page()
        }
    }
}

async fn render(
    state: &AppState,
    headers: &HeaderMap,
    user: &User,
) -> crate::error::Result<Response> {
    let c = csrf(state, headers);
    let all = crate::storage::consents_of(state, &user.patient_id).await?;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut body = String::from(
        "<h1>Sharing</h1><p class=\"muted\">Choose what each partner may see. A change applies to the partner's next request.</p>",
    );
    for org in partners(state).await? {
        let ctx = fhirgate_consent::AccessContext {
            organization: org.clone(),
            purpose: Some(PURPOSE.into()),
            at: now.clone(),
            ..Default::default()
        };
        let shared = fhirgate_consent::permitted_classes(&all, &ctx);
        let period = managed(&all, &org)
            .filter(|c| c["status"] == "active")
            .and_then(|c| c["provision"]["period"]["start"].as_str())
            .map(|s| format!("since {s}"))
            .unwrap_or_else(|| "nothing shared".into());
        let s = slug(&org);
        let name = partner_name(state, &user.patient_id, &org).await?;
        body.push_str(&format!(
            "<form method=\"post\" action=\"/account/sharing\" class=\"partner\" id=\"partner-{s}\">\
<h2>{name}</h2><p class=\"muted\">{period}; purpose: treatment</p>\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"partner\" value=\"{org_attr}\">",
            name = esc(&name),
            period = esc(&period),
            csrf = esc(&c.token),
            org_attr = esc(&org),
        ));
        for class in fhirgate_consent::DATA_CLASSES {
            let checked = if shared.contains(&class) {
                " checked"
            } else {
                ""
            };
            body.push_str(&format!(
                "<label><input type=\"checkbox\" name=\"class\" value=\"{class}\" id=\"{s}-{class}\"{checked}> {}</label>",
                class_label(class)
            ));
        }
        body.push_str(&format!(
            "<button type=\"submit\" id=\"save-{s}\">Save</button></form>"
        ));
    }
    body.push_str("<h2>History</h2><ul id=\"history\">");
    for (when, text) in history(state, &user.patient_id).await? {
        body.push_str(&format!("<li>{}: {}</li>", esc(&when), esc(&text)));
    }
    body.push_str("</ul><p><a href=\"/auth/account\">Your account</a></p>");
    let cookies: Vec<String> = c.set_cookie.into_iter().collect();
    Ok(page(StatusCode::OK, "Sharing", &body, &cookies))
}

/// Every version of the patient's Consents, newest first: when, partner, classes, status.
async fn history(state: &AppState, patient: &str) -> crate::error::Result<Vec<(String, String)>> {
    // language=PostgreSQL
    let ids: Vec<String> = sqlx::query_scalar(
        "select id from resource where resource_type = 'Consent' and compartment = $1",
    )
    .bind(patient)
    .fetch_all(&state.db)
    .await?;
    let mut versions = Vec::new();
    for id in ids {
        let q = crate::storage::HistoryQuery {
            resource_type: Some("Consent".into()),
            id: Some(id),
            count: 100,
            ..Default::default()
        };
        versions.extend(crate::storage::history(state, &q).await?.0);
    }
    versions.sort_by_key(|v| std::cmp::Reverse(v.last_updated));
    let mut out = Vec::new();
    for v in versions {
        let Some(b) = v.body else { continue };
        let c = fhirgate_codec::parse_json(&b)?;
        let mut names = Vec::new();
        for org in fhirgate_consent::organizations_named(&c) {
            names.push(partner_name(state, patient, &org).await?);
        }
        let partner = names.join(", ");
        let classes: Vec<&str> = c["provision"]["class"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x["code"].as_str())
            .collect();
        let what = if c["status"] == "active" {
            format!("shared {} with {partner}", classes.join(", "))
        } else {
            format!("stopped sharing with {partner}")
        };
        out.push((
            v.last_updated.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            what,
        ));
    }
    Ok(out)
}

/// `POST /account/sharing`: `partner`, and a `class` for each class to share (none: stop).
pub async fn save(
    State(state): State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if !csrf_ok(&state, &headers, field("csrf")) {
        return csrf_refused();
    }
    let Some(user) = current_user(&state, &headers).await else {
        return see_other("/auth/login", &[]);
    };
    let classes: Vec<&str> = form
        .iter()
        .filter(|(k, _)| k == "class")
        .map(|(_, v)| v.as_str())
        .filter(|v| fhirgate_consent::DATA_CLASSES.contains(v))
        .collect();
    let org = field("partner").unwrap_or("").to_owned();
    let ctx = crate::audit::api::auth_context(
        addr.0,
        &headers,
        None,
        Some(format!("Patient/{}", user.patient_id)),
    );
    let work = change(&state, &user, &org, &classes);
    match crate::audit::REQUEST
        .scope(std::sync::Arc::new(ctx), work)
        .await
    {
        Ok(true) => see_other("/account/sharing", &[]),
        Ok(false) => page(
            StatusCode::BAD_REQUEST,
            "Sharing",
            "<h1>Unknown partner</h1><p><a href=\"/account/sharing\">Back</a></p>",
            &[],
        ),
        Err(e) => {
            tracing::error!(error = %e, "sharing change failed");
            failure_page()
        }
    }
}

/// Writes the new version of the patient's Consent for `org`; `false` for an unknown partner.
async fn change(
    state: &AppState,
    user: &User,
    org: &str,
    classes: &[&str],
) -> crate::error::Result<bool> {
    if !partners(state).await?.iter().any(|p| p == org) {
        return Ok(false);
    }
    let all = crate::storage::consents_of(state, &user.patient_id).await?;
    let existing = managed(&all, org);
    let id = existing
        .and_then(|c| c["id"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(write::new_id);
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let start = existing
        .filter(|c| c["status"] == "active")
        .and_then(|c| c["provision"]["period"]["start"].as_str())
        .map(str::to_owned)
        .unwrap_or(today);
    let class_codings: Vec<Value> = classes
        .iter()
        .map(|c| json!({"system": fhirgate_consent::DATA_CLASS_SYSTEM, "code": c}))
        .collect();
    let status = if classes.is_empty() {
        "inactive"
    } else {
        "active"
    };
    let mut provision = json!({
        "type": "permit",
        "period": {"start": start},
        "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                   "reference": {"reference": org}}],
        "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": PURPOSE}],
    });
    if !class_codings.is_empty() {
        provision["class"] = Value::Array(class_codings);
    } else {
        // Nothing shared: a permit for no class would mean every class.
        provision["class"] =
            json!([{"system": fhirgate_consent::DATA_CLASS_SYSTEM, "code": "everything"}]);
    }
    let consent = json!({
        "resourceType": "Consent",
        "id": id,
        "status": status,
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{}", user.patient_id)},
        "dateTime": write::instant(&write::now()),
        "provision": provision,
    });
    let consent = write::check_resource(consent, "Consent", Some(&id))?;
    let mut tx = state.db.begin().await?;
    let op = WriteOp {
        kind: WriteKind::Update,
        resource_type: "Consent".into(),
        id,
        resource: Some(consent),
        if_match: None,
    };
    write::apply(
        state,
        &mut tx,
        vec![op],
        &crate::access::Policy::patient_self(&user.patient_id),
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}
