//! The access policy of one request: the only place that decides what a caller may see.
//!
//! It is built once per request from the verified token ([`Policy::of`]) and offers two things:
//! - [`Policy::restrict`]: the SQL restriction for rows of `resource` under an alias, which every
//!   query of the request carries: page, count, `$stats`, `$lastn`, includes, the targets of
//!   chains and the sources of `_has`, conditional matching;
//! - [`Policy::sees`]: the same rules for one stored resource in hand (a read, a vread, a history
//!   entry, a resource about to be written).
//!
//! The rules, from the principal:
//! - **reach**: a patient token reaches its own compartment; a partner reaches what patients'
//!   Consents grant it now for the request's purpose (data classes; where a patient's Consents
//!   also name single codes, each resource of that patient is decided by the consent engine) and
//!   the Consents that name it; everyone reaches the shared resources of no patient
//!   ([`SHARED_TYPES`]); a first-party token reaches everything;
//! - **scopes**: the resource types the token's scopes grant for the permission, narrowed by
//!   granular filters (`Observation.rs?category=vital-signs`), evaluated on the same index rows a
//!   search uses.
//!
//! What the policy hides answers exactly like what does not exist.

use fhirgate_fhirpath::{IndexValue, ParamType};
use serde_json::Value;
use sqlx::{Postgres, QueryBuilder};

use crate::auth::guard::Principal;
use crate::auth::scopes::{Context, Permission, ScopeSet};
use crate::search::query::{self, Clause, Ctx};

/// Resource types that belong to no patient and that any token whose scopes name them may read:
/// organisations, practitioners, places, medications, unassigned devices, services and
/// conformance artefacts. A resource of another type outside every patient compartment (an
/// Observation whose subject is a group, say) is visible to first-party tokens only.
pub const SHARED_TYPES: &[&str] = &[
    "Organization",
    "Practitioner",
    "PractitionerRole",
    "Location",
    "Medication",
    "Substance",
    "Device",
    "HealthcareService",
    "Endpoint",
    "CapabilityStatement",
    "StructureDefinition",
    "SearchParameter",
    "OperationDefinition",
    "ValueSet",
    "CodeSystem",
    "ConceptMap",
    "Questionnaire",
    "PlanDefinition",
    "ActivityDefinition",
];

/// Whose data a caller reaches, before scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// A first-party backend or the server itself: everything.
    All,
    /// A patient's own token: that patient's compartment and shared resources.
    Patient(String),
    /// A partner organisation: what Consents grant it now, for this purpose key.
    Partner {
        /// `Organization/<id>`.
        organization: String,
        /// The request's purpose of use (`""` when it states none).
        purpose: String,
    },
}

/// What the scopes let a token see of each type, for one permission.
#[derive(Debug, Clone)]
enum ScopeRule {
    /// Every type, unfiltered.
    Everything,
    /// These types unfiltered, and these types when a row matches one of the alternatives (all
    /// clauses of an alternative).
    Types {
        unfiltered: Vec<String>,
        filtered: Vec<(String, Vec<Filter>)>,
    },
}

/// One granular scope filter (`category=vital-signs`): the search clauses for SQL, with the
/// parameter and value each compares for a resource in hand. `None` when the filter cannot be
/// evaluated alike in both (then nothing matches it: filters fail closed).
#[derive(Debug, Clone)]
struct Filter {
    clauses: Option<Vec<(Clause, String, String)>>,
}

/// For a partner: the rows of patients whose Consents name single codes, which the consent
/// engine decided one by one for this query ([`crate::search::exec`] computes them).
#[derive(Debug, Clone, Default)]
pub struct Decided {
    /// Patients whose grants to the partner carry code rules.
    pub patients: Vec<String>,
    /// Their rows (among the query's) that the consent engine permits.
    pub allowed: Vec<i64>,
}

/// The access policy of one request.
#[derive(Debug, Clone)]
pub struct Policy {
    reach: Reach,
    read: ScopeRule,
    search: ScopeRule,
    /// Create, update and delete, in that order.
    write: [ScopeRule; 3],
    scopes: std::sync::Arc<ScopeSet>,
    contexts: &'static [Context],
    /// Who is asking, for sealing cursors to the caller.
    caller: String,
}

