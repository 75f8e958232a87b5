//! `knockd`: drop-in for knockd 0.8, with the matching done in XDP.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use anyhow::Context as _;
use clap::Parser;
use knock_common::generate::{Generate, generate};
use knockd_user::{
    commands::journal::{Journal, Opened},
    commands::keeper::{DEFAULT_MAX_COMMANDS, Keeper},
    commands::state::StateDir,
    config::{Attach, Config, DEFAULT_INTERFACE, DEFAULT_STATE_DIR, Options, values::parse_attach},
    daemon::{Daemon, FleetSide},
    fleet::{FleetLink, applied::Applied},
    kernel::attach::hooked_now,
    kernel::doors::Doors,
    kernel::hooks::{Attached, Hooked},
    kernel::pin::{DEFAULT_BPF_DIR, PinDir},
    kernel::program::{KnockProgram, Limits},
    observe::log::KnockLog,
};
use tracing_subscriber::EnvFilter;

/// Port-knock server: watches an interface for knock sequences and runs commands.
#[derive(Debug, Parser)]
#[command(name = "knockd", version, about)]
struct Args {
    /// Network interface to listen on; repeat it for several (overrides `Interface` in the
    /// config) [default: eth0]
    #[arg(short = 'i', long)]
    interface: Vec<String>,
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
    /// Where the program runs on each interface (overrides `Attach`): `xdp`; `tc` (TC ingress,
    /// behind another XDP program); or `auto`, XDP unless the interface has another XDP
    /// program, TC then [default: auto]
    #[arg(long, value_name = "MODE", value_parser = parse_attach)]
    attach: Option<Attach>,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (overrides `MetricsAddress`).
    #[arg(long, value_name = "ADDR")]
    metrics_address: Option<std::net::SocketAddr>,
    /// Read and check the configuration, print one line per door, exit (0: it is valid; 1: the
    /// `file:line` error). Nothing is attached.
    #[arg(long)]
    check: bool,
    /// Print the client's profile for door DOOR of the config (one `[DOOR]` table for
    /// `knock.toml`: sequence and protocols, or the secret door's parameters and key path,
    /// never the key) and exit.
    #[arg(long, value_name = "DOOR")]
    client_profile: Option<String>,
    /// With --client-profile: the name or address clients knock at [default: the door's
    /// target, else the interface's first address]
    #[arg(long, value_name = "NAME", requires = "client_profile")]
    host: Option<String>,
    /// Print what the pinned state of the interface holds (doors, live allowances, attempts
    /// in progress, table use, counters) and exit. Works while knockd runs and after it
    /// died; changes nothing.
    #[arg(long)]
    status: bool,
    /// With --status: JSON, one object per interface and line.
    #[arg(long, requires = "status")]
    json: bool,
    /// Print a manual page or shell completions from these definitions, and exit (for
    /// packaging: `cargo xtask deb`).
    #[arg(long, hide = true, value_enum, value_name = "WHAT")]
    generate: Option<Generate>,
    /// Remove knockgate from the interface: run the journaled pending stop commands, detach
    /// the XDP program, remove its pins, exit.
    #[arg(long)]
    unload: bool,
    /// BPF filesystem directory for the pinned program and maps (overrides `BpfDir`)
    /// [default: /sys/fs/bpf/knockgate]
    #[arg(long, value_name = "DIR")]
    bpf_dir: Option<PathBuf>,
    /// Directory of the journal of pending stop commands (overrides `StateDir`)
    /// [default: /var/lib/knockgate]
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

impl Args {
    /// The interfaces to serve, in order: `-i`, else `Interface = eth0, eth1`, else eth0.
    fn interfaces(&self, options: &Options) -> Vec<String> {
        let mut list = if self.interface.is_empty() { options.interfaces() } else { self.interface.clone() };
        if list.is_empty() {
            list.push(DEFAULT_INTERFACE.to_owned());
        }
        let mut seen = std::collections::HashSet::new();
        list.retain(|i| seen.insert(i.clone()));
        list
    }

    fn attach(&self, options: &Options) -> Attach {
        self.attach.or(options.attach).unwrap_or_default()
    }

    fn bpf_dir(&self, options: &Options) -> PathBuf {
        self.bpf_dir.clone().or_else(|| options.bpf_dir.clone()).unwrap_or_else(|| PathBuf::from(DEFAULT_BPF_DIR))
    }

