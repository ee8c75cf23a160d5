//! The official R4 SearchParameter definitions (`fhir-profiles/search-parameters.json`),
//! loaded and compiled once: per resource type, every parameter that applies to it
//! (including the `Resource`/`DomainResource` ones such as `_id` and `_lastUpdated`) with
//! its expression parsed and pruned to the union branches that can match that type.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde::Deserialize;

use crate::eval::Expression;
use crate::model::{Ty, MODEL};
use crate::parser::Expr;

const BUNDLE_JSON: &str = include_str!("../../fhir-profiles/search-parameters.json");

/// The type of a search parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ParamType {
    /// `number`
    Number,
    /// `date`
    Date,
    /// `string`
    String,
    /// `token`
    Token,
    /// `reference`
    Reference,
    /// `composite`
    Composite,
    /// `quantity`
    Quantity,
    /// `uri`
    Uri,
    /// `special` (only `Location.near` in R4; not extracted)
    Special,
}

impl ParamType {
    /// The FHIR code (`token`, `date`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::Number => "number",
            ParamType::Date => "date",
            ParamType::String => "string",
            ParamType::Token => "token",
            ParamType::Reference => "reference",
            ParamType::Composite => "composite",
            ParamType::Quantity => "quantity",
            ParamType::Uri => "uri",
            ParamType::Special => "special",
        }
    }

    /// Reads a FHIR search parameter type code.
    pub fn from_code(code: &str) -> Option<ParamType> {
        Some(match code {
            "number" => ParamType::Number,
            "date" => ParamType::Date,
            "string" => ParamType::String,
            "token" => ParamType::Token,
            "reference" => ParamType::Reference,
            "composite" => ParamType::Composite,
            "quantity" => ParamType::Quantity,
            "uri" => ParamType::Uri,
            "special" => ParamType::Special,
            _ => return None,
        })
    }
}

/// One SearchParameter definition.
#[derive(Debug)]
pub struct SearchParameterDef {
    /// Resource id, e.g. `Observation-code-value-quantity` or `clinical-code`.
    pub id: String,
    /// Canonical URL.
    pub url: String,
    /// Name.
    pub name: String,
    /// The code used in search URLs (`code`, `_lastUpdated`).
    pub code: String,
    /// The resource types it applies to (`Resource` and `DomainResource` included as written).
    pub base: Vec<String>,
    /// Parameter type.
    pub param_type: ParamType,
    /// The FHIRPath expression as written (absent for `_text`, `_content`, `_query`).
    pub expression: Option<String>,
    /// For reference parameters: the resource types a reference may point to.
    pub target: Vec<String>,
    /// For composite parameters: the components in order.
    pub components: Vec<ComponentDef>,
    /// Allowed comparators for ordered types (`eq`, `ne`, `gt`, …), as published.
    pub comparators: Vec<String>,
    /// Whether several values may be OR-ed with commas, as published.
    pub multiple_or: Option<bool>,
    /// `normal`, `phonetic`, `nearby`, `distance` or `other`.
    pub xpath_usage: Option<String>,
    /// Human description.
    pub description: String,
}

/// One component of a composite search parameter.
#[derive(Debug)]
pub struct ComponentDef {
    /// Canonical URL of the component's own SearchParameter.
    pub definition: String,
    /// Code of that SearchParameter (`code`, `value-quantity`).
    pub code: String,
    /// Its type.
    pub param_type: ParamType,
    /// Expression relative to each item the composite's expression selects.
    pub expression: String,
}

/// A parameter compiled for one resource type.
pub(crate) struct CompiledParam {
    pub(crate) def: usize,
    /// `None` when the parameter has no expression or none of its branches fits the type.
    pub(crate) expr: Option<Expression>,
    pub(crate) components: Vec<Expression>,
}

pub(crate) struct TypeParams {
    pub(crate) params: Vec<CompiledParam>,
    by_code: HashMap<String, usize>,
}