impl Policy {
    /// The policy of a verified caller for one interaction (whose purpose of use keys a
    /// partner's grants).
    pub fn of(principal: &Principal, interaction: &super::Interaction, ctx: &Ctx<'_>) -> Policy {
        let purpose = interaction.purpose.clone().unwrap_or_default();
        let reach = if let Some(org) = principal.claims.organization.as_deref() {
            Reach::Partner {
                organization: organization_reference(org),
                purpose,
            }
        } else if let Some(me) = principal.owner() {
            Reach::Patient(me.to_owned())
        } else {
            Reach::All
        };
        let contexts = principal.contexts();
        let rule = |p| scope_rule(&principal.scopes, contexts, p, ctx);
        Policy {
            read: rule(Permission::Read),
            search: rule(Permission::Search),
            write: [
                rule(Permission::Create),
                rule(Permission::Update),
                rule(Permission::Delete),
            ],
            caller: format!(
                "{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
                principal.claims.client_id,
                principal.claims.sub,
                principal.claims.patient.as_deref().unwrap_or(""),
                principal.claims.organization.as_deref().unwrap_or(""),
                principal.claims.scope,
            ),
            reach,
            scopes: principal.scopes.clone(),
            contexts,
        }
    }

    /// The policy of the server's own work (imports, the command line): everything.
    pub fn server() -> Policy {
        Policy {
            reach: Reach::All,
            read: ScopeRule::Everything,
            search: ScopeRule::Everything,
            write: [
                ScopeRule::Everything,
                ScopeRule::Everything,
                ScopeRule::Everything,
            ],
            scopes: std::sync::Arc::new(ScopeSet::default()),
            contexts: &[Context::System],
            caller: "fhirgate".to_owned(),
        }
    }

    /// The policy of a signed-in patient acting on their own data through the server's pages
    /// (the sharing page writes their Consents): their compartment only.
    pub fn patient_self(id: &str) -> Policy {
        Policy {
            reach: Reach::Patient(id.to_owned()),
            caller: format!("patient:{id}"),
            ..Policy::server()
        }
    }

    /// Whose data the caller reaches.
    pub fn reach(&self) -> &Reach {
        &self.reach
    }

    /// The patient of a patient token.
    pub fn patient(&self) -> Option<&str> {
        match &self.reach {
            Reach::Patient(p) => Some(p),
            _ => None,
        }
    }

    /// The organisation of a partner token.
    pub fn partner(&self) -> Option<&str> {
        match &self.reach {
            Reach::Partner { organization, .. } => Some(organization),
            _ => None,
        }
    }

    /// A stable text naming the caller and its scopes, for sealing cursors and conditional
    /// guards to it.
    pub fn caller_key(&self) -> &str {
        &self.caller
    }

    /// Whether the caller sees every resource (first-party, no granular filter).
    pub fn sees_everything(&self) -> bool {
        self.reach == Reach::All
            && matches!(self.read, ScopeRule::Everything)
            && matches!(self.search, ScopeRule::Everything)
    }

    fn rule(&self, p: Permission) -> &ScopeRule {
        match p {
            Permission::Search => &self.search,
            Permission::Create => &self.write[0],
            Permission::Update => &self.write[1],
            Permission::Delete => &self.write[2],
            _ => &self.read,
        }
    }

    /// Whether the scopes could show any resource of `rt` for `p` (the type-level check).
    pub fn allows_type(&self, rt: &str, p: Permission) -> bool {
        self.scopes.allows(self.contexts, rt, p)
    }

