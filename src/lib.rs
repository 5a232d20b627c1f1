//! Loxilight: an eBPF load balancer with a Rust control plane.
//!
//! Data flows one way: `api` -> `rules` (validate, store) -> `datapath`
//! (program maps). `kernel` watches the network namespace's interfaces.
pub mod api;
pub mod config;
pub mod conntrack;
pub mod datapath;
pub mod health;
pub mod kernel;
pub mod metrics;
pub mod proto;
pub mod rules;
