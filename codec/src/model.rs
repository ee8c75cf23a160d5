//! The compact R4 element table generated from the official StructureDefinitions
//! (`fhir-profiles/r4-model.json`, built by `tools/gen_r4_model.py`).

use std::collections::HashMap;
use std::sync::LazyLock;

use serde::Deserialize;

const MODEL_JSON: &str = include_str!("../../fhir-profiles/r4-model.json");

/// One JSON key of an element context: `[type, repeats (0/1), value-set index or -1]`.
#[derive(Debug, Deserialize)]
pub(crate) struct Child(pub(crate) String, pub(crate) u8, pub(crate) i32);

#[derive(Debug, Deserialize)]
pub(crate) struct ValueSet {
    pub(crate) url: String,
    pub(crate) codes: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Model {
    pub(crate) resources: Vec<String>,
    pub(crate) contexts: HashMap<String, HashMap<String, Child>>,
    pub(crate) valuesets: Vec<ValueSet>,
}

pub(crate) static MODEL: LazyLock<Model> = LazyLock::new(|| {
    // The file is part of the build; a parse failure is a build defect caught by every test.
    serde_json::from_str(MODEL_JSON)
        .unwrap_or_else(|e| panic!("fhir-profiles/r4-model.json is corrupt: {e}"))
});

/// Every concrete R4 resource type name, sorted.
pub fn resource_types() -> &'static [String] {
    &MODEL.resources
}

/// Whether `name` is a concrete R4 resource type (case-sensitive).
pub fn is_resource_type(name: &str) -> bool {
    MODEL
        .resources
        .binary_search_by(|r| r.as_str().cmp(name))
        .is_ok()
}

/// Whether resource or datatype `ctx` has a direct element `name` (e.g. `identifier`).
pub fn has_element(ctx: &str, name: &str) -> bool {
    MODEL
        .contexts
        .get(ctx)
        .is_some_and(|c| c.contains_key(name))
}

/// The element `name` of context `ctx`: the context of its value (a datatype such as
/// `HumanName`, or a backbone such as `Patient.contact`) and whether it repeats. `None` when
/// there is no such element.
pub fn element(ctx: &str, name: &str) -> Option<(&'static str, bool)> {
    let child = MODEL.contexts.get(ctx)?.get(name)?;
    Some((child.0.trim_start_matches('@'), child.1 == 1))
}
