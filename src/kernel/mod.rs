//! The kernel mirror: the only code that talks rtnetlink. It dumps the
//! namespace's links, addresses, main-table routes and neighbours, follows
//! their changes, and keeps the datapath's copies and attachments in step.
mod convert;
mod mirror;
pub mod model;

pub use mirror::{interfaces, start, Managed, MirrorOptions, MirrorStats};