    fn state_dir(&self, options: &Options) -> PathBuf {
        self.state_dir.clone().or_else(|| options.state_dir.clone()).unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
    }
}

/// How long shutdown and `--unload` wait for commands (pending stops included) to finish.
const SHUTDOWN_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(what) = args.generate {
        return match generate(what, <Args as clap::CommandFactory>::command(), "8") {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("knockd: {e}");
                ExitCode::FAILURE
            }
        };
    }
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
        // systemd and `docker logs` capture stderr: colour codes only for a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
    if args.unload {
        return unload(args);
    }
    if args.status {
        return status(args);
    }
    // Everything that can be wrong with the config is found before anything is attached.
    let config = Config::load(&args.config)?;
    for door in &config.doors {
        if let Some(w) = door.secret.as_ref().and_then(knockd_user::config::SecretDoor::weakness) {
            tracing::warn!("door {}: {w}", door.name);
        }
    }
    if args.dump_config {
        print!("{}", knockd_user::config::toml_form::dump(&config)?);
        return Ok(());
    }
    if let Some(name) = &args.client_profile {
        let host = match &args.host {
            Some(h) => h.clone(),
            None => default_host(args, &config, name)?,
        };
        print!("{}", knockd_user::config::client_profile::for_door(&config.doors, &args.config, name, &host)?);
        return Ok(());
    }
    if args.check {
        for door in &config.doors {
            println!("{}: {}", door.name, knockd_user::config::check::summary(door));
            if let Some(gap) = knockd_user::config::client_profile::gap(door) {
                println!("{}: note: a client cannot open it from a profile alone: {gap}", door.name);
            }
        }
        println!("{}: the configuration is valid ({} door(s))", args.config.display(), config.doors.len());
        return Ok(());
    }
    // A kernel below the floor is refused before anything is locked, pinned or attached.
    knockd_user::kernel::floor::check()?;
    // Absolute, so that a reload after -d (which changes to /) reads the same file.
    let config_path = std::path::absolute(&args.config).unwrap_or_else(|_| args.config.clone());
    let interfaces = args.interfaces(&config.options);
    let log_path = config.options.log_file.clone().or(args.logfile.clone());
    let log = Arc::new(KnockLog::open(log_path.as_deref(), config.options.use_syslog));
    if args.lookup {
        tracing::warn!("-l/--lookup is accepted but knockgate does not look up knockers' names");
    }
    let state_root = args.state_dir(&config.options);
    let mut states = Vec::new();
    for iface in &interfaces {
        states.push(StateDir::lock(&state_root, iface)?);
    }
    // The commands' journal lives with the first interface.
    let journal = open_journal(&states[0], &log)?;
    let ifaces = pin_dirs(&args.bpf_dir(&config.options), &interfaces, &log)?;

    let options = config.options.clone();
    // Bound before anything is attached: a taken port is an error at start-up.
    let metrics = args.metrics_address.or(options.metrics_address).map(|addr| {
        let listener = std::net::TcpListener::bind(addr).with_context(|| format!("serving metrics on {addr}"));
        listener.map(|l| (addr, l))
    });
    let metrics = metrics.transpose()?;
    let (mut program, doors, addrs) = bring_up(args, config, &log, &ifaces)?;
    let previous = StateDir::read_labels(&state_root, &interfaces[0]);
    let labels = knockd_user::observe::status::labels(&doors, &program.door_counters()?, &previous);
    for state in &states {
        state.write_labels(&labels)?;
    }
    let labels = Arc::new(std::sync::Mutex::new(labels));
    let events = program.take_events()?;
    log_tables(&log, &program, &doors);
    let pidfile = if args.daemon { daemonize(args, &options, &mut states, &log)? } else { None };

    let max_commands = options.max_commands.unwrap_or(DEFAULT_MAX_COMMANDS);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let keeper = Keeper::start(Arc::clone(&log), journal.journal, journal.entries, max_commands);
        let fleet = options.fleet.as_ref().map(|f| fleet_side(f, &states[0], &log));
        if let (Some((addr, listener)), Some(home)) = (metrics, program.home()) {
            let source = knockd_user::observe::metrics::Source {
                pins: home.clone(),
                interfaces: ifaces.iter().map(|(i, _)| i.clone()).collect(),
                labels: Arc::clone(&labels),
                keeper: Arc::clone(keeper.stats()),
                fleet: fleet.as_ref().map(|f| Arc::clone(&f.link.stats)),
            };
            knockd_user::observe::metrics::serve(listener, source)
                .with_context(|| format!("serving metrics on {addr}"))?;
            log.line(&format!("metrics at http://{addr}/metrics"));
        }
        let daemon = Daemon {
            program,
            doors,
            config_path,
            logfile_flag: args.logfile.clone(),
            interfaces: ifaces,
            attach: args.attach(&options),
            ipv4_only: args.only_ipv4,
            addrs,
            log,
            pidfile,
            keeper,
            states,
            labels,
            fleet,
        };
        daemon.run(events, SHUTDOWN_LIMIT).await
    })
}

