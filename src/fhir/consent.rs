//! Partner tokens (tokens bound to an Organization) and the Consents that decide what they see.
//! The decisions themselves are made by the request's [`crate::access::Policy`], from the
//! Consents as stored, so a revocation applies to the very next request.

use crate::access::organization_reference;
use crate::auth::guard::Principal;

/// The partner organisation of a token, as `Organization/<id>`.
pub fn partner(principal: &Principal) -> Option<String> {
    principal
        .claims
        .organization
        .as_deref()
        .map(organization_reference)
}
