//! The R4 element model the evaluator navigates with: every resource, datatype and
//! backbone element with its JSON keys and their types, loaded once from
//! `fhir-profiles/r4-model.json` (generated from the official StructureDefinitions).
//!
//! Choice elements (`value[x]`) are recognised from the key names: a key that is a base
//! name followed by its capitalised type name (`valueQuantity` of type `Quantity`) is a
//! variant of the base name when at least two such keys share that base and no element
//! carries the base name itself.

use std::collections::HashMap;
use std::fmt;
use std::sync::LazyLock;

use serde::Deserialize;

const MODEL_JSON: &str = include_str!("../../fhir-profiles/r4-model.json");

/// A FHIR type known to the model (resource, datatype, primitive or backbone element),
/// or [`Ty::UNKNOWN`] for JSON the model does not describe.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ty(u16);

impl Ty {
    /// The type of JSON the model does not describe; navigation then follows plain keys.
    pub const UNKNOWN: Ty = Ty(u16::MAX);

    /// The type's name (`Quantity`, `dateTime`, `Observation.component`), `None` when unknown.
    pub fn name(self) -> Option<&'static str> {
        MODEL.types.get(usize::from(self.0)).map(|t| &*t.name)
    }

    /// Looks a type up by its FHIR name (case-sensitive), e.g. `Patient` or `dateTime`.
    pub fn named(name: &str) -> Option<Ty> {
        MODEL.by_name.get(name).copied()
    }

    /// Whether `self` is `other` or one of its specialisations (`Age` is a `Quantity`,
    /// `code` is a `string`, `Patient` is a `DomainResource` and a `Resource`).
    pub fn is_a(self, other: Ty) -> bool {
        let mut cur = Some(self);
        while let Some(t) = cur {
            if t == other {
                return true;
            }
            cur = MODEL.types.get(usize::from(t.0)).and_then(|i| i.parent);
        }
        false
    }

    /// Whether this is a concrete resource type.
    pub fn is_resource(self) -> bool {
        MODEL
            .types
            .get(usize::from(self.0))
            .is_some_and(|t| t.kind == Kind::Resource)
    }

    /// Whether this is a FHIR primitive type (`string`, `dateTime`, …).
    pub fn is_primitive(self) -> bool {
        MODEL
            .types
            .get(usize::from(self.0))
            .is_some_and(|t| t.kind == Kind::Primitive)
    }
}

impl fmt::Debug for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name().unwrap_or("?"))
    }
}

/// An interned element name (base names of choice elements included).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) struct NameId(u32);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Primitive,
    Complex,
    Resource,
    Abstract,
}

/// One JSON key an element name maps to.
#[derive(Debug)]
pub(crate) struct Child {
    pub(crate) key: Box<str>,
    pub(crate) ty: Ty,
}

struct TypeInfo {
    name: Box<str>,
    kind: Kind,
    parent: Option<Ty>,
    /// Sorted by name: each element name with the keys it reads.
    children: Vec<(NameId, Box<[Child]>)>,
}

pub(crate) struct Model {
    types: Vec<TypeInfo>,
    by_name: HashMap<Box<str>, Ty>,
    names: HashMap<Box<str>, NameId>,
    pub(crate) resource: Ty,
    pub(crate) domain_resource: Ty,
    pub(crate) extension: Ty,
}

#[derive(Deserialize)]
struct RawModel {
    contexts: HashMap<String, HashMap<String, (String, u8, i32)>>,
    primitives: Vec<String>,
    resources: Vec<String>,
}

/// Resources that are not `DomainResource`s.
const PLAIN_RESOURCES: [&str; 3] = ["Bundle", "Binary", "Parameters"];