/// `-d`: goes to the background, notes the pid in the state locks and writes the pid file
/// (whose path is returned, for removal at exit).
fn daemonize(
    args: &Args,
    options: &Options,
    states: &mut [StateDir],
    log: &KnockLog,
) -> anyhow::Result<Option<PathBuf>> {
    let path =
        options.pid_file.clone().or(args.pidfile.clone()).unwrap_or_else(|| PathBuf::from("/var/run/knockd.pid"));
    nix::unistd::daemon(false, false).context("daemonizing")?;
    for state in states {
        if let Err(e) = state.note_pid() {
            tracing::warn!("noting the pid in the state lock: {e}");
        }
    }
    match std::fs::write(&path, format!("{}\n", std::process::id())) {
        Ok(()) => Ok(Some(path)),
        Err(e) => {
            log.line(&format!("could not create pid file {}: {e}", path.display()));
            Ok(None)
        }
    }
}

/// Starts the link to the fleet (on the running Tokio runtime), its record of applied grants
/// in `state`.
fn fleet_side(fleet: &knockd_user::config::fleet::Fleet, state: &StateDir, log: &Arc<KnockLog>) -> FleetSide {
    let applied = Applied::open(state.dir(), knockd_user::clock::wall_ms()).unwrap_or_else(|e| {
        log.line(&format!(
            "fleet: cannot keep the record of applied grants in {}: {e}; a restart may run a grant's start command again",
            state.dir().display()
        ));
        Applied::in_memory()
    });
    log.line(&format!(
        "fleet: node {} of the fleet at {} (single use: {})",
        fleet.name,
        fleet.servers.join(", "),
        fleet.single_use.name()
    ));
    let (link, grants) = FleetLink::start(fleet, Arc::clone(log));
    FleetSide::new(link, grants, applied)
}

/// Where clients knock door `name` when `--host` does not say: the door's target, else the
/// first interface's first address (IPv4 first).
fn default_host(args: &Args, config: &Config, name: &str) -> anyhow::Result<String> {
    if let Some(t) = config.doors.iter().find(|d| d.name == name).and_then(|d| d.target) {
        return Ok(t.to_string());
    }
    let iface = args.interfaces(&config.options).swap_remove(0);
    let addrs = knockd_user::daemon::interface_addrs(&iface, args.only_ipv4)
        .with_context(|| format!("reading the addresses of {iface}"))?;
    let first = addrs.iter().find(|a| a.is_ipv4()).or(addrs.first());
    first.map(ToString::to_string).with_context(|| {
        format!("interface {iface} has no address to put in the profile: name the host clients knock at with --host")
    })
}

/// Readies `BpfDir` (once) and each interface's directory in it.
fn pin_dirs(bpf_dir: &Path, interfaces: &[String], log: &KnockLog) -> anyhow::Result<Vec<(String, PinDir)>> {
    for note in knockd_user::kernel::pin::prepare_bpf_dir(bpf_dir)? {
        log.line(&note);
    }
    let mut ifaces = Vec::new();
    for iface in interfaces {
        let pins = PinDir::new(bpf_dir, iface);
        pins.make()?;
        ifaces.push((iface.clone(), pins));
    }
    Ok(ifaces)
}

/// Logs the table sizes and the kernel memory the maps take.
fn log_tables(log: &KnockLog, program: &KnockProgram, doors: &Doors) {
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
}

