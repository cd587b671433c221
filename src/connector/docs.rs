//! The manual page and the shell completions, generated from the clap definition of the command line, so they
//! say what `--help` says. Clap knows no two-letter single-dash flag, so `-ll` (which the command line rewrites
//! to `--loglocation`) is added to each output next to `--loglocation`.

use clap::CommandFactory as _;

use super::cli::RawArgs;

/// The shells whose completion scripts the binary prints and the packages install.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

const BIN: &str = "tq-conn-devo-ioc-exporter";

/// The completion script for `shell`, offering `-ll` wherever it offers `--loglocation`.
pub fn completions(shell: Shell) -> String {
    let mut command = RawArgs::command();
    let mut script = Vec::new();
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(generator, &mut command, BIN, &mut script);
    let script = String::from_utf8(script).expect("clap_complete writes UTF-8");
    match shell {
        // The word lists and the case label that completes a directory after the flag.
        Shell::Bash => {
            script.replace("--loglocation ", "--loglocation -ll ").replace("--loglocation)", "--loglocation|-ll)")
        }
        // `_arguments` takes multi-letter single-dash options: a second spec line with the same help and values.
        Shell::Zsh => script
            .lines()
            .flat_map(|line| {
                let ll = line.contains("'--loglocation=[").then(|| line.replace("'--loglocation=[", "'-ll+["));
                ll.into_iter().chain(std::iter::once(line.to_owned()))
            })
            .map(|line| line + "\n")
            .collect(),
        // fish has "old-style" single-dash long options for exactly this.
        Shell::Fish => script.replace(" -l loglocation ", " -l loglocation -o ll "),
    }
}

/// The manual page (roff), with `-ll` beside `--loglocation`.
pub fn man_page() -> String {
    let mut page = Vec::new();
    clap_mangen::Man::new(RawArgs::command()).render(&mut page).expect("rendering into memory cannot fail");
    String::from_utf8(page)
        .expect("clap_mangen writes UTF-8")
        .replace("[\\fB\\-\\-loglocation\\fR]", "[\\fB\\-ll\\fR|\\fB\\-\\-loglocation\\fR]")
        .replace("\\fB\\-\\-loglocation\\fR \\fI", "\\fB\\-ll\\fR, \\fB\\-\\-loglocation\\fR \\fI")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every long flag and subcommand `--help` shows, plus `-ll`: the outputs cannot drift from the parser.
    fn everything_help_names() -> Vec<String> {
        let command = RawArgs::command();
        let mut names: Vec<String> =
            command.get_arguments().filter_map(|a| a.get_long()).map(|l| format!("--{l}")).collect();
        names.extend(command.get_subcommands().map(|s| s.get_name().to_owned()));
        names.push("-ll".into());
        names
    }

    #[test]
    fn every_completion_script_offers_every_flag_subcommand_and_ll() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = completions(shell);
            for name in everything_help_names() {
                let form = match (shell, name.as_str()) {
                    (Shell::Zsh, "-ll") => "'-ll+[".to_owned(),
                    (Shell::Fish, "-ll") => "-o ll".to_owned(),
                    (Shell::Fish, long) if long.starts_with("--") => format!("-l {}", &long[2..]),
                    (_, name) => name.to_owned(),
                };
                assert!(script.contains(&form), "{shell:?} completions lack {form}");
            }
        }
    }

    #[test]
    fn ll_is_offered_wherever_loglocation_is() {
        let bash = completions(Shell::Bash);
        assert_eq!(
            bash.matches("--loglocation -ll ").count(),
            bash.matches("--loglocation").count() - bash.matches("--loglocation|-ll)").count()
        );
        let zsh = completions(Shell::Zsh);
        assert_eq!(zsh.matches("'-ll+[").count(), zsh.matches("'--loglocation=[").count());
        let fish = completions(Shell::Fish);
        assert_eq!(fish.matches("-o ll").count(), fish.matches("-l loglocation").count());
        let man = man_page();
        assert!(man.contains("[\\fB\\-ll\\fR|\\fB\\-\\-loglocation\\fR]"), "the synopsis names -ll");
        assert!(man.contains("\\fB\\-ll\\fR, \\fB\\-\\-loglocation\\fR \\fI"), "the option list names -ll");
    }

    #[test]
    fn the_man_page_holds_the_help_text() {
        let page = man_page();
        assert!(page.starts_with(".ie"), "a roff page: {}", &page[..40]);
        for name in everything_help_names() {
            assert!(page.contains(&name.replace('-', "\\-")), "the man page lacks {name}");
        }
        for text in ["Exit codes:", "TQ_SECRETS_BACKEND", "Keeps a Devo Lookup List"] {
            assert!(page.contains(text), "the man page lacks {text:?}");
        }
    }
}
