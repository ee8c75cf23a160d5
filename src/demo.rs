//! `fhirgate demo`: loads the small dataset of `demo/` (built into the binary; provenance in
//! `demo/SOURCES.md`) so that a newcomer has something to search, and says what to try next.
//!
//! Everything goes through the same paths as real traffic: the Synthea Bundles and the partner's
//! Organization and Consent are sent to the server's own router with a development token, and
//! the wearable payloads go through the import pipeline. So the demo is audited like anything
//! else, and it is idempotent: patients already there are left alone, the Organization and the
//! Consent are conditional creates, imports de-duplicate, and the client and the account are
//! only added when missing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::state::AppState;

/// The sign-in account of the demo patient.
pub const EMAIL: &str = "demo@fhirgate.example";
/// Its password (demo data only: `demo` is refused in production).
pub const PASSWORD: &str = "fhirgate-demo-patient";
/// The partner's backend client.
pub const PARTNER_CLIENT: &str = "acme-telehealth";
const DEMO_SYSTEM: &str = "https://fhirgate.org/demo";
const SYNTHEA_SYSTEM: &str = "https://github.com/synthetichealth/synthea";
/// The scopes of the printed partner token and of the partner's client.
const PARTNER_SCOPES: &str = "system/Patient.rs system/Observation.rs";

const PROVIDERS: &str = include_str!("../demo/synthea/providers.json");
/// The three Synthea patients; the first one gets the wearable data and the account.
const PATIENTS: [&[u8]; 3] = [
    include_bytes!("../demo/synthea/6c8f3e83-c351-ed33-c38d-6be101c275d2.json.bz2"),
    include_bytes!("../demo/synthea/085e81c0-7a95-ef02-16ef-aa1b4344deed.json.bz2"),
    include_bytes!("../demo/synthea/19625ee6-1a94-1a6a-ca95-40c4efbbdfc7.json.bz2"),
];
const WEARABLES: [(fhirgate_mappers::Source, &str, &[u8]); 3] = [
    (
        fhirgate_mappers::Source::AppleHealth,
        "Apple Health export.xml",
        include_bytes!("../demo/apple_health/export.xml"),
    ),
    (
        fhirgate_mappers::Source::Withings,
        "Withings body measures",
        include_bytes!("../demo/withings/body-measures.json"),
    ),
    (
        fhirgate_mappers::Source::Withings,
        "Withings sleep summary",
        include_bytes!("../demo/withings/sleep-summary.json"),
    ),
];

/// One demo patient.
#[derive(Debug, Clone)]
pub struct DemoPatient {
    /// Given and family name, as Synthea wrote them.
    pub name: String,
    /// The server's id.
    pub id: String,
    /// Whether this run created it (else it was there already).
    pub created: bool,
}

/// What `load` did and what to print.
#[derive(Debug)]
pub struct Loaded {
    /// The patients, the account's first.
    pub patients: Vec<DemoPatient>,
    /// Provider resources (Organizations, Locations, Practitioners) created by this run.
    pub providers_created: usize,
    /// Resources created or updated from the wearable payloads by this run.
    pub wearable_written: u64,
    /// The partner's Organization id.
    pub organization: String,
    /// The partner's private key, when this run registered the client.
    pub partner_key: Option<PathBuf>,
    /// Whether this run created the sign-in account.
    pub account_created: bool,
    /// A first-party token (system/*.rs).
    pub token: String,
    /// A token in the partner's context.
    pub partner_token: String,
}

/// The server's router, called in process with a development token.
struct Local {
    router: axum::Router,
    token: String,
}

impl Local {
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("/fhir/{path}"))
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::ACCEPT, "application/fhir+json");
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/fhir+json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut req = req.body(body.map(Body::from).unwrap_or_else(Body::empty))?;
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                0,
            ))));
        let resp = self.router.clone().oneshot(req).await?;
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).context("the server's answer is not JSON")?
        };
        if !status.is_success() {
            bail!("{path}: {status}: {}", outcome_text(&value));
        }
        Ok((status, value))
    }

    /// The id of the one resource `Type?criteria` matches, if any.
    async fn find(&self, resource_type: &str, criteria: &str) -> anyhow::Result<Option<String>> {
        let (_, bundle) = self
            .send(
                Method::GET,
                &format!("{resource_type}?{criteria}&_elements=id"),
                &[],
                None,
            )
            .await?;
        Ok(bundle["entry"][0]["resource"]["id"]
            .as_str()
            .map(str::to_owned))
    }

    /// A conditional create: the id, and whether it was created now.
    async fn ensure(
        &self,
        resource_type: &str,
        if_none_exist: &str,
        resource: &Value,
    ) -> anyhow::Result<(String, bool)> {
        let (status, body) = self
            .send(
                Method::POST,
                resource_type,
                &[
                    ("if-none-exist", if_none_exist),
                    ("prefer", "return=representation"),
                ],
                Some(resource.to_string()),
            )
            .await?;
        let id = body["id"]
            .as_str()
            .context("the created resource has no id")?
            .to_owned();
        Ok((id, status == StatusCode::CREATED))
    }
}