    /// Appends ` and (…)` restricting rows of `resource` aliased `r` to what the caller sees for
    /// `p`. With `patient`, every row is known to belong to that compartment. `decided` are the
    /// code-rule decisions of this query for a partner; without them, rows of patients whose
    /// Consents name single codes are left out (as the targets of chains and the sources of
    /// `_has` are: they only narrow what the caller sees, and never widen it).
    pub fn restrict(
        &self,
        qb: &mut QueryBuilder<'static, Postgres>,
        r: &str,
        p: Permission,
        patient: Option<&str>,
        decided: Option<&Decided>,
    ) {
        if matches!(self.reach, Reach::All) && matches!(self.rule(p), ScopeRule::Everything) {
            return;
        }
        qb.push(" and ");
        self.push_reach(qb, r, patient, Some(decided));
        qb.push(" and ");
        push_rule(qb, self.rule(p), r);
    }

    /// [`Policy::restrict`] by data classes only: a partner's candidate rows before the consent
    /// engine decides those of patients with code rules.
    pub fn restrict_classes(
        &self,
        qb: &mut QueryBuilder<'static, Postgres>,
        r: &str,
        p: Permission,
        patient: Option<&str>,
    ) {
        if matches!(self.reach, Reach::All) && matches!(self.rule(p), ScopeRule::Everything) {
            return;
        }
        qb.push(" and ");
        self.push_reach(qb, r, patient, None);
        qb.push(" and ");
        push_rule(qb, self.rule(p), r);
    }

    /// `decided`: `None` = classes only; `Some(None)` = leave code-rule patients out;
    /// `Some(Some(d))` = as decided.
    fn push_reach(
        &self,
        qb: &mut QueryBuilder<'static, Postgres>,
        r: &str,
        patient: Option<&str>,
        decided: Option<Option<&Decided>>,
    ) {
        match &self.reach {
            Reach::All => {
                qb.push("true");
            }
            Reach::Patient(me) => {
                qb.push(format!("({r}.compartment = "));
                qb.push_bind(me.clone());
                qb.push(format!(
                    " or ({r}.compartment is null and {r}.resource_type = any("
                ));
                qb.push_bind(shared_types());
                qb.push(")))");
            }
            Reach::Partner {
                organization,
                purpose,
            } => {
                qb.push(format!(
                    "(({r}.compartment is null and {r}.resource_type = any("
                ));
                qb.push_bind(shared_types());
                qb.push(format!(")) or ({r}.resource_type = 'Consent' and {r}.id in (select consent_id from consent_party where organizations @> array["));
                qb.push_bind(organization.clone());
                qb.push(format!(
                    "::text])) or ({r}.resource_type <> 'Consent' and {r}.compartment is not null and "
                ));
                if patient.is_none() {
                    // Across patients: first the (hashed) set of patients granting this partner
                    // anything now, so rows of everyone else cost one lookup.
                    qb.push(format!(
                        "{r}.compartment in (select g.patient from consent_grant g where g.organization = "
                    ));
                    qb.push_bind(organization.clone());
                    qb.push(format!(
                        " and g.class <> '{}' and g.valid_from <= now() and now() < g.valid_to) and ",
                        fhirgate_consent::COMPUTED
                    ));
                }
                Self::push_granted(
                    qb,
                    &format!("{r}.classes"),
                    organization,
                    purpose,
                    patient.ok_or(r),
                );
                match decided {
                    Some(Some(d)) if !d.patients.is_empty() => {
                        qb.push(format!(" and (not ({r}.compartment = any("));
                        qb.push_bind(d.patients.clone());
                        qb.push(format!(")) or {r}.rid = any("));
                        qb.push_bind(d.allowed.clone());
                        qb.push("))");
                    }
                    None | Some(Some(_)) => {}
                    Some(None) => {
                        qb.push(" and not exists (select 1 from consent_grant cr where cr.organization = ");
                        qb.push_bind(organization.clone());
                        qb.push(format!(
                            " and cr.patient = {r}.compartment and cr.code_rules)"
                        ));
                    }
                }
                qb.push("))");
            }
        }
    }

