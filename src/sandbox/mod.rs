//! Stand-ins for ThreatQ and Devo: real HTTPS/TLS servers on loopback that speak the contracts, for `demo`,
//! `sandbox`, the tests and the benchmarks; and those two commands ([`demo`]), which run the connector against
//! them, so they sit above it.

pub mod certs;
pub mod demo;
pub mod devo_api;
mod https;
pub mod relay;
pub mod stage;
pub mod threatq;
