//! Well-formedness of an XML body, checked before fhirbolt sees it: fhirbolt's streaming
//! deserialiser stops once it has what it needs and accepts a document whose closing tags are
//! missing. Errors carry the line and column, as JSON syntax errors do.

use quick_xml::events::Event;
use quick_xml::Reader;

use crate::CodecError;

/// Fails on the first syntax error, mismatched or missing end tag, or content after the root.
pub(crate) fn well_formed(bytes: &[u8]) -> Result<(), CodecError> {
    let mut reader = Reader::from_reader(bytes);
    reader.config_mut().check_end_names = true;
    let mut open: Vec<Vec<u8>> = Vec::new();
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
            }
            Event::Empty(_) if open.is_empty() => roots += 1,
            Event::End(_) => {
                open.pop();
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
}