    /// For a partner: pushes the SQL of "row `r` belongs to a patient, its data classes are
    /// granted now, and the patient's Consents name no single codes", the common case of a read
    /// by id, which then needs no other consent check (granular filters aside). `false` (and
    /// nothing pushed) for other callers.
    pub fn push_plain_grant(&self, qb: &mut QueryBuilder<'static, Postgres>, r: &str) -> bool {
        let Reach::Partner {
            organization,
            purpose,
        } = &self.reach
        else {
            return false;
        };
        qb.push(format!("{r}.compartment is not null and "));
        Self::push_granted(qb, &format!("{r}.classes"), organization, purpose, Err(r));
        qb.push(" and not exists (select 1 from consent_grant cr where cr.organization = ");
        qb.push_bind(organization.clone());
        qb.push(format!(
            " and cr.patient = {r}.compartment and cr.code_rules)"
        ));
        true
    }

    /// The SQL of the data classes a partner's grants allow, for [`crate::search::exec`]'s hot
    /// path over `obs_code_date` (whose rows carry `classes`).
    pub fn push_classes_granted(
        &self,
        qb: &mut QueryBuilder<'static, Postgres>,
        classes: &str,
        patient: &str,
    ) {
        if let Reach::Partner {
            organization,
            purpose,
        } = &self.reach
        {
            qb.push(" and ");
            Self::push_granted(qb, classes, organization, purpose, Ok(patient));
        }
    }

