//! The one integration test binary: a module per area, each driving the library or the real binary against the
//! loopback stand-ins.

mod binary;
mod cli;
mod doctor;
mod e2e;
mod faults;
mod install;
mod lookups_api;
mod mapping;
mod paging;
mod relay;
mod sync;
mod threatq;