pub(crate) struct Registry {
    pub(crate) defs: Vec<SearchParameterDef>,
    pub(crate) by_type: HashMap<String, TypeParams>,
    /// Parameters whose expression could not be parsed: (id, reason).
    pub(crate) unsupported: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct RawBundle {
    entry: Vec<RawEntry>,
}

#[derive(Deserialize)]
struct RawEntry {
    resource: RawParam,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawParam {
    id: String,
    url: String,
    name: String,
    code: String,
    base: Vec<String>,
    #[serde(rename = "type")]
    kind: String,
    expression: Option<String>,
    #[serde(default)]
    target: Vec<String>,
    #[serde(default)]
    component: Vec<RawComponent>,
    #[serde(default)]
    comparator: Vec<String>,
    multiple_or: Option<bool>,
    xpath_usage: Option<String>,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
struct RawComponent {
    definition: String,
    expression: String,
}

pub(crate) static REGISTRY: LazyLock<Registry> = LazyLock::new(build);

fn build() -> Registry {
    // The bundle is part of the build; a parse failure is a defect every test catches.
    let raw: RawBundle = serde_json::from_str(BUNDLE_JSON)
        .unwrap_or_else(|e| panic!("fhir-profiles/search-parameters.json is corrupt: {e}"));
    let raw: Vec<RawParam> = raw.entry.into_iter().map(|e| e.resource).collect();
    let by_url: HashMap<&str, &RawParam> = raw.iter().map(|p| (p.url.as_str(), p)).collect();
    let mut defs = Vec::with_capacity(raw.len());
    for p in &raw {
        let components = p
            .component
            .iter()
            .map(|c| {
                let target = by_url.get(c.definition.as_str());
                ComponentDef {
                    definition: c.definition.clone(),
                    code: target.map(|t| t.code.clone()).unwrap_or_default(),
                    param_type: target
                        .and_then(|t| ParamType::from_code(&t.kind))
                        .unwrap_or(ParamType::Special),
                    expression: c.expression.clone(),
                }
            })
            .collect();
        defs.push(SearchParameterDef {
            id: p.id.clone(),
            url: p.url.clone(),
            name: p.name.clone(),
            code: p.code.clone(),
            base: p.base.clone(),
            param_type: ParamType::from_code(&p.kind).unwrap_or(ParamType::Special),
            expression: p.expression.clone(),
            target: p.target.clone(),
            components,
            comparators: p.comparator.clone(),
            multiple_or: p.multiple_or,
            xpath_usage: p.xpath_usage.clone(),
            description: p.description.clone(),
        });
    }

    // Parse every expression once.
    let mut unsupported = Vec::new();
    let mut parsed: Vec<Option<Expression>> = Vec::with_capacity(defs.len());
    let mut parsed_components: Vec<Option<Vec<Expression>>> = Vec::with_capacity(defs.len());
    for d in &defs {
        let e = match d.expression.as_deref().map(Expression::parse) {
            Some(Ok(e)) => Some(e),
            Some(Err(err)) => {
                unsupported.push((d.id.clone(), err.to_string()));
                None
            }
            None => None,
        };
        parsed.push(e);
        let comps: Result<Vec<Expression>, _> = d
            .components
            .iter()
            .map(|c| Expression::parse(&c.expression))
            .collect();
        parsed_components.push(match comps {
            Ok(c) => Some(c),
            Err(err) => {
                unsupported.push((d.id.clone(), format!("component: {err}")));
                None
            }
        });
    }

    let mut by_base: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, d) in defs.iter().enumerate() {
        for b in &d.base {
            by_base.entry(b.as_str()).or_default().push(i);
        }
    }
    let mut by_type = HashMap::new();
    let mut type_names: Vec<&str> = MODEL.resource_names().collect();
    type_names.push("Resource");
    type_names.push("DomainResource");
    for rt in type_names {
        let Some(ty) = Ty::named(rt) else { continue };
        let mut indices: Vec<usize> = Vec::new();
        for base in [rt, "Resource", "DomainResource"] {
            let applies = base == rt || ty.is_a(Ty::named(base).unwrap_or(Ty::UNKNOWN));
            if applies {
                indices.extend(by_base.get(base).into_iter().flatten());
            }
        }
        indices.sort_by(|a, b| defs[*a].code.cmp(&defs[*b].code));
        indices.dedup();
        let mut params = Vec::with_capacity(indices.len());
        let mut by_code = HashMap::with_capacity(indices.len());
        for i in indices {
            let expr = parsed[i].as_ref().and_then(|e| specialise(e, ty));
            let components = parsed_components[i].clone().unwrap_or_default();
            by_code.insert(defs[i].code.clone(), params.len());
            params.push(CompiledParam {
                def: i,
                expr,
                components,
            });
        }
        by_type.insert(rt.to_owned(), TypeParams { params, by_code });
    }
    Registry {
        defs,
        by_type,
        unsupported,
    }
}

/// Which types an expression's leftmost name admits.
enum Root {
    Any,
    Type(Ty),
    Never,
}

fn root(e: &Expr) -> Root {
    match e {
        Expr::Ident(n) if n.text.starts_with(|c: char| c.is_ascii_uppercase()) => {
            n.ty.map_or(Root::Never, Root::Type)
        }
        Expr::Member(inner, _) | Expr::Index(inner, _) | Expr::Call(Some(inner), _, _) => {
            root(inner)
        }
        _ => Root::Any,
    }
}

fn fits(e: &Expr, ty: Ty) -> bool {
    match root(e) {
        Root::Any => true,
        Root::Type(t) => ty.is_a(t),
        Root::Never => false,
    }
}

/// Drops the union branches that cannot select anything on a resource of type `ty`
/// (`AllergyIntolerance.code | Condition.code | …` keeps only `Condition.code` for a
/// Condition); `None` when nothing remains.
fn specialise(e: &Expression, ty: Ty) -> Option<Expression> {
    let kept = match &e.expr {
        Expr::Union(branches) => {
            let mut kept: Vec<Expr> = branches.iter().filter(|b| fits(b, ty)).cloned().collect();
            match kept.len() {
                0 => return None,
                1 => kept.pop()?,
                _ => Expr::Union(kept),
            }
        }
        other if fits(other, ty) => other.clone(),
        _ => return None,
    };
    Some(e.with_expr(kept))
}

impl Registry {
    pub(crate) fn params(&self, resource_type: &str) -> &[CompiledParam] {
        self.by_type
            .get(resource_type)
            .map_or(&[], |t| t.params.as_slice())
    }

