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
        Generate::Man => return man(cmd, section, out),
        Generate::Bash => clap_complete::Shell::Bash,
        Generate::Zsh => clap_complete::Shell::Zsh,
        Generate::Fish => clap_complete::Shell::Fish,
    };
    let name = std::string::String::from(cmd.get_name());
    clap_complete::generate(shell, &mut cmd, name, out);
    Ok(())
}

/// The manual page: `clap_mangen`'s sections, with the long help's closing text (`after_long_help`)
/// as a section of its own named by its first line (`Profiles:` becomes PROFILES), one
/// paragraph per block of lines, rather than `clap_mangen`'s EXTRA.
fn man(cmd: clap::Command, section: &'static str, out: &mut dyn io::Write) -> io::Result<()> {
    use clap_mangen::roff::{Roff, roman};
    let after = cmd.get_after_long_help().map(std::string::ToString::to_string);
    let has_version = cmd.get_version().is_some();
    let man = clap_mangen::Man::new(cmd).section(section);
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    if let Some(text) = after {
        let mut lines = text.lines();
        let title = lines.next().unwrap_or_default().trim_end_matches(':').to_uppercase();
        let mut roff = Roff::default();
        roff.control("SH", [title.as_str()]);
        let body: std::vec::Vec<&str> = lines.collect();
        for paragraph in body.split(|l| l.trim().is_empty()).filter(|p| !p.is_empty()) {
            let words: std::vec::Vec<&str> = paragraph.iter().map(|l| l.trim()).collect();
            roff.control("PP", []);
            roff.text([roman(words.join(" "))]);
        }
        roff.to_writer(out)?;
    }
    if has_version {
        man.render_version_section(out)?;
    }
    Ok(())
}
