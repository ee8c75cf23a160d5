//! Stable ids for search parameters (`search_param`): index rows carry a small integer rather
//! than the type and code. Every parameter of the R4 definitions is registered at start-up, with
//! the pseudo-parameters modifiers search (`code:text`, `subject:identifier`,
//! `identifier:of-type`), and `birthdate:year`, the plain birth year of a blind-indexed date
//! (ranges at year precision).

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
    ids: ByType<Pid>,
    /// type → code → the code whose rows answer it.
    aliases: ByType<String>,
    /// type → combo code → the plain code whose rows it also covers.
    combos: ByType<String>,
    /// type → (combo id, plain id) of each combo parameter and its `:text` pseudo-parameter.
    combo_pairs: HashMap<String, Vec<(Pid, Pid)>>,
}

/// Maps keyed by resource type, then code: looked up by `&str` without allocating (index rows
/// are written on every write).
type ByType<V> = HashMap<String, HashMap<String, V>>;

fn lookup<'m, V>(m: &'m ByType<V>, rt: &str, code: &str) -> Option<&'m V> {
    m.get(rt)?.get(code)
}

fn insert<V>(m: &mut ByType<V>, rt: &str, code: &str, v: V) {
    m.entry(rt.to_owned())
        .or_default()
        .insert(code.to_owned(), v);
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
                    ParamType::Date if crate::search::index::is_blind(base, &def.code) => {
                        push(format!("{}:year", def.code))
                    }
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
        let mut ids = ByType::default();
        for (p, t, c) in rows {
            insert(&mut ids, &t, &c, p);
        }
        let mut out = ParamIds {
            ids,
            aliases,
            combos,
            combo_pairs: HashMap::new(),
        };
        out.combo_pairs = out.pair_combos();
        Ok(out)
    }

    /// Every (combo id, plain id) pair, per type (see [`ParamIds::combo_pairs`]).
    fn pair_combos(&self) -> HashMap<String, Vec<(Pid, Pid)>> {
        let mut out: HashMap<String, Vec<(Pid, Pid)>> = HashMap::new();
        for (rt, combos) in &self.combos {
            for (combo, plain) in combos {
                for suffix in ["", ":text"] {
                    let pair = (
                        self.get(rt, &format!("{combo}{suffix}")),
                        self.get(rt, &format!("{plain}{suffix}")),
                    );
                    if let (Some(c), Some(p)) = pair {
                        out.entry(rt.clone()).or_default().push((c, p));
                    }
                }
            }
        }
        out
    }

    /// The (combo id, plain id) pairs of `rt`, `:text` pseudo-parameters included: a combo row
    /// equal to a row of its plain parameter is not stored.
    pub fn combo_pairs(&self, rt: &str) -> &[(Pid, Pid)] {
        self.combo_pairs.get(rt).map_or(&[], Vec::as_slice)
    }

    /// The code whose rows answer `code` of `rt` (itself unless it is an alias).
    pub fn storage_code<'a>(&'a self, rt: &str, code: &'a str) -> &'a str {
        lookup(&self.aliases, rt, code).map_or(code, String::as_str)
    }

    /// Whether `code` has an id of `rt`'s own (not one shared by every type).
    pub fn is_type_specific(&self, rt: &str, code: &str) -> bool {
        lookup(&self.ids, rt, code).is_some()
    }

    /// Whether `code` of `rt` stores no rows of its own.
    pub fn is_alias(&self, rt: &str, code: &str) -> bool {
        lookup(&self.aliases, rt, code).is_some()
    }

    /// For a combo parameter, the id of the plain parameter whose rows it also covers.
    pub fn combo_partner(&self, rt: &str, code: &str) -> Option<Pid> {
        let plain = lookup(&self.combos, rt, code)?;
        self.get(rt, plain)
    }

    /// The id of parameter `code` (or pseudo-parameter) of `rt`.
    pub fn get(&self, rt: &str, code: &str) -> Option<Pid> {
        lookup(&self.ids, rt, code)
            .or_else(|| COMMON_BASES.iter().find_map(|b| lookup(&self.ids, b, code)))
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
fn shared_rows() -> (ByType<String>, ByType<String>) {
    let mut aliases = ByType::default();
    let mut combos = ByType::default();
    for def in fhirgate_fhirpath::all_parameters() {
        let Some(expr) = def.expression.as_deref() else {
            continue;
        };
        for rt in &def.base {
            if let Some(plain) = def.code.strip_prefix("combo-") {
                if fhirgate_fhirpath::parameter(rt, plain)
                    .is_some_and(|p| p.param_type == def.param_type)
                {
                    insert(&mut combos, rt, &def.code, plain.to_owned());
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
                insert(&mut aliases, rt, &def.code, "subject".to_owned());
            }
        }
    }
    (aliases, combos)
}