    /// For a partner: whether the row's data classes (`classes` column, each of them, or the
    /// class-less marker) are granted now for the patient, for the request's purpose key. The
    /// patient is a bound value, or the `compartment` column of alias `Err(alias)`.
    fn push_granted(
        qb: &mut QueryBuilder<'static, Postgres>,
        classes: &str,
        organization: &str,
        purpose: &str,
        patient: std::result::Result<&str, &str>,
    ) {
        let push_patient = |qb: &mut QueryBuilder<'static, Postgres>| match patient {
            Ok(p) => {
                qb.push_bind(p.to_owned());
            }
            Err(alias) => {
                qb.push(format!("{alias}.compartment"));
            }
        };
        qb.push(format!(
            "coalesce(nullif({classes}, '{{}}'::text[]), array['{}']) <@ array(select g.class from consent_grant g where g.organization = ",
            fhirgate_consent::CLASSLESS
        ));
        qb.push_bind(organization.to_owned());
        qb.push(" and g.patient = ");
        push_patient(qb);
        qb.push(" and g.valid_from <= now() and now() < g.valid_to and g.purpose = (case when exists (select 1 from consent_grant m where m.organization = ");
        qb.push_bind(organization.to_owned());
        qb.push(" and m.patient = ");
        push_patient(qb);
        qb.push(" and m.purpose = ");
        qb.push_bind(purpose.to_owned());
        qb.push(format!(
            " and m.class = '{}') then ",
            fhirgate_consent::COMPUTED
        ));
        qb.push_bind(purpose.to_owned());
        qb.push(format!(" else '{}' end))", fhirgate_consent::OTHER_PURPOSE));
    }

    /// Whether the caller may ask `interaction` at all, before any row is looked at: 403 for a
    /// partner outside reads and searches (history, Bundles, writes, other operations), and
    /// unless the scopes grant the interaction's type and permission. Bundles and searches
    /// across types check each entry's or type's permission themselves.
    pub fn permits(&self, interaction: &super::Interaction) -> crate::error::Result<()> {
        if self.partner().is_some() && !interaction.open_to_partners() {
            return Err(crate::error::FhirError::Forbidden(
                "no patient consent permits this access".into(),
            ));
        }
        match interaction.permission() {
            Some((rt, p)) => self.require(rt, p),
            None => Ok(()),
        }
    }

    /// 403 unless the scopes allow `p` on resources of `rt` at all (before any content or
    /// consent rule).
    pub fn require(&self, rt: &str, p: Permission) -> crate::error::Result<()> {
        if self.scopes.allows(self.contexts, rt, p) {
            Ok(())
        } else {
            Err(crate::error::FhirError::Forbidden(format!(
                "the token's scopes do not allow '{p}' on {rt}"
            )))
        }
    }

    /// Whether a patient or first-party caller reaches a resource of `rt` in `compartment` (a
    /// partner's reach depends on Consents: see [`Policy::partner_sees`]).
    pub fn reaches(&self, rt: &str, compartment: Option<&str>) -> bool {
        match (&self.reach, compartment) {
            (Reach::All, _) => true,
            (Reach::Patient(me), Some(c)) => me == c,
            (Reach::Patient(_) | Reach::Partner { .. }, None) => SHARED_TYPES.contains(&rt),
            (Reach::Partner { .. }, Some(_)) => false,
        }
    }

    /// Whether the caller reaches anything in patient `id`'s compartment now: its own for a
    /// patient, a current grant (any class, for the request's purpose) for a partner, everyone's
    /// for a first-party caller. Operations on a patient that answer as not found otherwise
    /// (`$everything`) ask this.
    pub async fn reaches_patient(
        &self,
        state: &crate::state::AppState,
        id: &str,
    ) -> crate::error::Result<bool> {
        match &self.reach {
            Reach::All => Ok(true),
            Reach::Patient(me) => Ok(me == id),
            Reach::Partner {
                organization,
                purpose,
            } => {
                // language=PostgreSQL
                let found: bool = sqlx::query_scalar(
                    "select exists (select 1 from consent_grant g where g.organization = $1 and g.patient = $2 \
                     and g.valid_from <= now() and now() < g.valid_to and g.purpose = (case when exists \
                     (select 1 from consent_grant m where m.organization = $1 and m.patient = $2 and m.purpose = $3 \
                     and m.class = $4) then $3 else $5 end))",
                )
                .bind(organization)
                .bind(id)
                .bind(purpose)
                .bind(fhirgate_consent::COMPUTED)
                .bind(fhirgate_consent::OTHER_PURPOSE)
                .fetch_one(&state.db)
                .await?;
                Ok(found)
            }
        }
    }

    /// Whether the scopes let the caller see `resource` (of type `rt`) for `p`: its type is
    /// granted, and it matches a granular filter where the granting scopes have one.
    pub fn scopes_allow(&self, rt: &str, p: Permission, resource: &Value) -> bool {
        match self.rule(p) {
            ScopeRule::Everything => true,
            ScopeRule::Types {
                unfiltered,
                filtered,
            } => {
                unfiltered.iter().any(|t| t == rt || t == "*")
                    || filtered
                        .iter()
                        .filter(|(t, _)| t == rt)
                        .any(|(_, alts)| alts.iter().any(|f| f.matches(resource)))
            }
        }
    }

    /// Whether granular filters apply to `rt` for `p` (else [`Policy::scopes_allow`] needs only
    /// the type, not the content).
    pub fn filters_content(&self, rt: &str, p: Permission) -> bool {
        match self.rule(p) {
            ScopeRule::Everything => false,
            ScopeRule::Types { unfiltered, .. } => !unfiltered.iter().any(|t| t == rt || t == "*"),
        }
    }

    /// Whether searches of `rt` are narrowed by the content of each row (granular scope filters,
    /// or no grant of the type at all), so that a path reading index rows alone cannot apply
    /// the policy.
    pub fn filters_rows(&self, rt: &str) -> bool {
        self.filters_content(rt, Permission::Search)
    }

    /// For a partner: whether the patient's `consents` permit `resource` now, by the consent
    /// engine (classes and codes). Other callers pass.
    pub fn consents_permit(&self, consents: &[Value], rt: &str, resource: &Value) -> bool {
        let Reach::Partner {
            organization,
            purpose,
        } = &self.reach
        else {
            return true;
        };
        let ctx = fhirgate_consent::AccessContext {
            organization: organization.clone(),
            purpose: (!purpose.is_empty()).then(|| purpose.clone()),
            resource_type: rt.to_owned(),
            classes: fhirgate_consent::classes_of(resource),
            codes: fhirgate_consent::codes_of_resource(resource),
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        fhirgate_consent::decide(consents, &ctx).permits()
    }

    /// For a partner: whether `resource` of `patient` is granted now, exactly as a search
    /// decides it ([`Policy::restrict`]): its data classes by the grants derived from the
    /// patient's Consents, in one statement; and where those Consents also name single codes,
    /// by the consent engine besides.
    async fn partner_sees(
        &self,
        state: &crate::state::AppState,
        organization: &str,
        purpose: &str,
        patient: &str,
        rt: &str,
        resource: &Value,
    ) -> crate::error::Result<bool> {
        let mut qb: QueryBuilder<'static, Postgres> = QueryBuilder::new(
            "select exists (select 1 from consent_grant cr where cr.organization = ",
        );
        qb.push_bind(organization.to_owned());
        qb.push(" and cr.patient = ");
        qb.push_bind(patient.to_owned());
        qb.push(" and cr.code_rules), exists (select 1 from (select ");
        qb.push_bind(fhirgate_consent::classes_of(resource));
        qb.push("::text[] as classes) x where ");
        Self::push_granted(&mut qb, "x.classes", organization, purpose, Ok(patient));
        qb.push(")");
        let (code_rules, granted): (bool, bool) = qb.build_query_as().fetch_one(&state.db).await?;
        if !granted || !code_rules {
            return Ok(granted);
        }
        let consents = crate::storage::consents_of(state, patient).await?;
        Ok(self.consents_permit(&consents, rt, resource))
    }

    /// Whether the caller may see one stored resource (`body`, of type `rt`, in `compartment`)
    /// for `p`: the same rules as [`Policy::restrict`], for a resource in hand.
    pub async fn sees(
        &self,
        state: &crate::state::AppState,
        rt: &str,
        compartment: Option<&str>,
        body: &[u8],
        p: Permission,
    ) -> crate::error::Result<bool> {
        let resource = || fhirgate_codec::parse_json(body);
        if let Reach::Partner {
            organization,
            purpose,
        } = &self.reach
        {
            match compartment {
                _ if rt == "Consent" => {
                    if !fhirgate_consent::organizations_named(&resource()?).contains(organization) {
                        return Ok(false);
                    }
                }
                None => {
                    if !SHARED_TYPES.contains(&rt) {
                        return Ok(false);
                    }
                }
                Some(patient) => {
                    let parsed = resource()?;
                    if !self
                        .partner_sees(state, organization, purpose, patient, rt, &parsed)
                        .await?
                    {
                        return Ok(false);
                    }
                    return Ok(!self.filters_content(rt, p) || self.scopes_allow(rt, p, &parsed));
                }
            }
        } else if !self.reaches(rt, compartment) {
            return Ok(false);
        }
        Ok(!self.filters_content(rt, p) || self.scopes_allow(rt, p, &resource()?))
    }
}