/// Specialisations the JSON keys cannot reveal: (subtype, supertype).
const SUBTYPES: [(&str, &str); 16] = [
    ("Age", "Quantity"),
    ("Count", "Quantity"),
    ("Distance", "Quantity"),
    ("Duration", "Quantity"),
    ("MoneyQuantity", "Quantity"),
    ("SimpleQuantity", "Quantity"),
    ("code", "string"),
    ("id", "string"),
    ("markdown", "string"),
    ("url", "uri"),
    ("canonical", "uri"),
    ("oid", "uri"),
    ("uuid", "uri"),
    ("positiveInt", "integer"),
    ("unsignedInt", "integer"),
    ("DomainResource", "Resource"),
];

pub(crate) static MODEL: LazyLock<Model> = LazyLock::new(build);

fn build() -> Model {
    // The file is part of the build; a parse failure is a build defect every test catches.
    let raw: RawModel = serde_json::from_str(MODEL_JSON)
        .unwrap_or_else(|e| panic!("fhir-profiles/r4-model.json is corrupt: {e}"));
    let mut types: Vec<TypeInfo> = Vec::new();
    let mut by_name: HashMap<Box<str>, Ty> = HashMap::new();
    let mut add = |name: &str, kind: Kind, types: &mut Vec<TypeInfo>| -> Ty {
        if let Some(t) = by_name.get(name) {
            return *t;
        }
        let t = Ty(u16::try_from(types.len()).expect("fewer than 65535 types"));
        types.push(TypeInfo {
            name: name.into(),
            kind,
            parent: None,
            children: Vec::new(),
        });
        by_name.insert(name.into(), t);
        t
    };
    for p in &raw.primitives {
        add(p, Kind::Primitive, &mut types);
    }
    for r in &raw.resources {
        add(r, Kind::Resource, &mut types);
    }
    let mut ctx_names: Vec<&String> = raw.contexts.keys().collect();
    ctx_names.sort();
    for c in &ctx_names {
        let kind = if *c == "Resource" || *c == "DomainResource" {
            Kind::Abstract
        } else {
            Kind::Complex
        };
        add(c, kind, &mut types);
    }
    let resource = add("Resource", Kind::Abstract, &mut types);
    let domain_resource = add("DomainResource", Kind::Abstract, &mut types);

    let mut names: HashMap<Box<str>, NameId> = HashMap::new();
    let mut intern = |n: &str| -> NameId {
        let next = NameId(u32::try_from(names.len()).expect("few names"));
        *names.entry(n.into()).or_insert(next)
    };
    for c in &ctx_names {
        let owner = by_name[c.as_str()];
        let elems = &raw.contexts[c.as_str()];
        let resolve = |t: &str| -> Ty {
            let t = t.strip_prefix('@').unwrap_or(t);
            by_name.get(t).copied().unwrap_or(Ty::UNKNOWN)
        };
        let mut groups: HashMap<&str, Vec<Child>> = HashMap::new();
        let mut choice: HashMap<&str, Vec<Child>> = HashMap::new();
        for (key, (t, _, _)) in elems {
            let ty = resolve(t);
            groups.entry(key.as_str()).or_default().push(Child {
                key: key.as_str().into(),
                ty,
            });
            if let Some(base) = choice_base(key, t) {
                choice.entry(base).or_default().push(Child {
                    key: key.as_str().into(),
                    ty,
                });
            }
        }
        for (base, variants) in choice {
            if variants.len() >= 2 && !groups.contains_key(base) {
                groups.insert(base, variants);
            }
        }
        let mut children: Vec<(NameId, Box<[Child]>)> = groups
            .into_iter()
            .map(|(n, mut v)| {
                v.sort_by(|a, b| a.key.cmp(&b.key));
                (intern(n), v.into_boxed_slice())
            })
            .collect();
        children.sort_by_key(|(n, _)| *n);
        types[usize::from(owner.0)].children = children;
    }
    for (sub, sup) in SUBTYPES {
        if let (Some(a), Some(b)) = (by_name.get(sub), by_name.get(sup)) {
            types[usize::from(a.0)].parent = Some(*b);
        }
    }
    for r in &raw.resources {
        let t = by_name[r.as_str()];
        types[usize::from(t.0)].parent = Some(if PLAIN_RESOURCES.contains(&r.as_str()) {
            resource
        } else {
            domain_resource
        });
    }
    let extension = by_name.get("Extension").copied().unwrap_or(Ty::UNKNOWN);
    Model {
        types,
        by_name,
        names,
        resource,
        domain_resource,
        extension,
    }
}

