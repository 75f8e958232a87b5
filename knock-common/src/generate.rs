//! `--generate`, shared by `knock` and `knockd`: a manual page or shell completions made from
//! a binary's clap definitions, on standard output (for packaging: `cargo xtask deb`).

use std::io;

/// What `--generate` prints.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Generate {
    Man,
    Bash,
    Zsh,
    Fish,
}

/// Prints what `what` asks for of `cmd` on standard output; the manual page goes in `section`.
pub fn generate(what: Generate, mut cmd: clap::Command, section: &'static str) -> io::Result<()> {
    let out = &mut io::stdout();
    let shell = match what {
        Generate::Man => return clap_mangen::Man::new(cmd).section(section).render(out),
        Generate::Bash => clap_complete::Shell::Bash,
        Generate::Zsh => clap_complete::Shell::Zsh,
        Generate::Fish => clap_complete::Shell::Fish,
    };
    let name = std::string::String::from(cmd.get_name());
    clap_complete::generate(shell, &mut cmd, name, out);
    Ok(())
}