/// An organisation as a reference: `Organization/<id>` for a bare id.
pub fn organization_reference(o: &str) -> String {
    if o.contains('/') {
        o.to_owned()
    } else {
        format!("Organization/{o}")
    }
}

fn shared_types() -> Vec<String> {
    SHARED_TYPES.iter().map(|t| (*t).to_owned()).collect()
}

fn scope_rule(scopes: &ScopeSet, contexts: &[Context], p: Permission, ctx: &Ctx<'_>) -> ScopeRule {
    let granting: Vec<_> = scopes
        .resources
        .iter()
        .filter(|s| contexts.contains(&s.context) && s.permissions.contains(&p))
        .collect();
    if granting
        .iter()
        .any(|s| s.resource_type == "*" && s.filters.is_empty())
    {
        return ScopeRule::Everything;
    }
    let mut unfiltered: Vec<String> = Vec::new();
    let mut filtered: Vec<(String, Vec<Filter>)> = Vec::new();
    for s in &granting {
        if s.filters.is_empty() {
            if !unfiltered.contains(&s.resource_type) {
                unfiltered.push(s.resource_type.clone());
            }
            continue;
        }
        // A filtered wildcard (`*.rs?category=…`) names parameters no single type is known to
        // have: it fails closed.
        let filter = if s.resource_type == "*" {
            Filter { clauses: None }
        } else {
            Filter::parse(ctx, &s.resource_type, &s.filters)
        };
        match filtered.iter_mut().find(|(t, _)| *t == s.resource_type) {
            Some((_, alts)) => alts.push(filter),
            None => filtered.push((s.resource_type.clone(), vec![filter])),
        }
    }
    ScopeRule::Types {
        unfiltered,
        filtered,
    }
}

