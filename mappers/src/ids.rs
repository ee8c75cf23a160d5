//! Deterministic identifiers and logical ids.
//!
//! Every Observation gets `identifier` = (`https://fhirgate.org/identifier/<source>`, key) where the
//! key is the provider's own record id (plus the metric when one record yields several
//! Observations) or, when the provider has none, `patient|device|metric|start|end`
//! (docs/wearable-mapping.md §0.5 and §3 "Dedup"). The logical id is the hex SHA-256 of patient,
//! system and key, so a re-import writes the same ids (an idempotent `PUT`) and two patients who
//! import the same file never overwrite each other's resources. 64 hex digits are a valid FHIR id
//! (`[A-Za-z0-9\-\.]{1,64}`).

use sha2::{Digest, Sha256};

use crate::Source;

/// Identifier system for Observations of `source`.
pub(crate) fn observation_system(source: Source) -> String {
    format!("https://fhirgate.org/identifier/{}", source.as_str())
}

/// Identifier system for Devices of `source`.
pub(crate) fn device_system(source: Source) -> String {
    format!("https://fhirgate.org/identifier/{}/device", source.as_str())
}

/// The logical id for a resource of `patient_id` identified by `system`|`value`.
pub(crate) fn logical_id(patient_id: &str, system: &str, value: &str) -> String {
    let mut h = Sha256::new();
    // Separators that cannot occur inside a URL keep the three parts from running together.
    h.update(patient_id.as_bytes());
    h.update(b"\n");
    h.update(system.as_bytes());
    h.update(b"\n");
    h.update(value.as_bytes());
    lower_hex(&h.finalize())
}

/// Lower-case hex of `bytes` (a table lookup per nibble; `hex::encode` goes through `char`s).
fn lower_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
    // Only ASCII digits were pushed.
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_valid_fhir_ids_and_depend_on_the_patient() {
        let a = logical_id("p1", "https://fhirgate.org/identifier/oura", "x");
        assert_eq!(
            a,
            logical_id("p1", "https://fhirgate.org/identifier/oura", "x")
        );
        assert_ne!(
            a,
            logical_id("p2", "https://fhirgate.org/identifier/oura", "x")
        );
        assert_eq!(a.len(), 64);
        assert_eq!(lower_hex(&[0x00, 0x9f, 0xa5, 0xff]), "009fa5ff");
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
