//! Stand-ins for ThreatQ and Devo: real HTTPS/TLS servers on loopback that speak the contracts, for `demo`,
//! `sandbox`, the tests and the benchmarks.

pub mod certs;
pub mod relay;
pub mod threatq;
pub mod devo_api;