fn push_rule(qb: &mut QueryBuilder<'static, Postgres>, rule: &ScopeRule, r: &str) {
    let ScopeRule::Types {
        unfiltered,
        filtered,
    } = rule
    else {
        qb.push("true");
        return;
    };
    qb.push(format!("({r}.resource_type = any("));
    qb.push_bind(unfiltered.clone());
    qb.push(")");
    for (rt, alts) in filtered {
        qb.push(format!(" or ({r}.resource_type = "));
        qb.push_bind(rt.clone());
        qb.push(" and (false");
        for f in alts {
            qb.push(" or (");
            match &f.clauses {
                None => {
                    qb.push("false");
                }
                Some(clauses) => {
                    qb.push("true");
                    for (c, _, _) in clauses {
                        qb.push(" and ");
                        query::push_clause(qb, c, r, None, 0, None);
                    }
                }
            }
            qb.push(")");
        }
        qb.push("))");
    }
    qb.push(")");
}

impl Filter {
    /// Each `(param, value)` must be a plain token parameter of `rt` (`category=vital-signs`,
    /// `code=http://loinc.org|8867-4`): the only filters SMART defines that both SQL and a
    /// resource in hand can evaluate the same way. Anything else fails closed.
    fn parse(ctx: &Ctx<'_>, rt: &str, filters: &[(String, String)]) -> Filter {
        let mut clauses = Vec::with_capacity(filters.len());
        for (param, value) in filters {
            let token = fhirgate_fhirpath::parameter(rt, param)
                .is_some_and(|d| d.param_type == ParamType::Token)
                && !value.contains(',');
            let parsed = token
                .then(|| query::parse(ctx, rt, param, value, 0).ok().flatten())
                .flatten();
            match parsed {
                Some(c @ Clause::Index { negate: false, .. }) => {
                    clauses.push((c, param.clone(), value.clone()));
                }
                _ => return Filter { clauses: None },
            }
        }
        Filter {
            clauses: Some(clauses),
        }
    }

    /// The same test on a resource in hand, over the tokens the index would hold for it.
    fn matches(&self, resource: &Value) -> bool {
        let Some(clauses) = &self.clauses else {
            return false;
        };
        clauses.iter().all(|(_, param, value)| {
            let tokens = fhirgate_fhirpath::extract_parameter(resource, param);
            tokens.iter().any(|v| match v {
                IndexValue::Token(t) => token_matches(t.system, t.code, value),
                _ => false,
            })
        })
    }
}

