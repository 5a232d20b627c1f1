//! The domain model of the rule set, its validation, and the rule store (the
//! single source of truth that the datapath is programmed from).
mod firewall;
mod fwstore;
mod model;
mod persist;
pub use persist::remove_all as remove_state;
mod store;

pub use firewall::{DefaultPolicy, FwAction, FwMatch, FwRule, IpPrefix, PortRange, PORT_PROTOCOLS};
pub use fwstore::StoredFwRule;
pub use model::{
    parse_ip, parse_port, parse_target_port, parse_weight, Endpoint, EndpointProbe, LbRule, Mode,
    ProbeType, Protocol, Selection, ServiceKey, SourcePrefix, DEFAULT_INACTIVITY_TIMEOUT,
    DEFAULT_PROBE_PERIOD, DEFAULT_PROBE_RETRIES, DEFAULT_PROBE_RISE,
};
pub use store::{ApplyReport, EndpointAddr, RuleStore, StoredRule};

use crate::datapath;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is wrong; `field` is its path in the API.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Exhausted(String),
    #[error(transparent)]
    Datapath(#[from] datapath::Error),
    /// The state file could not be read or written.
    #[error("state file: {0}")]
    Persist(String),
}

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
