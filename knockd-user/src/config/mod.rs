//! The configuration model both forms are read into (knockd.conf's grammar, `knockd_form`,
//! and the TOML form, `toml_form`), and nothing of the running daemon: the fuzz target and
//! the parsers' tests need nothing else.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use knock_common::{
    PROTO_TCP, PROTO_UDP,
    secret::{
        DEFAULT_LENGTH,
        derive::{Params, Secret},
    },
};

pub mod check;
pub mod client_profile;
pub mod fleet;
pub mod knockd_form;
pub mod load;
pub mod one_time;
pub mod secret;
pub mod toml_form;
pub mod values;

/// knockd's `SEQ_TIMEOUT`.
pub const DEFAULT_SEQ_TIMEOUT: Duration = Duration::from_secs(25);
/// knockd's `CMD_TIMEOUT`.
pub const DEFAULT_CMD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a gate opening lasts unless `Gate_Timeout` says otherwise.
pub const DEFAULT_GATE_TIMEOUT: Duration = Duration::from_secs(30);
/// knockd's default interface.
pub const DEFAULT_INTERFACE: &str = "eth0";

/// A configuration error, printed as `file:line: message` (the client's profile files say
/// theirs the same way).
pub type ConfigError = knock_common::file_error::FileError;

/// One knock: a port and its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Knock {
    pub port: u16,
    pub proto: Proto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    #[must_use]
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => PROTO_TCP,
            Proto::Udp => PROTO_UDP,
        }
    }

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// `[options]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub use_syslog: bool,
    pub log_file: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub interface: Option<String>,
    /// knockgate: entries of the kernel table of attempts past their first knock.
    pub attempt_table_size: Option<u32>,
    /// knockgate: entries of the kernel table of attempts at their first knock.
    pub first_knock_table_size: Option<u32>,
    /// knockgate: entries of the kernel table of gate allowances.
    pub allow_table_size: Option<u32>,
    /// knockgate: the BPF filesystem directory for the pinned program and maps
    /// (`BPF_DIR/IFACE`); default `kernel::pin::DEFAULT_BPF_DIR`.
    pub bpf_dir: Option<PathBuf>,
    /// knockgate: the directory of the journal of pending stop commands; default
    /// `DEFAULT_STATE_DIR`.
    pub state_dir: Option<PathBuf>,
    /// knockgate: most commands running at once; default `commands::keeper::DEFAULT_MAX_COMMANDS`.
    pub max_commands: Option<u32>,
    /// knockgate: where `/metrics` is served (off when `None`).
    pub metrics_address: Option<std::net::SocketAddr>,
    /// knockgate: the hook the program runs at; `Attach::Auto` when the config names none.
    pub attach: Option<Attach>,
    /// knockgate: the fleet this node shares its opens with (`FleetServers`); `None` alone.
    pub fleet: Option<fleet::Fleet>,
}

/// `Attach`: where the program runs on an interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Attach {
    /// XDP where the interface has no XDP program, TC ingress where another program has it.
    #[default]
    Auto,
    /// XDP only: an interface with another XDP program is refused.
    Xdp,
    /// TC ingress (TCX from Linux 6.6, a `cls_bpf` filter on `clsact` below), behind whatever
    /// runs at XDP.
    Tc,
}

impl Attach {
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Attach::Auto => "auto",
            Attach::Xdp => "xdp",
            Attach::Tc => "tc",
        }
    }
}

impl Options {
    /// `Interface = eth0, eth1`: the interfaces named, in order.
    #[must_use]
    pub fn interfaces(&self) -> Vec<String> {
        self.interface
            .as_deref()
            .unwrap_or_default()
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|i| !i.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// `StateDir` when the config names none.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/knockgate";
/// Most `MaxCommands` accepted.
pub const MAX_MAX_COMMANDS: u32 = 4096;

/// A command setting for one address family: knockd tells "absent" (fall back to the IPv4
/// command) from "present but empty" (run nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum V6Command {
    #[default]
    SameAsV4,
    Set(String),
}

/// One door (a `[name]` section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Door {
    pub name: String,
    /// Line of the `[name]` header.
    pub line: usize,
    pub sequence: Vec<Knock>,
    pub seq_timeout: Duration,
    pub start_command: Option<String>,
    pub start_command_6: V6Command,
    pub cmd_timeout: Duration,
    pub stop_command: Option<String>,
    pub stop_command_6: V6Command,
    /// TCP flags that must be set / clear (`TCPFlags = syn,!ack`).
    pub flags_set: u8,
    pub flags_clear: u8,
    pub target: Option<IpAddr>,
    /// `One_Time_Sequences`: the file, and where the active sequence's line starts.
    pub one_time: Option<OneTime>,
    /// knockgate: what completing this door does to gated ports, in the kernel.
    pub gate: Gate,
    /// knockgate: drop this door's knock packets (no RST/ICMP answers a knock).
    pub stealth: bool,
    /// knockgate: a secret-keyed door (`secret_file`), whose sequence is derived per window
    /// and source; `sequence` is then empty.
    pub secret: Option<SecretDoor>,
}