/// A token search value (`code`, `system|code`, `|code`, `system|`) against an indexed token,
/// as `search::query` renders it in SQL.
fn token_matches(system: Option<&str>, code: Option<&str>, wanted: &str) -> bool {
    let parts = query::split_escaped(wanted, '|');
    match parts.as_slice() {
        [c] => code == Some(c.as_str()),
        [s, c] if c.is_empty() => !s.is_empty() && system == Some(s.as_str()),
        [s, c] if s.is_empty() => code == Some(c.as_str()) && system.is_none(),
        [s, c] => code == Some(c.as_str()) && system == Some(s.as_str()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_values_match_as_the_sql_does() {
        let loinc = Some("http://loinc.org");
        assert!(token_matches(loinc, Some("8867-4"), "8867-4"));
        assert!(token_matches(
            loinc,
            Some("8867-4"),
            "http://loinc.org|8867-4"
        ));
        assert!(token_matches(loinc, Some("8867-4"), "http://loinc.org|"));
        assert!(!token_matches(loinc, Some("8867-4"), "|8867-4"));
        assert!(token_matches(None, Some("x"), "|x"));
        assert!(!token_matches(
            loinc,
            Some("8867-4"),
            "http://snomed.info/sct|8867-4"
        ));
        assert!(!token_matches(loinc, None, "8867-4"));
    }

    #[test]
    fn reach_of_patients_and_partners_keeps_to_shared_types_outside_compartments() {
        let mut p = Policy::server();
        assert!(p.reaches("Observation", None));
        p.reach = Reach::Patient("a".into());
        assert!(p.reaches("Observation", Some("a")));
        assert!(!p.reaches("Observation", Some("b")));
        assert!(!p.reaches("Observation", None));
        assert!(p.reaches("Organization", None));
        assert!(!p.reaches("Provenance", None));
        p.reach = Reach::Partner {
            organization: "Organization/o".into(),
            purpose: String::new(),
        };
        assert!(p.reaches("Practitioner", None));
        assert!(!p.reaches("Observation", Some("a")));
    }

    /// A caller with `scope` and `reach`, without granular filters (which need the search
    /// parameter ids of a running server).
    fn caller(scope: &str, reach: Reach) -> Policy {
        let contexts: &'static [Context] = match reach {
            Reach::Patient(_) => &[Context::Patient, Context::User],
            _ => &[Context::System],
        };
        Policy {
            reach,
            scopes: std::sync::Arc::new(ScopeSet::parse(scope).expect("scope")),
            contexts,
            ..Policy::server()
        }
    }

    #[test]
    fn every_route_template_is_permitted_or_refused_by_the_policy() {
        use axum::http::Method;
        let system = caller("system/*.cruds", Reach::All);
        let patient = caller("patient/*.rs", Reach::Patient("p".into()));
        let partner = caller(
            "system/*.rs",
            Reach::Partner {
                organization: "Organization/o".into(),
                purpose: String::new(),
            },
        );
        let narrow = caller("patient/Observation.rs", Reach::Patient("p".into()));
        // (method, path, expected for: system, patient, partner, Observation-only patient)
        let routes: &[(Method, &str, &str)] = &[
            (Method::GET, "/fhir", "YYYY"),
            (Method::POST, "/fhir", "YYNY"),
            (Method::GET, "/fhir/_history", "YYNN"),
            (Method::GET, "/fhir/Observation", "YYYY"),
            (Method::POST, "/fhir/Observation", "YNNN"),
            (Method::PUT, "/fhir/Observation", "YNNN"),
            (Method::DELETE, "/fhir/Observation", "YNNN"),
            (Method::POST, "/fhir/Observation/_search", "YYYY"),
            (Method::GET, "/fhir/Observation/_history", "YYNY"),
            (Method::GET, "/fhir/Observation/1", "YYYY"),
            (Method::PUT, "/fhir/Observation/1", "YNNN"),
            (Method::DELETE, "/fhir/Observation/1", "YNNN"),
            (Method::GET, "/fhir/Observation/1/_history", "YYNY"),
            (Method::GET, "/fhir/Observation/1/_history/1", "YYYY"),
            (Method::GET, "/fhir/Patient/p", "YYYN"),
            (Method::GET, "/fhir/Patient/p/Observation", "YYYY"),
            (Method::GET, "/fhir/Patient/p/Condition", "YYYN"),
            (Method::GET, "/fhir/Patient/p/$everything", "YYYY"),
            (Method::GET, "/fhir/Observation/$lastn", "YYYY"),
            (Method::GET, "/fhir/Observation/$stats", "YYYY"),
            (Method::GET, "/fhir/AuditEvent", "YYNN"),
            (Method::GET, "/fhir/AuditEvent/$export", "YYNN"),
            (Method::POST, "/ingest/oura", "YYNY"),
            (Method::GET, "/ingest/jobs/1", "YYNY"),
            (Method::GET, "/admin/clients", "YYNY"),
            (Method::DELETE, "/admin/clients/x", "YYNY"),
        ];
        for (m, path, expected) in routes {
            let i = super::super::Interaction::classify(m, path).expect("routed");
            let got: String = [&system, &patient, &partner, &narrow]
                .iter()
                .map(|p| if p.permits(&i).is_ok() { 'Y' } else { 'N' })
                .collect();
            assert_eq!(&got, expected, "{m} {path}");
        }
    }
}
