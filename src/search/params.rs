//! Stable ids for search parameters (`search_param`): index rows carry a small integer rather
//! than the type and code. Every parameter of the R4 definitions is registered at start-up, with
//! the pseudo-parameters modifiers search (`code:text`, `subject:identifier`,
//! `identifier:of-type`).

use std::collections::HashMap;

use fhirgate_fhirpath::ParamType;
use sqlx::PgPool;

/// A parameter id.
pub type Pid = i32;

/// Bases that stand for every resource type.
const COMMON_BASES: [&str; 2] = ["Resource", "DomainResource"];

/// `(base, code)` → id, loaded once; and which parameters share another's rows.
///
/// Two kinds of R4 parameters repeat another's values, and storing them twice would cost every
/// write: `patient` is `subject.where(resolve() is Patient)` on most clinical types, so it is
/// answered from `subject`'s rows (an alias); and Observation's `combo-X` is `X` plus the same
/// over components, so only the component values are stored under it and a search covers both
/// (a combo).
#[derive(Debug, Default)]
pub struct ParamIds {
    ids: HashMap<(String, String), Pid>,
    /// (type, code) → the code whose rows answer it.
    aliases: HashMap<(String, String), String>,
    /// (type, combo code) → the plain code whose rows it also covers.
    combos: HashMap<(String, String), String>,
}

impl ParamIds {
    /// Registers every parameter (idempotent) and loads the ids.
    pub async fn load(db: &PgPool) -> sqlx::Result<ParamIds> {
        let mut bases = Vec::new();
        let mut codes = Vec::new();
        for def in fhirgate_fhirpath::all_parameters() {
            for base in &def.base {
                let mut push = |code: String| {
                    bases.push(base.clone());
                    codes.push(code);
                };
                push(def.code.clone());
                match def.param_type {
                    ParamType::Token => {
                        push(format!("{}:text", def.code));
                        if def.code == "identifier" {
                            push(format!("{}:of-type", def.code));
                        }
                    }
                    ParamType::Reference => push(format!("{}:identifier", def.code)),
                    _ => {}
                }
            }
        }
        // language=PostgreSQL
        sqlx::query(
            r#"insert into search_param (resource_type, code)
               select * from unnest($1::text[], $2::text[]) on conflict do nothing"#,
        )
        .bind(&bases)
        .bind(&codes)
        .execute(db)
        .await?;
        // language=PostgreSQL
        let rows: Vec<(i32, String, String)> =
            sqlx::query_as("select pid, resource_type, code from search_param")
                .fetch_all(db)
                .await?;
        let (aliases, combos) = shared_rows();
        Ok(ParamIds {
            ids: rows.into_iter().map(|(p, t, c)| ((t, c), p)).collect(),
            aliases,
            combos,
        })
    }

    /// The code whose rows answer `code` of `rt` (itself unless it is an alias).
    pub fn storage_code<'a>(&'a self, rt: &str, code: &'a str) -> &'a str {
        self.aliases
            .get(&(rt.to_owned(), code.to_owned()))
            .map_or(code, String::as_str)
    }

    /// Whether `code` has an id of `rt`'s own (not one shared by every type).
    pub fn is_type_specific(&self, rt: &str, code: &str) -> bool {
        self.ids.contains_key(&(rt.to_owned(), code.to_owned()))
    }

    /// Whether `code` of `rt` stores no rows of its own.
    pub fn is_alias(&self, rt: &str, code: &str) -> bool {
        self.aliases.contains_key(&(rt.to_owned(), code.to_owned()))
    }

    /// For a combo parameter, the id of the plain parameter whose rows it also covers.
    pub fn combo_partner(&self, rt: &str, code: &str) -> Option<Pid> {
        let plain = self.combos.get(&(rt.to_owned(), code.to_owned()))?;
        self.get(rt, plain)
    }

    /// The ids a search of `code` on `rt` reads: its storage parameter, and for a combo the
    /// plain one too.
    pub fn search_pids(&self, rt: &str, code: &str) -> Vec<Pid> {
        let mut out: Vec<Pid> = self
            .get(rt, self.storage_code(rt, code))
            .into_iter()
            .collect();
        out.extend(self.combo_partner(rt, code));
        out
    }

    /// The id of parameter `code` (or pseudo-parameter) of `rt`.
    pub fn get(&self, rt: &str, code: &str) -> Option<Pid> {
        let key = |t: &str| (t.to_owned(), code.to_owned());
        self.ids
            .get(&key(rt))
            .or_else(|| COMMON_BASES.iter().find_map(|b| self.ids.get(&key(b))))
            .copied()
    }
}

/// The branch of a (union) expression that applies to `rt`: `Observation.subject` of
/// `AllergyIntolerance.patient | Observation.subject | …`.
fn branch<'a>(expression: &'a str, rt: &str) -> Option<&'a str> {
    expression
        .split('|')
        .map(str::trim)
        .find(|b| b.strip_prefix(rt).is_some_and(|rest| rest.starts_with('.')))
}

/// Aliases and combos of the R4 definitions (see [`ParamIds`]).
#[allow(clippy::type_complexity)]
fn shared_rows() -> (
    HashMap<(String, String), String>,
    HashMap<(String, String), String>,
) {
    let mut aliases = HashMap::new();
    let mut combos = HashMap::new();
    for def in fhirgate_fhirpath::all_parameters() {
        let Some(expr) = def.expression.as_deref() else {
            continue;
        };
        for rt in &def.base {
            if let Some(plain) = def.code.strip_prefix("combo-") {
                if fhirgate_fhirpath::parameter(rt, plain)
                    .is_some_and(|p| p.param_type == def.param_type)
                {
                    combos.insert((rt.clone(), def.code.clone()), plain.to_owned());
                }
            }
            if def.code != "patient" || def.param_type != ParamType::Reference {
                continue;
            }
            let (Some(mine), Some(subject)) = (
                branch(expr, rt),
                fhirgate_fhirpath::parameter(rt, "subject"),
            ) else {
                continue;
            };
            let theirs = subject.expression.as_deref().and_then(|e| branch(e, rt));
            if theirs.is_some_and(|t| mine == format!("{t}.where(resolve() is Patient)")) {
                aliases.insert((rt.clone(), def.code.clone()), "subject".to_owned());
            }
        }
    }
    (aliases, combos)
}
