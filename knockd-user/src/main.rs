//! `knockd`: drop-in for knockd 0.8, with the matching done in XDP.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context as _;
use aya::programs::XdpMode;
use clap::Parser;
use knockd_user::{
    config::{Config, DEFAULT_INTERFACE},
    daemon::Daemon,
    doors::Doors,
    kernel::{KnockProgram, Limits},
    log::KnockLog,
};
use tracing_subscriber::EnvFilter;

/// Port-knock server: watches an interface for knock sequences and runs commands.
#[derive(Debug, Parser)]
#[command(name = "knockd", version, about)]
struct Args {
    /// Network interface to listen on (overrides `Interface` in the config) [default: eth0]
    #[arg(short = 'i', long)]
    interface: Option<String>,
    /// Configuration file.
    #[arg(short = 'c', long, default_value = "/etc/knockd.conf")]
    config: PathBuf,
    /// Run in the background and write a pidfile.
    #[arg(short = 'd', long)]
    daemon: bool,
    /// Debug output.
    #[arg(short = 'D', long)]
    debug: bool,
    /// Look up DNS names of knockers (accepted for compatibility; not done: it blocks and leaks).
    #[arg(short = 'l', long)]
    lookup: bool,
    /// Pidfile, used with -d (the config's `PidFile` wins, as in knockd).
    #[arg(short = 'p', long)]
    pidfile: Option<PathBuf>,
    /// Log file (the config's `LogFile` wins, as in knockd).
    #[arg(short = 'g', long)]
    logfile: Option<PathBuf>,
    /// Verbose output.
    #[arg(short = 'v', long)]
    verbose: bool,
    /// Ignore IPv6 knocks.
    #[arg(short = '4', long = "only-ip-v4")]
    only_ipv4: bool,
    /// Print the parsed configuration in knockgate's TOML form and exit.
    #[arg(long)]
    dump_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let level = if args.debug {
        "debug"
    } else if args.verbose {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)))
        .with_writer(std::io::stderr)
        .init();
    match start(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("knockd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(args: &Args) -> anyhow::Result<()> {
    // Everything that can be wrong with the config is found before anything is attached.
    let config = Config::load(&args.config)?;
    if args.dump_config {
        print!("{}", knockd_user::toml_form::dump(&config)?);
        return Ok(());
    }
    // Absolute, so that a reload after -d (which changes to /) reads the same file.
    let config_path = std::path::absolute(&args.config).unwrap_or_else(|_| args.config.clone());
    let interface = args
        .interface
        .clone()
        .or_else(|| config.options.interface.clone())
        .unwrap_or_else(|| DEFAULT_INTERFACE.to_owned());
    let log_path = config.options.log_file.clone().or(args.logfile.clone());
    let log = Arc::new(KnockLog::open(log_path.as_deref(), config.options.use_syslog));
    if args.lookup {
        tracing::warn!("-l/--lookup is accepted but knockgate does not look up knockers' names");
    }

    let defaults = Limits::default();
    let limits = Limits {
        progress_entries: config.options.attempt_table_size.unwrap_or(defaults.progress_entries),
        first_knock_entries: config.options.first_knock_table_size.unwrap_or(defaults.first_knock_entries),
        allow_entries: config.options.allow_table_size.unwrap_or(defaults.allow_entries),
        ..defaults
    };
    let mut program =
        KnockProgram::load(limits).context("loading the XDP program (needs root: CAP_BPF and CAP_NET_ADMIN)")?;
    let mut doors = Doors::new();
    doors.install(config.doors);
    program.apply(&doors)?;
    let addrs = knockd_user::daemon::interface_addrs(&interface, args.only_ipv4)
        .with_context(|| format!("reading the addresses of {interface}"))?;
    program.set_local_addrs(&addrs)?;
    if let Err(native) = program.attach(&interface, XdpMode::Default) {
        tracing::debug!("native XDP on {interface} failed ({native}); using generic (skb) mode");
        program.attach(&interface, XdpMode::Skb).with_context(|| format!("attaching XDP to interface {interface}"))?;
    }
    let events = program.take_events()?;
    let limits = program.limits();
    let memory = KnockProgram::map_memory();
    let total: u64 = memory.iter().map(|(_, b)| b).sum();
    let detail: Vec<String> = memory.iter().map(|(n, b)| format!("{n} {} KiB", b / 1024)).collect();
    log.line(&format!(
        "{} door(s); tables: attempts {}, first knocks {}, allowances {}; kernel memory {} KiB ({})",
        doors.active().count(),
        limits.progress_entries,
        limits.first_knock_entries,
        limits.allow_entries,
        total / 1024,
        detail.join(", ")
    ));

    let mut pidfile = None;
    if args.daemon {
        let path = config
            .options
            .pid_file
            .clone()
            .or(args.pidfile.clone())
            .unwrap_or_else(|| PathBuf::from("/var/run/knockd.pid"));
        nix::unistd::daemon(false, false).context("daemonizing")?;
        match std::fs::write(&path, format!("{}\n", std::process::id())) {
            Ok(()) => pidfile = Some(path),
            Err(e) => log.line(&format!("could not create pid file {}: {e}", path.display())),
        }
    }

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let daemon = Daemon {
        program,
        doors,
        config_path,
        logfile_flag: args.logfile.clone(),
        interface,
        ipv4_only: args.only_ipv4,
        addrs,
        log,
        pidfile,
    };
    runtime.block_on(daemon.run(events))
}
