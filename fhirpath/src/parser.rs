//! Parser for the FHIRPath subset: precedence climbing over the tokens of [`crate::lexer`],
//! producing the [`Expr`] tree the evaluator walks. Names and types are resolved against
//! the R4 model here, once, so evaluation never looks at strings it can avoid.

use crate::lexer::{tokenize, Tok, Token};
use crate::model::{NameId, Ty, MODEL};
use crate::ParseError;

/// A parsed expression.
#[derive(Debug, Clone)]
pub(crate) enum Expr {
    /// `$this`: the current focus.
    This,
    /// `%resource`, `%context`, …
    Env(EnvVar),
    /// A literal value.
    Literal(Literal),
    /// `{}`.
    Empty,
    /// A bare identifier: an element of `$this`, or, when capitalised, a type filter
    /// (`Observation` at the root keeps the focus if it is an Observation).
    Ident(Name),
    /// `input.name`.
    Member(Box<Expr>, Name),
    /// `input[index]`.
    Index(Box<Expr>, Box<Expr>),
    /// A function call; `input` `None` means `$this`.
    Call(Option<Box<Expr>>, Func, Vec<Expr>),
    /// `a | b | …`, flattened.
    Union(Vec<Expr>),
    /// A binary operator other than `|`.
    Binary(BinOp, Box<Expr>, Box<Expr>),
}

/// An element name, interned when the model knows it.
#[derive(Debug, Clone)]
pub(crate) struct Name {
    pub(crate) text: Box<str>,
    pub(crate) id: Option<NameId>,
    /// For capitalised names: the type they filter on.
    pub(crate) ty: Option<Ty>,
}

/// Environment variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EnvVar {
    Resource,
    Context,
    Ucum,
    Sct,
    Loinc,
}

/// Literal values.
#[derive(Debug, Clone)]
pub(crate) enum Literal {
    Bool(bool),
    Str(Box<str>),
    Int(i64),
    Decimal(Box<str>),
}

/// Binary operators the evaluator supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    And,
    Or,
    Xor,
    Implies,
    Eq,
    Ne,
    Equiv,
    NotEquiv,
}

/// Functions the evaluator supports.
#[derive(Debug, Clone)]
pub(crate) enum Func {
    Where,
    Select,
    All,
    Exists,
    Empty,
    First,
    Last,
    Tail,
    Not,
    Count,
    HasValue,
    Resolve,
    Extension,
    As(TypeSpec),
    Is(TypeSpec),
    OfType(TypeSpec),
}

/// A type named in `is`, `as` or `ofType`, resolved against the model.
#[derive(Debug, Clone)]
pub(crate) struct TypeSpec {
    /// The name as written, without a `FHIR.`/`System.` qualifier.
    pub(crate) name: Box<str>,
    /// The model types it accepts (with their specialisations).
    pub(crate) tys: Vec<Ty>,
    /// Accepts Boolean literals and results.
    pub(crate) boolean: bool,
    /// Accepts string literals.
    pub(crate) string: bool,
    /// Accepts integer/decimal literals.
    pub(crate) number: bool,
}

impl TypeSpec {
    fn resolve(qualifier: Option<&str>, name: &str, pos: usize) -> Result<TypeSpec, ParseError> {
        let named = |n: &str| Ty::named(n).into_iter().collect::<Vec<_>>();
        let system = qualifier != Some("FHIR");
        let (tys, boolean, string, number) = match name {
            "String" if system => (
                named("string").into_iter().chain(named("uri")).collect(),
                false,
                true,
                false,
            ),
            "Boolean" if system => (named("boolean"), true, false, false),
            "Integer" if system => (named("integer"), false, false, true),
            "Decimal" if system => (named("decimal"), false, false, true),
            "Date" if system => (named("date"), false, false, false),
            "DateTime" if system => (
                named("dateTime")
                    .into_iter()
                    .chain(named("instant"))
                    .collect(),
                false,
                false,
                false,
            ),
            "Time" if system => (named("time"), false, false, false),
            "string" => (named("string"), false, true, false),
            "boolean" => (named("boolean"), true, false, false),
            "integer" | "decimal" => (named(name), false, false, true),
            _ => {
                let tys = named(name);
                if tys.is_empty() {
                    return Err(ParseError::new(format!("unknown type {name}"), pos));
                }
                (tys, false, false, false)
            }
        };
        Ok(TypeSpec {
            name: name.into(),
            tys,
            boolean,
            string,
            number,
        })
    }
}

/// Deepest expression tree accepted: nested parentheses and calls, and chains of members,
/// indexers and operators all add a level. Parsing, evaluating and dropping the tree recurse once
/// per level, so an expression from a request must not be able to nest without bound.
pub(crate) const MAX_NESTING: usize = 128;

