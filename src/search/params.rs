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

/// `(base, code)` → id, loaded once.
#[derive(Debug, Default)]
pub struct ParamIds {
    ids: HashMap<(String, String), Pid>,
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
        Ok(ParamIds {
            ids: rows.into_iter().map(|(p, t, c)| ((t, c), p)).collect(),
        })
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
