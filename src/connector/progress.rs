//! A progress bar on stderr while IOCs stream, drawn only when stderr is a terminal (never in cron or a log).

use std::io::IsTerminal as _;

use indicatif::{ProgressBar, ProgressStyle};

/// Counts IOCs; a no-op when stderr is not a terminal.
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// A bar for `what`; its length comes with [`Self::set_total`] once ThreatQ has answered the first page.
    pub fn new(what: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = ProgressBar::new(0);
        let style = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)")
            .expect("valid template")
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(what.to_owned());
        Progress(Some(bar))
    }

    pub fn set_total(&self, total: u64) {
        if let Some(bar) = &self.0 {
            bar.set_length(total);
        }
    }

    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(n);
        }
    }

    /// Clears the bar so the summary line that follows stands alone.
    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