    pub(crate) fn def(&self, p: &CompiledParam) -> &SearchParameterDef {
        &self.defs[p.def]
    }
}

/// Every search parameter that applies to `resource_type` (its own and the
/// `Resource`/`DomainResource` ones), sorted by code. Empty for unknown types;
/// `Resource` and `DomainResource` give just the common parameters.
pub fn parameters_for(resource_type: &str) -> impl Iterator<Item = &'static SearchParameterDef> {
    let reg: &'static Registry = &REGISTRY;
    reg.params(resource_type).iter().map(move |p| reg.def(p))
}

/// The parameter `code` of `resource_type` (e.g. (`Observation`, `value-quantity`) or
/// (`Patient`, `_lastUpdated`)).
pub fn parameter(resource_type: &str, code: &str) -> Option<&'static SearchParameterDef> {
    let reg: &'static Registry = &REGISTRY;
    let t = reg.by_type.get(resource_type)?;
    let i = *t.by_code.get(code)?;
    Some(reg.def(&t.params[i]))
}

/// Every SearchParameter of the bundle, in bundle order.
pub fn all_parameters() -> &'static [SearchParameterDef] {
    &REGISTRY.defs
}

/// Parameters whose expression (or a component's) is outside the supported subset, with
/// the reason; they produce no index entries. Empty for the R4 bundle.
pub fn unsupported_parameters() -> &'static [(String, String)] {
    &REGISTRY.unsupported
}
