//! SMART on FHIR scopes, v1 (`patient/Observation.read`) and v2 (`patient/Observation.rs`, with
//! granular `?category=…` filters), per <https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html>.
//!
//! A granted scope set answers one question: may this token perform `interaction` on resources of
//! `type` in `context`? Granular filters further restrict which resources of that type are visible
//! ([`ScopeSet::filters`]).

use std::fmt;

/// Who the access is on behalf of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Context {
    /// `patient/`: the patient in context only.
    Patient,
    /// `user/`: what the signed-in user may see.
    User,
    /// `system/`: a backend acting for itself.
    System,
}

/// The v2 permissions: create, read, update, delete, search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// `c`
    Create,
    /// `r` (read, vread, history)
    Read,
    /// `u`
    Update,
    /// `d`
    Delete,
    /// `s`
    Search,
}

impl Permission {
    fn letter(self) -> char {
        match self {
            Self::Create => 'c',
            Self::Read => 'r',
            Self::Update => 'u',
            Self::Delete => 'd',
            Self::Search => 's',
        }
    }
}

/// One resource scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceScope {
    /// The launch context.
    pub context: Context,
    /// A resource type, or `*`.
    pub resource_type: String,
    /// Granted permissions (v1 `read` = r+s, `write` = c+u+d, `*` = all).
    pub permissions: Vec<Permission>,
    /// Granular filters (`category=vital-signs`), as `(parameter, value)` pairs.
    pub filters: Vec<(String, String)>,
    /// The scope as written.
    pub raw: String,
}

/// Why a scope string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid scope '{0}'")]
pub struct InvalidScope(pub String);

impl ResourceScope {
    /// Parses `context/Type.permissions[?filters]`; `None` for scopes that are not resource scopes
    /// (`openid`, `launch/patient`, `offline_access`, …).
    pub fn parse(raw: &str) -> Result<Option<Self>, InvalidScope> {
        let bad = || InvalidScope(raw.to_owned());
        let Some((ctx, rest)) = raw.split_once('/') else {
            return Ok(None);
        };
        let context = match ctx {
            "patient" => Context::Patient,
            "user" => Context::User,
            "system" => Context::System,
            _ => return Ok(None), // `launch/patient` and other non-resource scopes
        };
        let (main, query) = match rest.split_once('?') {
            Some((m, q)) => (m, Some(q)),
            None => (rest, None),
        };
        let (rt, perms) = main.rsplit_once('.').ok_or_else(bad)?;
        if rt != "*" && !fhirgate_codec::is_resource_type(rt) {
            return Err(bad());
        }
        let permissions = match perms {
            "read" => vec![Permission::Read, Permission::Search],
            "write" => vec![Permission::Create, Permission::Update, Permission::Delete],
            "*" => vec![
                Permission::Create,
                Permission::Read,
                Permission::Update,
                Permission::Delete,
                Permission::Search,
            ],
            v2 => {
                // v2 letters must appear in the order c, r, u, d, s, each at most once.
                let order = "cruds";
                let mut last = None;
                let mut out = Vec::new();
                for ch in v2.chars() {
                    let pos = order.find(ch).ok_or_else(bad)?;
                    if last.is_some_and(|l| pos <= l) {
                        return Err(bad());
                    }
                    last = Some(pos);
                    out.push(match ch {
                        'c' => Permission::Create,
                        'r' => Permission::Read,
                        'u' => Permission::Update,
                        'd' => Permission::Delete,
                        _ => Permission::Search,
                    });
                }
                if out.is_empty() {
                    return Err(bad());
                }
                out
            }
        };
        let filters = match query {
            Some(q) if !q.is_empty() => form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
            Some(_) => return Err(bad()),
            None => Vec::new(),
        };
        Ok(Some(Self {
            context,
            resource_type: rt.to_owned(),
            permissions,
            filters,
            raw: raw.to_owned(),
        }))
    }

    fn covers(&self, contexts: &[Context], rt: &str, p: Permission) -> bool {
        contexts.contains(&self.context)
            && (self.resource_type == "*" || self.resource_type == rt)
            && self.permissions.contains(&p)
    }

    /// Whether `other` grants nothing this scope does not (used to refuse escalation).
    pub fn includes(&self, other: &ResourceScope) -> bool {
        self.context == other.context
            && (self.resource_type == "*" || self.resource_type == other.resource_type)
            && other
                .permissions
                .iter()
                .all(|p| self.permissions.contains(p))
            && self.filters.iter().all(|f| other.filters.contains(f))
    }
}