/// A door's in-kernel gate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Gate {
    #[default]
    None,
    /// `Gate = 22/tcp, ...`: the knocker may open new connections to these ports for `ttl`.
    Open { ports: Vec<Knock>, ttl: Duration },
    /// `Gate_Close = 22/tcp, ...`: completing this door withdraws the knocker's allowance.
    Close { ports: Vec<Knock> },
}

impl Gate {
    #[must_use]
    pub fn ports(&self) -> &[Knock] {
        match self {
            Gate::None => &[],
            Gate::Open { ports, .. } | Gate::Close { ports } => ports,
        }
    }
}

/// A door's one-time sequences file (knockd's `One_Time_Sequences`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneTime {
    pub path: PathBuf,
    /// Byte offset of the line holding the active sequence (marked with `#` once used).
    pub offset: u64,
}

impl Door {
    #[must_use]
    pub fn new(name: String, line: usize) -> Self {
        Self {
            name,
            line,
            sequence: Vec::new(),
            seq_timeout: DEFAULT_SEQ_TIMEOUT,
            start_command: None,
            start_command_6: V6Command::SameAsV4,
            cmd_timeout: DEFAULT_CMD_TIMEOUT,
            stop_command: None,
            stop_command_6: V6Command::SameAsV4,
            flags_set: 0,
            flags_clear: 0,
            target: None,
            one_time: None,
            gate: Gate::None,
            stealth: false,
            secret: None,
        }
    }

    /// Whether `other` matches knocks exactly like this door (commands may differ), so
    /// attempts in progress can be kept across a reload.
    #[must_use]
    pub fn same_matching(&self, other: &Door) -> bool {
        self.name == other.name
            && self.sequence == other.sequence
            && self.seq_timeout == other.seq_timeout
            && self.flags_set == other.flags_set
            && self.flags_clear == other.flags_clear
            && self.target == other.target
            && self.gate == other.gate
            && self.stealth == other.stealth
            && self.secret == other.secret
    }

    /// The start command for a knocker of this family; `None` when there is nothing to run.
    #[must_use]
    pub fn start_for(&self, v6: bool) -> Option<&str> {
        pick(self.start_command.as_deref(), &self.start_command_6, v6)
    }

    /// The stop command for a knocker of this family; `None` when there is nothing to run.
    #[must_use]
    pub fn stop_for(&self, v6: bool) -> Option<&str> {
        pick(self.stop_command.as_deref(), &self.stop_command_6, v6)
    }
}

fn pick<'a>(v4: Option<&'a str>, v6cmd: &'a V6Command, v6: bool) -> Option<&'a str> {
    let cmd = match (v6, v6cmd) {
        (true, V6Command::Set(c)) => Some(c.as_str()),
        _ => v4,
    };
    cmd.filter(|c| !c.is_empty())
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub options: Options,
    pub doors: Vec<Door>,
}

/// A door whose sequence is derived from a key (`secret_file`), per window and source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretDoor {
    pub path: PathBuf,
    pub key: Secret,
    pub params: Params,
    /// In a fleet: an open waits until the knock's single use is claimed across the fleet
    /// (`FleetSingleUse`); the kernel leaves the gate to the daemon.
    pub fleet_claim: bool,
}

impl SecretDoor {
    /// What a guesser who saw this window's first port must find, in bits.
    #[must_use]
    pub fn guess_bits(&self) -> f64 {
        self.params.guess_bits()
    }

    /// A warning for a knock short enough to brute-force (under 48 bits), if it is.
    #[must_use]
    pub fn weakness(&self) -> Option<String> {
        (self.params.length < DEFAULT_LENGTH).then(|| {
            format!(
                "knock_length {} leaves {:.0} bits to guess once a window's first port is seen: {DEFAULT_LENGTH} or more gives 48",
                self.params.length,
                self.guess_bits()
            )
        })
    }

    #[must_use]
    pub fn proto(&self) -> Proto {
        if self.params.proto == PROTO_UDP { Proto::Udp } else { Proto::Tcp }
    }
}