fn outcome_text(v: &Value) -> String {
    v["issue"]
        .as_array()
        .map(|issues| {
            issues
                .iter()
                .filter_map(|i| i["diagnostics"].as_str())
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_else(|| v.to_string())
}

fn created_in(batch: &Value) -> anyhow::Result<usize> {
    let mut created = 0;
    for e in batch["entry"].as_array().into_iter().flatten() {
        let status = e["response"]["status"].as_str().unwrap_or("");
        if status.starts_with("201") {
            created += 1;
        } else if !status.starts_with("200") {
            bail!("a demo Bundle entry failed: {status}: {}", e["response"]);
        }
    }
    Ok(created)
}

/// The Synthea identifier and the name of the Patient of a Synthea transaction Bundle.
fn synthea_patient(bundle: &Value) -> anyhow::Result<(String, String)> {
    let patient = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
        .find(|r| r["resourceType"] == "Patient")
        .context("a demo Bundle without a Patient")?;
    let id = patient["identifier"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["system"] == SYNTHEA_SYSTEM)
        .and_then(|i| i["value"].as_str())
        .context("a demo Patient without its Synthea identifier")?;
    let name = &patient["name"][0];
    let given = name["given"][0].as_str().unwrap_or("");
    let family = name["family"].as_str().unwrap_or("");
    Ok((id.to_owned(), format!("{given} {family}")))
}

/// The Organization of the demo partner.
fn partner_organization() -> Value {
    json!({
        "resourceType": "Organization",
        "identifier": [{"system": DEMO_SYSTEM, "value": PARTNER_CLIENT}],
        "active": true,
        "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": "prov", "display": "Healthcare Provider"}]}],
        "name": "Acme Telehealth",
        "telecom": [{"system": "url", "value": "https://telehealth.example"}],
    })
}

/// The demo patient's Consent: Acme Telehealth sees vital signs, for treatment, for a year.
fn partner_consent(patient: &str, organization: &str) -> Value {
    let today = chrono::Utc::now().date_naive();
    let end = today + chrono::Days::new(365);
    json!({
        "resourceType": "Consent",
        "identifier": [{"system": DEMO_SYSTEM, "value": format!("consent-{PARTNER_CLIENT}-{patient}")}],
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        "dateTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "provision": {
            "type": "permit",
            "period": {"start": today.to_string(), "end": end.to_string()},
            "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                       "reference": {"reference": format!("Organization/{organization}")}}],
            "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}],
            "class": [{"system": "https://fhirgate.org/CodeSystem/data-class", "code": "vital-signs"}]
        }
    })
}

/// Loads the demo dataset into the store of `state`; the partner's private key goes to
/// `data_dir`. Refusing production is the caller's job (it knows the configuration).
pub async fn load(state: &AppState, data_dir: &Path) -> anyhow::Result<Loaded> {
    let token =
        crate::auth::token::development_token_for(state, "system/*.cruds", None, None, 600).await?;
    let local = Local {
        router: crate::startup::app(state.clone(), Duration::from_secs(600)),
        token,
    };
    let (_, providers) = local
        .send(Method::POST, "", &[], Some(PROVIDERS.to_owned()))
        .await
        .context("loading the demo providers")?;
    let providers_created = created_in(&providers)?;

    let mut patients = Vec::new();
    for compressed in PATIENTS {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut bzip2::read::BzDecoder::new(compressed), &mut text)
            .context("unpacking a demo patient")?;
        let bundle: Value = serde_json::from_str(&text)?;
        let (synthea_id, name) = synthea_patient(&bundle)?;
        let criteria = format!("identifier={SYNTHEA_SYSTEM}|{synthea_id}");
        let existing = local.find("Patient", &criteria).await?;
        let created = existing.is_none();
        if created {
            local
                .send(Method::POST, "", &[], Some(text))
                .await
                .with_context(|| format!("loading the demo patient {name}"))?;
        }
        let id = match existing {
            Some(id) => id,
            None => local
                .find("Patient", &criteria)
                .await?
                .context("the demo patient was not stored")?,
        };
        patients.push(DemoPatient { name, id, created });
    }
    let patient = patients[0].id.clone();

    let mut wearable_written = 0;
    let operator = std::sync::Arc::new(crate::audit::RequestContext::command_line());
    for (source, what, bytes) in WEARABLES {
        let summary = crate::audit::REQUEST
            .scope(operator.clone(), async {
                let mapped = crate::ingest::map(source, &patient, bytes.to_vec()).await?;
                crate::ingest::store(state, &patient, mapped).await
            })
            .await
            .map_err(|e| anyhow::anyhow!("importing the demo {what}: {e}"))?;
        wearable_written += summary.created + summary.updated;
    }

    let (organization, _) = local
        .ensure(
            "Organization",
            &format!("identifier={DEMO_SYSTEM}|{PARTNER_CLIENT}"),
            &partner_organization(),
        )
        .await
        .context("the demo partner's Organization")?;
    local
        .ensure(
            "Consent",
            &format!("identifier={DEMO_SYSTEM}|consent-{PARTNER_CLIENT}-{patient}"),
            &partner_consent(&patient, &organization),
        )
        .await
        .context("the demo patient's Consent")?;

    let partner_key = register_partner(state, data_dir, &organization).await?;
    let account_created =
        crate::auth::users::attach_account(state, EMAIL, PASSWORD, &patient).await?;
    let ttl = 3600;
    let token =
        crate::auth::token::development_token_for(state, "system/*.rs", None, None, ttl).await?;
    let partner_token = crate::auth::token::development_token_for(
        state,
        PARTNER_SCOPES,
        None,
        Some(format!("Organization/{organization}")),
        ttl,
    )
    .await?;
    Ok(Loaded {
        patients,
        providers_created,
        wearable_written,
        organization,
        partner_key,
        account_created,
        token,
        partner_token,
    })
}