/// A parsed, granted scope string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet {
    /// Resource scopes.
    pub resources: Vec<ResourceScope>,
    /// Everything else (`openid`, `fhirUser`, `launch/patient`, `offline_access`).
    pub other: Vec<String>,
}

impl ScopeSet {
    /// Parses a space-separated scope string, refusing malformed resource scopes.
    pub fn parse(s: &str) -> Result<Self, InvalidScope> {
        let mut set = Self::default();
        for raw in s.split_whitespace() {
            match ResourceScope::parse(raw)? {
                Some(r) => set.resources.push(r),
                None => set.other.push(raw.to_owned()),
            }
        }
        Ok(set)
    }

    /// Whether some scope grants `p` on `rt` in one of `contexts` (ignoring filters).
    pub fn allows(&self, contexts: &[Context], rt: &str, p: Permission) -> bool {
        self.resources.iter().any(|s| s.covers(contexts, rt, p))
    }

    /// The filters that apply to `p` on `rt`: `None` when an unfiltered scope grants it (no
    /// restriction), otherwise the alternatives (a resource must match one of them).
    pub fn filters(
        &self,
        contexts: &[Context],
        rt: &str,
        p: Permission,
    ) -> Option<Vec<Vec<(String, String)>>> {
        let matching: Vec<&ResourceScope> = self
            .resources
            .iter()
            .filter(|s| s.covers(contexts, rt, p))
            .collect();
        if matching.iter().any(|s| s.filters.is_empty()) {
            return None;
        }
        Some(matching.into_iter().map(|s| s.filters.clone()).collect())
    }

    /// Keeps only what both `self` (requested) and `allowed` (registered) grant.
    pub fn intersect(&self, allowed: &ScopeSet) -> ScopeSet {
        ScopeSet {
            resources: self
                .resources
                .iter()
                .filter(|r| allowed.resources.iter().any(|a| a.includes(r)))
                .cloned()
                .collect(),
            other: self
                .other
                .iter()
                .filter(|o| allowed.other.contains(o))
                .cloned()
                .collect(),
        }
    }

    /// Whether it has a scope of `context`.
    pub fn has_context(&self, context: Context) -> bool {
        self.resources.iter().any(|r| r.context == context)
    }

    /// Whether `name` (e.g. `offline_access`) was granted.
    pub fn has(&self, name: &str) -> bool {
        self.other.iter().any(|o| o == name)
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: Vec<&str> = self
            .resources
            .iter()
            .map(|r| r.raw.as_str())
            .chain(self.other.iter().map(String::as_str))
            .collect();
        f.write_str(&all.join(" "))
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.letter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_scopes_parse() {
        let s = ScopeSet::parse(
            "patient/Observation.read system/*.rs user/Patient.cruds launch/patient openid",
        )
        .expect("parse");
        assert!(s.allows(&[Context::Patient], "Observation", Permission::Read));
        assert!(s.allows(&[Context::Patient], "Observation", Permission::Search));
        assert!(!s.allows(&[Context::Patient], "Observation", Permission::Create));
        assert!(s.allows(&[Context::System], "Encounter", Permission::Search));
        assert!(!s.allows(&[Context::System], "Encounter", Permission::Update));
        assert!(s.allows(&[Context::User], "Patient", Permission::Delete));
        assert!(s.has("openid"));
        assert_eq!(s.other, ["launch/patient", "openid"]);
    }

    #[test]
    fn malformed_scopes_are_refused() {
        for bad in [
            "patient/Observation.rx",
            "patient/Observation.sr",
            "patient/Observation.rr",
            "patient/Bogus.read",
            "patient/Observation",
            "patient/Observation.rs?",
        ] {
            assert!(ScopeSet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn granular_filters() {
        let s = ScopeSet::parse(
            "patient/Observation.rs?category=vital-signs patient/Observation.rs?category=activity",
        )
        .expect("parse");
        let f = s
            .filters(&[Context::Patient], "Observation", Permission::Read)
            .expect("filtered");
        assert_eq!(f.len(), 2);
        let open =
            ScopeSet::parse("patient/Observation.rs?category=vital-signs patient/Observation.read")
                .expect("parse");
        assert_eq!(
            open.filters(&[Context::Patient], "Observation", Permission::Read),
            None
        );
    }

    #[test]
    fn intersection_refuses_escalation() {
        let registered = ScopeSet::parse("patient/Observation.rs openid").expect("r");
        let asked = ScopeSet::parse("patient/*.cruds patient/Observation.r patient/Observation.rs?category=laboratory openid offline_access").expect("a");
        let granted = asked.intersect(&registered);
        assert_eq!(
            granted.to_string(),
            "patient/Observation.r patient/Observation.rs?category=laboratory openid"
        );
    }
}
