//! Tokenizer for FHIRPath expressions: identifiers (plain and back-quoted), string and
//! number literals, `%` environment variables, `$this`-style variables and operators.

use crate::ParseError;

/// One token with the byte offset where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub(crate) kind: Tok,
    pub(crate) pos: usize,
}

/// The kinds of token.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// A plain or back-quoted identifier; `quoted` identifiers are never keywords.
    Ident { name: String, quoted: bool },
    /// A string literal with escapes resolved.
    Str(String),
    /// A number literal as written.
    Number(String),
    /// `%name` or `%'name'`.
    Env(String),
    /// `$this`, `$index`, `$total`.
    Var(String),
    /// `@2020-01-01`-style date/time literal as written (after the `@`).
    DateTime(String),
    /// Punctuation or an operator symbol.
    Sym(&'static str),
    /// End of input.
    End,
}

const SYMBOLS: [&str; 21] = [
    "<=", ">=", "!=", "!~", ".", ",", "(", ")", "[", "]", "{", "}", "|", "=", "~", "<", ">", "+",
    "-", "*", "/",
];

/// Splits `src` into tokens, ending with [`Tok::End`].
pub(crate) fn tokenize(src: &str) -> Result<Vec<Token>, ParseError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if src[i..].starts_with("//") {
            i = src[i..].find('\n').map_or(bytes.len(), |n| i + n);
            continue;
        }
        if src[i..].starts_with("/*") {
            let end = src[i + 2..]
                .find("*/")
                .ok_or_else(|| ParseError::new("unterminated comment", i))?;
            i += end + 4;
            continue;
        }
        let start = i;
        let kind = if c.is_ascii_alphabetic() || c == b'_' {
            i = ident_end(bytes, i);
            Tok::Ident {
                name: src[start..i].to_owned(),
                quoted: false,
            }
        } else if c == b'`' {
            let (s, next) = quoted(src, i, b'`')?;
            i = next;
            Tok::Ident {
                name: s,
                quoted: true,
            }
        } else if c == b'\'' {
            let (s, next) = quoted(src, i, b'\'')?;
            i = next;
            Tok::Str(s)
        } else if c.is_ascii_digit() {
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i + 1 < bytes.len() && bytes[i] == b'.' && bytes[i + 1].is_ascii_digit() {
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
            }
            Tok::Number(src[start..i].to_owned())
        } else if c == b'%' {
            i += 1;
            let name = match bytes.get(i) {
                Some(b'\'') | Some(b'`') => {
                    let (s, next) = quoted(src, i, bytes[i])?;
                    i = next;
                    s
                }
                Some(b) if b.is_ascii_alphabetic() || *b == b'_' => {
                    let s = i;
                    i = ident_end(bytes, i);
                    src[s..i].to_owned()
                }
                _ => return Err(ParseError::new("expected a name after %", start)),
            };
            Tok::Env(name)
        } else if c == b'$' {
            i = ident_end(bytes, i + 1);
            if i == start + 1 {
                return Err(ParseError::new("expected a name after $", start));
            }
            Tok::Var(src[start + 1..i].to_owned())
        } else if c == b'@' {
            i += 1;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || b"-:.+TZ".contains(&bytes[i]))
            {
                i += 1;
            }
            Tok::DateTime(src[start + 1..i].to_owned())
        } else if let Some(sym) = SYMBOLS.iter().find(|s| src[i..].starts_with(**s)) {
            i += sym.len();
            Tok::Sym(sym)
        } else if c == b'&' {
            i += 1;
            Tok::Sym("&")
        } else {
            let ch = src[i..].chars().next().unwrap_or('?');
            return Err(ParseError::new(format!("unexpected character {ch:?}"), i));
        };
        out.push(Token { kind, pos: start });
    }
    out.push(Token {
        kind: Tok::End,
        pos: src.len(),
    });
    Ok(out)
}

fn ident_end(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
        i += 1;
    }
    i
}

/// Reads a literal delimited by `quote` starting at `start`; returns the unescaped text and
/// the offset after the closing quote.
fn quoted(src: &str, start: usize, quote: u8) -> Result<(String, usize), ParseError> {
    let mut out = String::new();
    let mut chars = src[start + 1..].char_indices();
    while let Some((off, ch)) = chars.next() {
        if ch == char::from(quote) {
            return Ok((out, start + 1 + off + 1));
        }
        if ch != '\\' {
            out.push(ch);
            continue;
        }
        let Some((_, esc)) = chars.next() else {
            break;
        };
        match esc {
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'f' => out.push('\u{c}'),
            'u' => {
                let hex: String = chars.by_ref().take(4).map(|(_, c)| c).collect();
                let code = u32::from_str_radix(&hex, 16)
                    .ok()
                    .and_then(char::from_u32)
                    .ok_or_else(|| ParseError::new("bad \\u escape", start + 1 + off))?;
                out.push(code);
            }
            other => out.push(other),
        }
    }
    Err(ParseError::new("unterminated literal", start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(s: &str) -> Vec<Tok> {
        tokenize(s).unwrap().into_iter().map(|t| t.kind).collect()
    }

    #[test]
    fn tokens() {
        assert_eq!(
            kinds("a.b != 'x\\'y' | %resource"),
            vec![
                Tok::Ident {
                    name: "a".into(),
                    quoted: false
                },
                Tok::Sym("."),
                Tok::Ident {
                    name: "b".into(),
                    quoted: false
                },
                Tok::Sym("!="),
                Tok::Str("x'y".into()),
                Tok::Sym("|"),
                Tok::Env("resource".into()),
                Tok::End,
            ]
        );
        assert_eq!(
            kinds("entry[0] `div` 1.5 $this"),
            vec![
                Tok::Ident {
                    name: "entry".into(),
                    quoted: false
                },
                Tok::Sym("["),
                Tok::Number("0".into()),
                Tok::Sym("]"),
                Tok::Ident {
                    name: "div".into(),
                    quoted: true
                },
                Tok::Number("1.5".into()),
                Tok::Var("this".into()),
                Tok::End,
            ]
        );
        assert!(tokenize("'open").is_err());
        assert!(tokenize("a # b").is_err());
    }
}
