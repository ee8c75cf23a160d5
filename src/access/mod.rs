//! Access: who may see what. One [`Policy`] per request decides it for every data path.

pub mod compartment;
mod policy;
pub mod route;

pub use policy::{organization_reference, Decided, Policy, Reach, SHARED_TYPES};
pub use route::{Interaction, Kind as InteractionKind};
