//! tq-conn-devo-ioc-exporter: keeps a Devo Lookup List equal to the IOCs of a ThreatQ Data Collection.
//!
//! The data flows `threatq` (read) → `export` (map, dedup, plan, state) → `devo` (write), orchestrated by
//! `connector`; `sandbox` holds the loopback stand-ins for both APIs.

pub mod connector;
pub mod devo;
mod error;
pub mod export;
pub mod field;
pub mod file;
pub mod retry;
pub mod sandbox;
pub mod threatq;
mod tls;

pub use error::{Error, Exit};

/// Installs the process-wide TLS crypto provider (ring); every TLS user calls this first.
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Log lines a unit test captures from `tracing` (at any level) to check what a user would read in the log.
#[cfg(test)]
pub(crate) mod test_log {
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    pub(crate) struct Captured(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl Captured {
        /// What was logged so far.
        pub(crate) fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
