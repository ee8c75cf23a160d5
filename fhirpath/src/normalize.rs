//! String normalisation for `string` search: lower case with accents removed, so that
//! `name=jose` finds `José`. Search values must go through the same function.

use std::borrow::Cow;

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// Lower-cases `s` and strips accents (compatibility decomposition, NFKD, then combining
/// marks dropped). Borrows when `s` is already lower-case ASCII.
pub fn normalize(s: &str) -> Cow<'_, str> {
    if s.is_ascii() {
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Cow::Owned(s.to_ascii_lowercase());
        }
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    for c in s.nfkd().filter(|c| !is_combining_mark(*c)) {
        out.extend(c.to_lowercase());
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds() {
        assert!(matches!(normalize("chalmers"), Cow::Borrowed(_)));
        assert_eq!(normalize("Chalmers"), "chalmers");
        assert_eq!(normalize("José Müller"), "jose muller");
        assert_eq!(normalize("ÅSTRÖM"), "astrom");
        assert_eq!(normalize("ﬁne"), "fine");
        assert_eq!(normalize("Ελένη"), "ελενη");
    }
}