/// For a key like `valueQuantity` of type `Quantity`, the base `value`.
fn choice_base<'k>(key: &'k str, ty: &str) -> Option<&'k str> {
    if ty.starts_with('@') || ty.is_empty() {
        return None;
    }
    let base_len = key.len().checked_sub(ty.len())?;
    if base_len == 0 || !key.is_char_boundary(base_len) {
        return None;
    }
    let (base, suffix) = key.split_at(base_len);
    let mut t = ty.chars();
    let mut s = suffix.chars();
    let first_ok = match (t.next(), s.next()) {
        (Some(a), Some(b)) => a.to_ascii_uppercase() == b,
        _ => false,
    };
    (first_ok && t.eq(s)).then_some(base)
}

impl Model {
    /// The keys an element name reads on a node of type `ty`.
    pub(crate) fn children(&self, ty: Ty, name: NameId) -> &[Child] {
        let Some(info) = self.types.get(usize::from(ty.0)) else {
            return &[];
        };
        match info.children.binary_search_by_key(&name, |(n, _)| *n) {
            Ok(i) => &info.children[i].1,
            Err(_) => &[],
        }
    }

    /// Whether nodes of this type are described by the model (so their keys are known).
    pub(crate) fn is_known(&self, ty: Ty) -> bool {
        usize::from(ty.0) < self.types.len()
    }

    /// The interned id of an element name, if any type has such an element.
    pub(crate) fn name_id(&self, name: &str) -> Option<NameId> {
        self.names.get(name).copied()
    }

    /// The concrete resource type named by `resourceType`, if it is an R4 resource.
    pub(crate) fn resource_type(&self, name: &str) -> Option<Ty> {
        self.by_name.get(name).copied().filter(|t| t.is_resource())
    }

    /// Every concrete R4 resource type name.
    pub(crate) fn resource_names(&self) -> impl Iterator<Item = &str> {
        self.types
            .iter()
            .filter(|t| t.kind == Kind::Resource)
            .map(|t| &*t.name)
    }
}

/// Whether `name` is a concrete R4 resource type (case-sensitive).
pub fn is_resource_type(name: &str) -> bool {
    MODEL.resource_type(name).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_base_recognises_variants() {
        assert_eq!(choice_base("valueQuantity", "Quantity"), Some("value"));
        assert_eq!(
            choice_base("valueBase64Binary", "base64Binary"),
            Some("value")
        );
        assert_eq!(choice_base("status", "code"), None);
        assert_eq!(choice_base("component", "@Observation.component"), None);
    }

    #[test]
    fn observation_value_is_a_choice() {
        let obs = Ty::named("Observation").unwrap();
        let value = MODEL.name_id("value").unwrap();
        let keys: Vec<&str> = MODEL.children(obs, value).iter().map(|c| &*c.key).collect();
        assert!(keys.contains(&"valueQuantity"));
        assert!(keys.contains(&"valueString"));
        let birth = MODEL.name_id("birthDate").unwrap();
        let patient = Ty::named("Patient").unwrap();
        assert_eq!(MODEL.children(patient, birth).len(), 1);
    }

    #[test]
    fn subtypes() {
        let t = |n| Ty::named(n).unwrap();
        assert!(t("Age").is_a(t("Quantity")));
        assert!(t("code").is_a(t("string")));
        assert!(t("Patient").is_a(t("DomainResource")));
        assert!(t("Patient").is_a(t("Resource")));
        assert!(t("Bundle").is_a(t("Resource")));
        assert!(!t("Bundle").is_a(t("DomainResource")));
        assert!(!t("Quantity").is_a(t("Age")));
        assert!(is_resource_type("Observation"));
        assert!(!is_resource_type("Quantity"));
        assert_eq!(MODEL.resource_names().count(), 146);
    }
}