/// Parses a whole expression.
pub(crate) fn parse(src: &str) -> Result<Expr, ParseError> {
    let tokens = tokenize(src)?;
    let mut p = Parser {
        tokens,
        at: 0,
        depth: 0,
    };
    let e = p.expr(0)?;
    match p.peek() {
        Tok::End => Ok(e),
        other => Err(ParseError::new(
            format!("unexpected {} after the expression", describe(other)),
            p.pos(),
        )),
    }
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    /// Levels of the tree above the term being parsed.
    depth: usize,
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident { name, .. } => format!("identifier {name}"),
        Tok::Str(s) => format!("string '{s}'"),
        Tok::Number(n) => format!("number {n}"),
        Tok::Env(n) => format!("%{n}"),
        Tok::Var(n) => format!("${n}"),
        Tok::DateTime(d) => format!("@{d}"),
        Tok::Sym(s) => format!("'{s}'"),
        Tok::End => "end of expression".to_owned(),
    }
}

/// Infix operators: (operator text, binding power). Higher binds tighter.
fn infix(t: &Tok) -> Option<(&str, u8)> {
    let op = match t {
        Tok::Sym(s) => *s,
        Tok::Ident {
            name,
            quoted: false,
        } => name.as_str(),
        _ => return None,
    };
    let bp = match op {
        "implies" => 1,
        "or" | "xor" => 2,
        "and" => 3,
        "in" | "contains" => 4,
        "=" | "~" | "!=" | "!~" => 5,
        "<" | ">" | "<=" | ">=" => 6,
        "|" => 7,
        "is" | "as" => 8,
        "+" | "-" | "&" => 9,
        "*" | "/" | "div" | "mod" => 10,
        _ => return None,
    };
    Some((op, bp))
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.tokens[self.at].kind
    }

    fn pos(&self) -> usize {
        self.tokens[self.at].pos
    }

    fn next(&mut self) -> Tok {
        let t = self.tokens[self.at].kind.clone();
        if self.at + 1 < self.tokens.len() {
            self.at += 1;
        }
        t
    }

    fn expect(&mut self, sym: &'static str) -> Result<(), ParseError> {
        if *self.peek() == Tok::Sym(sym) {
            self.next();
            Ok(())
        } else {
            Err(ParseError::new(
                format!("expected '{sym}', found {}", describe(self.peek())),
                self.pos(),
            ))
        }
    }

    /// Adds `n` levels of nesting, refusing the expression past [`MAX_NESTING`].
    fn descend(&mut self, n: usize) -> Result<(), ParseError> {
        self.depth += n;
        if self.depth > MAX_NESTING {
            Err(ParseError::new(
                format!("the expression nests more than {MAX_NESTING} levels deep"),
                self.pos(),
            ))
        } else {
            Ok(())
        }
    }

    fn expr(&mut self, min_bp: u8) -> Result<Expr, ParseError> {
        let outer = self.depth;
        let result = self.expr_inner(min_bp);
        self.depth = outer;
        result
    }

    fn expr_inner(&mut self, min_bp: u8) -> Result<Expr, ParseError> {
        self.descend(1)?;
        let mut lhs = self.postfix()?;
        loop {
            let pos = self.pos();
            let Some((op, bp)) = infix(self.peek()) else {
                break;
            };
            if bp < min_bp {
                break;
            }
            let op = op.to_owned();
            self.next();
            // A union is one flat list; every other operator nests the tree one level deeper.
            if op != "|" {
                self.descend(1)?;
            }
            if op == "is" || op == "as" {
                let spec = self.type_spec()?;
                let f = if op == "is" {
                    Func::Is(spec)
                } else {
                    Func::As(spec)
                };
                lhs = Expr::Call(Some(Box::new(lhs)), f, Vec::new());
                continue;
            }
            let rhs = self.expr(bp + 1)?;
            lhs = match op.as_str() {
                "|" => match lhs {
                    Expr::Union(mut v) => {
                        v.push(rhs);
                        Expr::Union(v)
                    }
                    other => Expr::Union(vec![other, rhs]),
                },
                _ => {
                    let b = match op.as_str() {
                        "and" => BinOp::And,
                        "or" => BinOp::Or,
                        "xor" => BinOp::Xor,
                        "implies" => BinOp::Implies,
                        "=" => BinOp::Eq,
                        "!=" => BinOp::Ne,
                        "~" => BinOp::Equiv,
                        "!~" => BinOp::NotEquiv,
                        _ => {
                            return Err(ParseError::new(
                                format!("operator '{op}' is outside the supported subset"),
                                pos,
                            ))
                        }
                    };
                    Expr::Binary(b, Box::new(lhs), Box::new(rhs))
                }
            };
        }
        Ok(lhs)
    }

    /// A term followed by `.member`, `.function(...)` and `[index]`.
    fn postfix(&mut self) -> Result<Expr, ParseError> {
        let mut e = self.term()?;
        loop {
            match self.peek() {
                Tok::Sym(".") => {
                    self.descend(1)?;
                    self.next();
                    let pos = self.pos();
                    let name = match self.next() {
                        Tok::Ident { name, .. } => name,
                        other => {
                            return Err(ParseError::new(
                                format!("expected a name after '.', found {}", describe(&other)),
                                pos,
                            ))
                        }
                    };
                    if *self.peek() == Tok::Sym("(") {
                        e = self.call(Some(e), &name, pos)?;
                    } else {
                        e = Expr::Member(Box::new(e), make_name(name));
                    }
                }
                Tok::Sym("[") => {
                    self.descend(1)?;
                    self.next();
                    let idx = self.expr(0)?;
                    self.expect("]")?;
                    e = Expr::Index(Box::new(e), Box::new(idx));
                }
                _ => return Ok(e),
            }
        }
    }

    fn term(&mut self) -> Result<Expr, ParseError> {
        let pos = self.pos();
        match self.next() {
            Tok::Sym("(") => {
                let e = self.expr(0)?;
                self.expect(")")?;
                Ok(e)
            }
            Tok::Sym("{") => {
                self.expect("}")?;
                Ok(Expr::Empty)
            }
            Tok::Sym("-") => match self.next() {
                Tok::Number(n) => number(&format!("-{n}"), pos),
                _ => Err(ParseError::new(
                    "unary minus is only supported on numbers",
                    pos,
                )),
            },
            Tok::Str(s) => Ok(Expr::Literal(Literal::Str(s.into()))),
            Tok::Number(n) => number(&n, pos),
            Tok::Env(name) => {
                let v = match name.as_str() {
                    "resource" | "rootResource" => EnvVar::Resource,
                    "context" => EnvVar::Context,
                    "ucum" => EnvVar::Ucum,
                    "sct" => EnvVar::Sct,
                    "loinc" => EnvVar::Loinc,
                    _ => {
                        return Err(ParseError::new(
                            format!("unknown environment variable %{name}"),
                            pos,
                        ))
                    }
                };
                Ok(Expr::Env(v))
            }
            Tok::Var(v) if v == "this" => Ok(Expr::This),
            Tok::Var(v) => Err(ParseError::new(
                format!("${v} is outside the supported subset"),
                pos,
            )),
            Tok::DateTime(d) => Err(ParseError::new(
                format!("date/time literal @{d} is outside the supported subset"),
                pos,
            )),
            Tok::Ident { name, quoted } => {
                if *self.peek() == Tok::Sym("(") {
                    return self.call(None, &name, pos);
                }
                if !quoted {
                    match name.as_str() {
                        "true" => return Ok(Expr::Literal(Literal::Bool(true))),
                        "false" => return Ok(Expr::Literal(Literal::Bool(false))),
                        _ => {}
                    }
                }
                Ok(Expr::Ident(make_name(name)))
            }
            other => Err(ParseError::new(
                format!("unexpected {}", describe(&other)),
                pos,
            )),
        }
    }

    /// A type specifier: `Quantity`, `FHIR.Quantity`, `System.String`.
    fn type_spec(&mut self) -> Result<TypeSpec, ParseError> {
        let pos = self.pos();
        let Tok::Ident { name: first, .. } = self.next() else {
            return Err(ParseError::new("expected a type name", pos));
        };
        if *self.peek() == Tok::Sym(".") && (first == "FHIR" || first == "System") {
            self.next();
            let pos2 = self.pos();
            let Tok::Ident { name, .. } = self.next() else {
                return Err(ParseError::new("expected a type name", pos2));
            };
            return TypeSpec::resolve(Some(&first), &name, pos2);
        }
        TypeSpec::resolve(None, &first, pos)
    }

    /// A function call whose name has been read and `(` is next.
    fn call(&mut self, input: Option<Expr>, name: &str, pos: usize) -> Result<Expr, ParseError> {
        self.expect("(")?;
        let input = input.map(Box::new);
        let typed = |f: fn(TypeSpec) -> Func, p: &mut Parser| -> Result<Func, ParseError> {
            let spec = p.type_spec()?;
            p.expect(")")?;
            Ok(f(spec))
        };
        match name {
            "as" => return Ok(Expr::Call(input, typed(Func::As, self)?, Vec::new())),
            "is" => return Ok(Expr::Call(input, typed(Func::Is, self)?, Vec::new())),
            "ofType" => return Ok(Expr::Call(input, typed(Func::OfType, self)?, Vec::new())),
            _ => {}
        }
        let mut args = Vec::new();
        if *self.peek() != Tok::Sym(")") {
            loop {
                args.push(self.expr(0)?);
                if *self.peek() == Tok::Sym(",") {
                    self.next();
                } else {
                    break;
                }
            }
        }
        self.expect(")")?;
        let (func, arity): (Func, &[usize]) = match name {
            "where" => (Func::Where, &[1]),
            "select" => (Func::Select, &[1]),
            "all" => (Func::All, &[1]),
            "exists" => (Func::Exists, &[0, 1]),
            "empty" => (Func::Empty, &[0]),
            "first" => (Func::First, &[0]),
            "last" => (Func::Last, &[0]),
            "tail" => (Func::Tail, &[0]),
            "not" => (Func::Not, &[0]),
            "count" => (Func::Count, &[0]),
            "hasValue" => (Func::HasValue, &[0]),
            "resolve" => (Func::Resolve, &[0]),
            "extension" => (Func::Extension, &[1]),
            _ => {
                return Err(ParseError::new(
                    format!("function {name}() is outside the supported subset"),
                    pos,
                ))
            }
        };
        if !arity.contains(&args.len()) {
            return Err(ParseError::new(
                format!("{name}() takes {arity:?} arguments, not {}", args.len()),
                pos,
            ));
        }
        if matches!(func, Func::Extension) && !matches!(args[0], Expr::Literal(Literal::Str(_))) {
            return Err(ParseError::new("extension() takes a string literal", pos));
        }
        Ok(Expr::Call(input, func, args))
    }
}

