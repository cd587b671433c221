//! The binary: parse the command line, run, turn the outcome into a message and the documented exit code.

use std::process::ExitCode;

use tqdevo::connector::cli;

fn main() -> ExitCode {
    let invocation = cli::parse(std::env::args_os()).unwrap_or_else(|e| e.exit());
    let result = invocation.start_logging().and_then(|_log| {
        // The stdout lock ends with this statement: held across `execute`, it would stall every log line written
        // from another thread (`-ll stdout`).
        let local = invocation.run_local(&mut std::io::stdout().lock());
        local.unwrap_or_else(|| tqdevo::connector::run::execute(&invocation))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.code())
        }
    }
}
