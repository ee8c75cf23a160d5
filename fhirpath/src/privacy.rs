//! Which search parameters carry values that identify a person, so the server can
//! blind-index them (store keyed hashes rather than the values).

/// Resource types that describe an individual.
const PERSON_TYPES: [&str; 4] = ["Patient", "Person", "RelatedPerson", "Practitioner"];

/// Their identifying parameters. `address-use` is left out: it is the address's purpose
/// (home, work), not part of it.
const PERSON_CODES: [&str; 14] = [
    "name",
    "family",
    "given",
    "phonetic",
    "address",
    "address-city",
    "address-country",
    "address-postalcode",
    "address-state",
    "telecom",
    "phone",
    "email",
    "identifier",
    "birthdate",
];

/// Contact details of a practitioner in a role are personal too.
const PRACTITIONER_ROLE_CODES: [&str; 3] = ["telecom", "phone", "email"];

/// Whether the values of parameter `code` on `resource_type` identify a person and must be
/// blind-indexed: names, identifiers, telecom, address parts and birth date of Patient,
/// Person, RelatedPerson and Practitioner; telecom of PractitionerRole; and `identifier`
/// on every resource type (business identifiers often embed medical record numbers).
pub fn is_person_identifying(resource_type: &str, code: &str) -> bool {
    if code == "identifier" {
        return true;
    }
    if PERSON_TYPES.contains(&resource_type) {
        return PERSON_CODES.contains(&code);
    }
    resource_type == "PractitionerRole" && PRACTITIONER_ROLE_CODES.contains(&code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        for code in PERSON_CODES {
            for rt in PERSON_TYPES {
                assert!(is_person_identifying(rt, code), "{rt} {code}");
            }
        }
        assert!(is_person_identifying("Observation", "identifier"));
        assert!(is_person_identifying("PractitionerRole", "email"));
        assert!(!is_person_identifying("Patient", "gender"));
        assert!(!is_person_identifying("Patient", "address-use"));
        assert!(!is_person_identifying("Observation", "code"));
        assert!(!is_person_identifying("Organization", "name"));
    }
}