fn make_name(text: String) -> Name {
    let starts_upper = text.chars().next().is_some_and(|c| c.is_ascii_uppercase());
    Name {
        id: MODEL.name_id(&text),
        ty: if starts_upper { Ty::named(&text) } else { None },
        text: text.into(),
    }
}

fn number(text: &str, pos: usize) -> Result<Expr, ParseError> {
    if text.contains('.') {
        return Ok(Expr::Literal(Literal::Decimal(text.into())));
    }
    text.parse::<i64>()
        .map(|i| Expr::Literal(Literal::Int(i)))
        .map_err(|_| ParseError::new("integer literal out of range", pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_expressions_are_refused_not_recursed_into() {
        for src in [
            format!("{}a{}", "(".repeat(100_000), ")".repeat(100_000)),
            format!("a{}", ".b".repeat(100_000)),
            format!("a{}", "[0]".repeat(100_000)),
            format!("a{}", " and a".repeat(100_000)),
            format!("{}a{}", "where(".repeat(50_000), ")".repeat(50_000)),
        ] {
            let err = parse(&src).expect_err("refused");
            assert!(err.message.contains("nests more than"), "{}", err.message);
        }
        // Long flat unions and moderately deep expressions still parse.
        assert!(parse(&vec!["a.b"; 500].join(" | ")).is_ok());
        assert!(parse(&format!("{}a{}", "(".repeat(60), ")".repeat(60))).is_ok());
    }

    #[test]
    fn precedence() {
        let e = parse("A.b as Quantity | A.c").unwrap();
        let Expr::Union(v) = e else {
            panic!("union expected")
        };
        assert_eq!(v.len(), 2);
        assert!(matches!(v[0], Expr::Call(Some(_), Func::As(_), _)));

        let e = parse("a.exists() and a != false").unwrap();
        assert!(matches!(e, Expr::Binary(BinOp::And, _, _)));

        let e = parse("x.where(resolve() is Patient)").unwrap();
        let Expr::Call(Some(_), Func::Where, args) = e else {
            panic!("where expected")
        };
        assert!(matches!(args[0], Expr::Call(Some(_), Func::Is(_), _)));

        // Keywords are names after a dot.
        assert!(parse("ValueSet.expansion.contains.code").is_ok());
        assert!(parse("Bundle.entry[0].resource").is_ok());
        assert!(parse("x.as(FHIR.Quantity) | y.ofType(System.String)").is_ok());
    }

    #[test]
    fn errors() {
        assert!(parse("a.substring(1)").is_err());
        assert!(parse("a.as(NoSuchType)").is_err());
        assert!(parse("a +").is_err());
        assert!(parse("(a").is_err());
        assert!(parse("a b").is_err());
        assert!(parse("a < b").is_err());
        assert!(parse("%nope").is_err());
    }
}
