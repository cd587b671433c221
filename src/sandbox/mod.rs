//! Stand-ins for ThreatQ and Devo: real HTTPS/TLS servers on loopback that speak the contracts, for `demo`,
//! `sandbox`, the tests and the benchmarks.

pub mod certs;
pub mod devo_api;
mod https;
pub mod relay;
pub mod stage;
pub mod threatq;