/// Registers the partner's backend client with a fresh key pair, unless it exists.
async fn register_partner(
    state: &AppState,
    data_dir: &Path,
    organization: &str,
) -> anyhow::Result<Option<PathBuf>> {
    use crate::auth::clients;
    if clients::list(&state.db)
        .await?
        .iter()
        .any(|c| c.client_id == PARTNER_CLIENT)
    {
        return Ok(None);
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let path = data_dir.join(format!("demo-{PARTNER_CLIENT}.pem"));
    // A key left by a store that was since reset belongs to no client: replace it.
    if path.exists() {
        std::fs::remove_file(&path).with_context(|| format!("replacing {}", path.display()))?;
    }
    let jwks = clients::generate_key_file(&path, PARTNER_CLIENT)?;
    clients::add(
        &state.db,
        &clients::Client {
            client_id: PARTNER_CLIENT.to_owned(),
            kind: "backend".to_owned(),
            scopes: PARTNER_SCOPES.to_owned(),
            redirect_uris: Vec::new(),
            confidential: false,
            secret_hash: None,
            jwks: Some(jwks),
            organization: Some(format!("Organization/{organization}")),
        },
    )
    .await?;
    Ok(Some(path))
}

/// What `fhirgate demo` prints: what was loaded, then what to try.
pub fn next_steps(loaded: &Loaded, public_url: &str) -> String {
    let base = public_url.trim_end_matches('/');
    let fhir = format!("{base}/fhir");
    let me = &loaded.patients[0];
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line("Demo data:".into());
    for (n, p) in loaded.patients.iter().enumerate() {
        let extra = if n == 0 {
            ", with Apple Health and Withings data, can sign in"
        } else {
            ""
        };
        let state = if p.created { "loaded" } else { "already there" };
        line(format!("  {} — Patient/{} ({state}{extra})", p.name, p.id));
    }
    line(format!(
        "  this run wrote {} provider resources (Organizations, Locations, Practitioners) and {} resources from the wearable data",
        loaded.providers_created, loaded.wearable_written
    ));
    line(format!(
        "  partner Acme Telehealth — Organization/{}, allowed by {}'s Consent to see vital signs",
        loaded.organization, me.name
    ));
    match &loaded.partner_key {
        Some(key) => line(format!(
            "  its Backend Services client `{PARTNER_CLIENT}`: private key in {} (kid {PARTNER_CLIENT})",
            key.display()
        )),
        None => line(format!(
            "  its Backend Services client `{PARTNER_CLIENT}` was registered before"
        )),
    }
    line(String::new());
    line(format!("Sign in as {} at {base}/auth/login", me.name));
    line(format!("  email:    {EMAIL}"));
    line(format!("  password: {PASSWORD}"));
    line(String::new());
    line("Tokens for the next hour (`fhirgate token` makes more):".into());
    line(format!("  export TOKEN={}", loaded.token));
    line(format!("  export PARTNER_TOKEN={}", loaded.partner_token));
    line(String::new());
    line("Then try:".into());
    let pid = &me.id;
    let curls = [
        (
            "TOKEN",
            format!("{fhir}/Observation?patient={pid}&code=http://loinc.org|8867-4&_sort=-date&_count=5"),
            "heart rates, newest first",
        ),
        (
            "TOKEN",
            format!("{fhir}/Observation/$lastn?patient={pid}&category=vital-signs"),
            "the latest of each vital sign",
        ),
        (
            "TOKEN",
            format!("{fhir}/Patient/{pid}/$everything?_count=20"),
            "the whole record",
        ),
        (
            "PARTNER_TOKEN",
            format!("{fhir}/Observation?patient={pid}&_count=5"),
            "what Acme Telehealth sees when it states its purpose (treatment): vital signs only",
        ),
        (
            "TOKEN",
            format!("{fhir}/AuditEvent?patient={pid}&_sort=-date&_count=5"),
            "who accessed the record",
        ),
    ];
    for (token, url, what) in curls {
        // A partner states why it asks: the demo Consent grants treatment only.
        let purpose = if token == "PARTNER_TOKEN" {
            " -H 'X-Purpose-Of-Use: TREAT'"
        } else {
            ""
        };
        line(format!("  # {what}"));
        line(format!(
            "  curl -s -H \"Authorization: Bearer ${token}\"{purpose} '{url}'"
        ));
    }
    out
}