/// Loads the program on the pinned state (adopting what a previous daemon left), applies the
/// config, and attaches to every interface through its pinned link. The maps are loaded from
/// the first interface whose directory has this build's, and pinned in every interface's.
fn bring_up(
    args: &Args,
    config: Config,
    log: &KnockLog,
    ifaces: &[(String, PinDir)],
) -> anyhow::Result<(KnockProgram, Doors, Vec<std::net::IpAddr>)> {
    let attach = args.attach(&config.options);
    wait_for_interfaces(ifaces, log)?;
    let Config { options, doors: doors_conf } = config;
    let defaults = Limits::default();
    let limits = Limits {
        progress_entries: options.attempt_table_size.unwrap_or(defaults.progress_entries),
        first_knock_entries: options.first_knock_table_size.unwrap_or(defaults.first_knock_entries),
        allow_entries: options.allow_table_size.unwrap_or(defaults.allow_entries),
        ..defaults
    };
    let home = ifaces.iter().find(|(_, p)| p.map(knock_common::maps::ALLOW).exists()).unwrap_or(&ifaces[0]);
    // Should the verifier reject the program, its log goes to the state directory.
    let mut program = KnockProgram::load_pinned(limits, &home.1, &args.state_dir(&options))?;
    let mut doors = Doors::new();
    if program.reused_state() {
        let kept = doors.install_adopting(doors_conf, &program.kernel_doors()?);
        log.line(&format!(
            "adopting the state pinned in {}: {kept} door(s) keep their attempts",
            home.1.root().display()
        ));
    } else {
        doors.install(doors_conf);
    }
    program.apply(&doors)?;
    let addrs = all_addrs(ifaces, args.only_ipv4)?;
    program.set_local_addrs(&addrs)?;
    // State the new program does not run on: other layouts' maps, and other instances' maps
    // in the other interfaces' directories. Their allowances are carried over.
    let mut carried = Vec::new();
    for (iface, pins) in ifaces {
        let mut dirs = pins.other_maps();
        if pins.root() != home.1.root()
            && pins.maps().join(knock_common::maps::ALLOW).exists()
            && !program.owns_maps_in(&pins.maps())?
        {
            dirs.push(pins.maps());
        }
        for dir in dirs {
            let c = program
                .carry_allowances(&dir)
                .with_context(|| format!("carrying the allowances of {iface} over from {}", dir.display()))?;
            carried.push(c);
        }
    }
    for (iface, pins) in ifaces {
        match program.attach(iface, pins, attach) {
            Ok((Attached::New, at)) => log.line(&format!(
                "attached to {iface} at {}{}; pinned in {}",
                at.name(),
                if attach == Attach::Auto && at != Hooked::Xdp { " (another program has its XDP hook)" } else { "" },
                pins.root().display()
            )),
            Ok((Attached::Swapped { old_program }, at)) => log.line(&format!(
                "took over {iface} from the pinned program {old_program} (replaced atomically by {}, at {})",
                if at == Hooked::Xdp { program.program_id()? } else { program.tc_program_id()? },
                at.name()
            )),
            Ok((Attached::Reattached, at)) => {
                log.line(&format!(
                    "the pinned link on {iface} was dead (interface re-created): attached anew at {}",
                    at.name()
                ));
            }
            Err(e) => {
                if !program.reused_state() && !pins.link().exists() {
                    // Nothing of ours was there before: leave nothing behind.
                    if let Err(e) = pins.remove() {
                        tracing::warn!("{e}");
                    }
                }
                return Err(e).with_context(|| format!("attaching to interface {iface}"));
            }
        }
    }
    for c in carried {
        // The new program runs already: a failure here costs at most a stale directory.
        match program.settle(&c) {
            Ok(n) => log.line(&format!("carried {n} allowance(s) over from another build's state")),
            Err(e) => log.line(&format!("error: settling the allowances carried over: {e}")),
        }
    }
    for (_, pins) in ifaces {
        program.share_maps(pins)?;
    }
    Ok((program, doors, addrs))
}

/// The addresses of every interface served, each once.
fn all_addrs(ifaces: &[(String, PinDir)], ipv4_only: bool) -> anyhow::Result<Vec<std::net::IpAddr>> {
    let mut addrs = Vec::new();
    for (iface, _) in ifaces {
        addrs.extend(
            knockd_user::daemon::interface_addrs(iface, ipv4_only)
                .with_context(|| format!("reading the addresses of {iface}"))?,
        );
    }
    addrs.sort_unstable();
    addrs.dedup();
    Ok(addrs)
}

