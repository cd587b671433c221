//! The binary: parse the command line, run, turn the outcome into a message and the documented exit code.

use std::process::ExitCode;

use tqdevo::connector::{cli, logging, run};
use tqdevo::sandbox::demo;

fn main() -> ExitCode {
    let invocation = cli::parse(std::env::args_os()).unwrap_or_else(|e| e.exit());
    let result = invocation.start_logging().and_then(|_log| {
        // The stdout lock ends with this statement: held across `execute`, it would stall every log line written
        // from another thread (`-ll stdout`).
        let local = invocation.run_local(&mut std::io::stdout().lock());
        let result = local.unwrap_or_else(|| {
            // `demo` and `sandbox` run the connector against the stand-ins, so they live above both, with them.
            let mut stdout = std::io::stdout();
            match &invocation.command {
                cli::Command::Demo => run::stoppable(&invocation, demo::demo(&mut stdout)),
                cli::Command::Sandbox(args) => run::stoppable(&invocation, demo::sandbox(args, &mut stdout)),
                _ => run::execute(&invocation),
            }
        });
        // The log file records a failed run too, while its writer (`_log`) is still alive to flush the line. (Other
        // commands answer on stdout, which `-ll stdout` shares: `doctor --json` must stay one JSON object.)
        if let Err(e) = &result
            && matches!(invocation.command, cli::Command::Run)
        {
            tracing::error!(target: logging::RECORD, exit_code = e.code(), "{e}");
        }
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // On stderr too: cron mails what a job prints there.
            eprintln!("error: {e}");
            ExitCode::from(e.code())
        }
    }
}
