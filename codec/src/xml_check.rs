//! Well-formedness of an XML body, checked before fhirbolt sees it: fhirbolt's streaming
//! deserialiser stops once it has what it needs and accepts a document whose closing tags are
//! missing. Errors carry the line and column, as JSON syntax errors do.
//!
//! It also bounds the element depth. fhirbolt's XML deserialiser recurses once per element, so
//! a 14 KB body of nested elements overflowed a worker thread's stack and aborted the whole
//! process; nothing deeper than [`MAX_DEPTH`] reaches it. The bound matches the JSON one: an
//! element level of FHIR XML is at most two levels of FHIR JSON (an object in an array), and JSON
//! is refused past 128.

use quick_xml::events::Event;
use quick_xml::Reader;

use crate::CodecError;

/// Deepest element nesting accepted in an XML body (narrative XHTML included).
pub(crate) const MAX_DEPTH: usize = 64;

/// Fails on the first syntax error, mismatched or missing end tag, or content after the root.
pub(crate) fn well_formed(bytes: &[u8]) -> Result<(), CodecError> {
    // FHIR XML is UTF-8; the XML parser behind fhirbolt panics on a namespace that is not.
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(syntax(
            bytes,
            e.valid_up_to() as u64,
            "the XML is not valid UTF-8",
        ));
    }
    let mut reader = Reader::from_reader(bytes);
    reader.config_mut().check_end_names = true;
    let mut open: Vec<Vec<u8>> = Vec::new();
    // How many of the open elements are resources (a Bundle in an entry, a contained resource).
    let mut resources = 0usize;
    let mut roots = 0usize;
    let mut buf = Vec::new();
    loop {
        let pos = reader.buffer_position();
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| syntax(bytes, reader.error_position(), &e.to_string()))?;
        match event {
            Event::Start(e) => {
                if open.is_empty() {
                    roots += 1;
                }
                open.push(e.name().as_ref().to_vec());
                if is_resource_element(e.name().as_ref()) {
                    resources += 1;
                    if resources > crate::walk::MAX_RESOURCE_DEPTH + 1 {
                        return Err(syntax(
                            bytes,
                            pos,
                            &format!(
                                "resources are nested more than {} levels deep",
                                crate::walk::MAX_RESOURCE_DEPTH
                            ),
                        ));
                    }
                }
                if open.len() > MAX_DEPTH {
                    return Err(syntax(
                        bytes,
                        pos,
                        &format!("elements are nested more than {MAX_DEPTH} levels deep"),
                    ));
                }
            }
            Event::Empty(_) if open.is_empty() => roots += 1,
            Event::End(_) => {
                let closed = open.pop();
                resources -= usize::from(closed.is_some_and(|name| is_resource_element(&name)));
            }
            Event::Text(t) if open.is_empty() && !t.iter().all(u8::is_ascii_whitespace) => {
                return Err(syntax(bytes, pos, "text outside the root element"));
            }
            Event::Eof => break,
            _ => {}
        }
        if roots > 1 {
            return Err(syntax(bytes, pos, "more than one root element"));
        }
        buf.clear();
    }
    if let Some(name) = open.last() {
        let name = String::from_utf8_lossy(name).into_owned();
        return Err(syntax(
            bytes,
            reader.buffer_position(),
            &format!("the document ends before <{name}> is closed"),
        ));
    }
    if roots == 0 {
        return Err(syntax(bytes, 0, "the document has no root element"));
    }
    Ok(())
}

/// Whether an element's local name is an R4 resource type (`Bundle`, `fhir:Patient`, …).
fn is_resource_element(name: &[u8]) -> bool {
    let local = name.rsplit(|b| *b == b':').next().unwrap_or(name);
    std::str::from_utf8(local).is_ok_and(crate::is_resource_type)
}

fn syntax(bytes: &[u8], pos: u64, message: &str) -> CodecError {
    let upto = &bytes[..usize::try_from(pos).unwrap_or(usize::MAX).min(bytes.len())];
    let line = upto.iter().filter(|b| **b == b'\n').count() + 1;
    let column = upto.iter().rev().take_while(|b| **b != b'\n').count() + 1;
    CodecError::Syntax {
        message: message.to_owned(),
        line,
        column,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_and_mismatched_documents_are_refused() {
        assert!(
            well_formed(br#"<Patient xmlns="http://hl7.org/fhir"><id value="a"/></Patient>"#)
                .is_ok()
        );
        for bad in [
            &br#"<Patient xmlns="http://hl7.org/fhir"><active value="true">"#[..],
            br#"<Patient><id value="a"/></Observation>"#,
            br#"<Patient/><Patient/>"#,
            br#"<Patient"#,
            b"",
        ] {
            assert!(
                matches!(well_formed(bad), Err(CodecError::Syntax { .. })),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let Err(CodecError::Syntax { line, .. }) =
            well_formed(b"<Patient>\n<id value=\"a\"/>\n</Observation>")
        else {
            panic!("mismatch accepted");
        };
        assert_eq!(line, 3);
    }

    fn nested(open: &str, close: &str, n: usize) -> Vec<u8> {
        let mut s =
            String::from(r#"<Patient xmlns="http://hl7.org/fhir"><extension url="http://x">"#);
        s.push_str(&open.repeat(n));
        s.push_str(&close.repeat(n));
        s.push_str("</extension></Patient>");
        s.into_bytes()
    }

    #[test]
    fn deep_nesting_is_refused_before_any_recursion() {
        // Just inside the bound: well formed as far as this pre-pass cares.
        assert!(well_formed(&nested("<a>", "</a>", MAX_DEPTH - 2)).is_ok());
        for n in [MAX_DEPTH - 1, 1_000, 2_000, 100_000] {
            let Err(CodecError::Syntax { message, .. }) = well_formed(&nested("<a>", "</a>", n))
            else {
                panic!("{n} levels accepted");
            };
            assert!(message.contains("nested more than 64"), "{message}");
        }
        // Self-closing elements do not open a level.
        let flat = nested(r#"<b value="x"/>"#, "", 10_000);
        assert!(well_formed(&flat).is_ok());
    }
}