/// How long knockd waits at start for an interface that does not exist yet (one the network's
/// configuration makes, say): below systemd's default start timeout of 90 s.
const INTERFACE_WAIT: std::time::Duration = std::time::Duration::from_mins(1);

/// Waits until every interface exists, up to `INTERFACE_WAIT`, saying which it waits for.
fn wait_for_interfaces(ifaces: &[(String, PinDir)], log: &KnockLog) -> anyhow::Result<()> {
    let missing = || -> Vec<&str> {
        ifaces.iter().map(|(i, _)| i.as_str()).filter(|i| knockd_user::kernel::netlink::ifindex(i).is_none()).collect()
    };
    if missing().is_empty() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    log.line(&format!("waiting up to {}s for interface {} to exist", INTERFACE_WAIT.as_secs(), missing().join(", ")));
    while !missing().is_empty() {
        if started.elapsed() > INTERFACE_WAIT {
            anyhow::bail!("interface {} did not appear within {}s", missing().join(", "), INTERFACE_WAIT.as_secs());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    log.line(&format!("every interface exists after {} ms", started.elapsed().as_millis()));
    Ok(())
}

/// The journal of pending stops, with what could not be read of it logged.
fn open_journal(state: &StateDir, log: &KnockLog) -> anyhow::Result<Opened> {
    let opened = Journal::open(&state.journal())?;
    for line in &opened.damage {
        log.line(&format!("error: {line}"));
    }
    Ok(opened)
}

/// The directories of a command that works on pinned state without running the daemon
/// (`--status`, `--unload`): the config's, or the defaults when it cannot be read.
fn side_options(args: &Args) -> Options {
    match Config::load(&args.config) {
        Ok(c) => c.options,
        Err(e) => {
            tracing::warn!("{e}: using the default directories");
            Options::default()
        }
    }
}

/// `--status`: reads each interface's pinned state.
fn status(args: &Args) -> anyhow::Result<()> {
    #[derive(serde::Serialize)]
    struct Status<'a> {
        interface: &'a str,
        /// `xdp`, `tcx`, `tc` (`cls_bpf`), or `none`.
        attached: &'static str,
        #[serde(flatten)]
        snapshot: &'a knockd_user::observe::status::Snapshot,
    }
    let options = side_options(args);
    for interface in args.interfaces(&options) {
        let labels = StateDir::read_labels(&args.state_dir(&options), &interface);
        let pins = PinDir::new(&args.bpf_dir(&options), &interface);
        let snapshot = knockd_user::observe::status::read(&pins, &labels)?;
        let attached = hooked_now(&interface, &pins).map_or("none", Hooked::name);
        if args.json {
            println!("{}", serde_json::to_string(&Status { interface: &interface, attached, snapshot: &snapshot })?);
        } else {
            print!("{}", snapshot.text(&format!("{interface} (attached at {attached})")));
        }
    }
    Ok(())
}

/// `--unload`: for each interface named, its journaled stops run and its pins go (and with
/// the link's last reference, the program leaves the interface).
fn unload(args: &Args) -> anyhow::Result<()> {
    let options = side_options(args);
    let log = Arc::new(KnockLog::open(options.log_file.as_deref().or(args.logfile.as_deref()), options.use_syslog));
    for interface in args.interfaces(&options) {
        let state = StateDir::lock(&args.state_dir(&options), &interface).context("stop the running knockd first")?;
        let journal = open_journal(&state, &log)?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async {
            let keeper = Keeper::start(
                Arc::clone(&log),
                journal.journal,
                journal.entries,
                options.max_commands.unwrap_or(DEFAULT_MAX_COMMANDS),
            );
            keeper.shutdown(SHUTDOWN_LIMIT).await;
        });
        let pins = PinDir::new(&args.bpf_dir(&options), &interface);
        if knockd_user::kernel::tc::detach_tc(&interface, &pins)? {
            log.line(&format!("unloaded: knockgate's TC program removed from {interface}"));
        }
        if pins.exists() {
            pins.remove()?;
            log.line(&format!("unloaded: knockgate removed from {interface} ({} unpinned)", pins.root().display()));
        } else {
            log.line(&format!("nothing pinned for {interface} in {}", pins.root().display()));
        }
    }
    Ok(())
}
