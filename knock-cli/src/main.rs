//! `knock`: the client, compatible with knock 0.8.
//!
//! `knock [-v] [-u] [-d MS] [-4|-6] HOST PORT[:PROTO]...` sends, in argument order, one
//! TCP SYN (a non-blocking connect, then close) or one 1-byte UDP datagram per port.
//!
//! `knock --secret-file FILE [--length N] [--window S] [--source ADDR] [--print] HOST` knocks
//! a secret-keyed door: the ports of the current window for this client's address, derived
//! from the key (`knock_common::secret`). `knock NAME` knocks the door of a profile
//! (`profiles`, `knock_common::profile`). `knock --generate-secret` prints a new key.

use std::{
    io::Read as _,
    process::ExitCode,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use knock_common::{
    generate::generate,
    secret::derive::{GENERATED_KEY_BITS, Secret},
};

mod args;
mod plan;
mod ports;
mod profiles;
mod send;

use plan::{AfterKnock, Knock, Plan};

fn main() -> ExitCode {
    let args = args::parse();
    if let Some(what) = args.generate {
        return match generate(what, <args::Args as clap::CommandFactory>::command(), "1") {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("knock: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let run = if args.generate_secret { generate_secret() } else { Plan::new(&args).and_then(|p| knock(&p)) };
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("knock: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sends the knock (or prints a secret door's ports), then runs the profile's command.
fn knock(plan: &Plan) -> anyhow::Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).context("the clock is before 1970")?.as_secs();
    let plan::Target { ip, hits, bind } = plan.ports(now)?;
    if plan.print {
        if !matches!(plan.knock, Knock::Secret { .. }) {
            anyhow::bail!("--print belongs to a secret door's knock");
        }
        println!("{}", hits.iter().map(|(p, _)| p.to_string()).collect::<Vec<_>>().join(" "));
        return Ok(());
    }
    send::send(ip, &hits, bind, plan.delay_ms, plan.verbose);
    match &plan.command {
        Some(c) => run_after(c, &plan.host, plan.verbose),
        None => Ok(()),
    }
}

/// Becomes the profile's command (no shell; `%HOST%` replaced): it gets the terminal, and its
/// exit status is knock's.
fn run_after(c: &AfterKnock, host: &str, verbose: bool) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let words: Vec<String> = c.words.iter().map(|w| w.replace("%HOST%", host)).collect();
    let (program, rest) = words.split_first().with_context(|| format!("{}: the command is empty", c.origin))?;
    if verbose {
        println!("running {}", words.join(" "));
    }
    let e = std::process::Command::new(program).args(rest).exec();
    Err(anyhow::anyhow!("{}: running '{program}': {e}", c.origin))
}

/// `--generate-secret`: a new key from the kernel's random source, as hex.
fn generate_secret() -> anyhow::Result<()> {
    let mut key = [0u8; GENERATED_KEY_BITS / 8];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut key)).context("reading /dev/urandom")?;
    println!("{}", Secret::from_bytes(&key).to_hex());
    Ok(())
}

#[cfg(test)]
mod tests;
