//! The knockd.conf grammar (knockd 0.8, reference §1), parsed strictly: where knockd
//! silently misreads a value (port 0 from `abc`, a trailing comma, `syn, ack`), this
//! parser either takes the obvious meaning or refuses with `file:line: message`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use knock_common::MAX_DOORS;

use crate::config::{
    Config, ConfigError, DEFAULT_GATE_TIMEOUT, Door, Gate, OneTime, V6Command, fleet, one_time,
    secret::Draft,
    values::{
        absolute_dir, apply_tcp_flags, max_commands, parse_address, parse_attach, parse_bool, parse_gate_ports,
        parse_sequence, secret_door_fits, table_size,
    },
};

/// Parses knockd.conf text; `path` only names the file in errors.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    Parser {
        path,
        config: Config::default(),
        section: Section::None,
        drafts: Vec::new(),
        fleet: fleet::Draft::default(),
    }
    .run(text)
}

enum Section {
    None,
    Options,
    /// Index into `config.doors`.
    Door(usize),
}

struct Parser<'a> {
    path: &'a Path,
    config: Config,
    section: Section,
    /// Per door, its secret directives so far.
    drafts: Vec<Draft>,
    /// The fleet options so far.
    fleet: fleet::Draft,
}

impl Parser<'_> {
    fn err(&self, line: usize, message: impl Into<String>) -> ConfigError {
        ConfigError::on_line(self.path, line, message.into())
    }

    fn run(mut self, text: &str) -> Result<Config, ConfigError> {
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with('[') && line.ends_with(']') && line.len() >= 2 {
                self.section(n, &line[1..line.len() - 1])?;
            } else {
                self.directive(n, line)?;
            }
        }
        self.config.options.fleet =
            std::mem::take(&mut self.fleet).finish(fleet::hostname).map_err(|(line, m)| self.err(line, m))?;
        for (door, draft) in self.config.doors.iter_mut().zip(std::mem::take(&mut self.drafts)) {
            let line = draft.line();
            let err = |line: usize, message: String| ConfigError::on_line(self.path, line, message);
            door.secret = draft.finish().map_err(|(line, m)| err(line, m))?;
            if let (Some(_), Some(line)) = (&door.secret, line) {
                secret_door_fits(door).map_err(|m| err(line, m))?;
            }
        }
        for door in &self.config.doors {
            if door.sequence.is_empty() && door.secret.is_none() {
                return Err(self.err(door.line, format!("section '{}' has an empty knock sequence", door.name)));
            }
            if matches!(&door.gate, Gate::Open { ports, .. } if ports.is_empty()) {
                return Err(self.err(door.line, format!("door '{}' has gate_timeout but no gate ports", door.name)));
            }
        }
        Ok(self.config)
    }

    fn section(&mut self, n: usize, name: &str) -> Result<(), ConfigError> {
        if name.is_empty() {
            return Err(self.err(n, "bad section name: []"));
        }
        // knockd: `[options]` is case-sensitive; any other name is a door.
        if name == "options" {
            self.section = Section::Options;
            return Ok(());
        }
        if self.config.doors.len() >= MAX_DOORS as usize {
            return Err(self.err(n, format!("too many doors: at most {MAX_DOORS} are supported")));
        }
        self.config.doors.push(Door::new(name.to_owned(), n));
        self.drafts.push(Draft::default());
        self.section = Section::Door(self.config.doors.len() - 1);
        Ok(())
    }

    fn directive(&mut self, n: usize, line: &str) -> Result<(), ConfigError> {
        let Some((key, value)) = line.split_once('=') else {
            // knockd accepts the bare word `UseSyslog` in any section.
            if line.eq_ignore_ascii_case("usesyslog") {
                self.config.options.use_syslog = true;
                return Ok(());
            }
            return Err(self.err(n, format!("expected `key = value`, found '{line}'")));
        };
        let key = key.trim().to_ascii_uppercase();
        let value = value.trim();
        match self.section {
            Section::None => Err(self.err(
                n,
                format!(
                    "'{}' is outside any section: all directives must belong to a section",
                    key.to_ascii_lowercase()
                ),
            )),
            Section::Options => self.option(n, &key, value),
            Section::Door(i) => {
                if self.drafts[i].directive(n, &key, value).map_err(|m| self.err(n, m))? {
                    return Ok(());
                }
                let mut door = self.config.doors[i].clone();
                self.door_directive(n, &mut door, &key, value)?;
                self.config.doors[i] = door;
                Ok(())
            }
        }
    }

    fn option(&mut self, n: usize, key: &str, value: &str) -> Result<(), ConfigError> {
        if self.fleet.option(n, key, value).map_err(|m| self.err(n, m))? {
            return Ok(());
        }
        let err = |line: usize, message: String| ConfigError::on_line(self.path, line, message);
        let opts = &mut self.config.options;
        match key {
            "LOGFILE" => opts.log_file = non_empty(value).map(PathBuf::from),
            "PIDFILE" => opts.pid_file = non_empty(value).map(PathBuf::from),
            "INTERFACE" => opts.interface = non_empty(value).map(str::to_owned),
            "ATTEMPTTABLESIZE" => opts.attempt_table_size = Some(table_size(value).map_err(|m| err(n, m))?),
            "ALLOWTABLESIZE" => opts.allow_table_size = Some(table_size(value).map_err(|m| err(n, m))?),
            "FIRSTKNOCKTABLESIZE" => {
                opts.first_knock_table_size = Some(table_size(value).map_err(|m| err(n, m))?);
            }
            "BPFDIR" => opts.bpf_dir = Some(absolute_dir(value).map_err(|m| err(n, m))?),
            "STATEDIR" => opts.state_dir = Some(absolute_dir(value).map_err(|m| err(n, m))?),
            "MAXCOMMANDS" => opts.max_commands = Some(max_commands(value).map_err(|m| err(n, m))?),
            "ATTACH" => opts.attach = Some(parse_attach(value).map_err(|m| err(n, m))?),
            "METRICSADDRESS" => {
                opts.metrics_address = Some(parse_address(value).map_err(|m| err(n, m))?);
            }
            "USESYSLOG" => {
                return Err(self.err(n, "UseSyslog takes no value: write the bare word `UseSyslog`"));
            }
            _ => {
                return Err(self.err(n, format!("unknown option '{}' in [options]", key.to_ascii_lowercase())));
            }
        }
        Ok(())
    }

    fn door_directive(&self, n: usize, door: &mut Door, key: &str, value: &str) -> Result<(), ConfigError> {
        match key {
            "SEQUENCE" => {
                door.sequence = parse_sequence(value).map_err(|m| self.err(n, m))?;
                door.one_time = None;
            }
            "ONE_TIME_SEQUENCES" => {
                let path = PathBuf::from(value);
                let (sequence, offset) = one_time::load(&path, &door.name).map_err(|e| self.err(n, e))?;
                door.sequence = sequence;
                door.one_time = Some(OneTime { path, offset });
            }
            "SEQ_TIMEOUT" | "TIMEOUT" => door.seq_timeout = self.seconds(n, key, value)?,
            "CMD_TIMEOUT" => door.cmd_timeout = self.seconds(n, key, value)?,
            "START_COMMAND" | "COMMAND" => door.start_command = Some(value.to_owned()),
            "START_COMMAND_6" | "COMMAND_6" => door.start_command_6 = V6Command::Set(value.to_owned()),
            "STOP_COMMAND" => door.stop_command = Some(value.to_owned()),
            "STOP_COMMAND_6" => door.stop_command_6 = V6Command::Set(value.to_owned()),
            "TCPFLAGS" => apply_tcp_flags(door, value).map_err(|m| self.err(n, m))?,
            "GATE" | "GATE_CLOSE" => {
                let ports = parse_gate_ports(value).map_err(|m| self.err(n, m))?;
                door.gate = match (&door.gate, key) {
                    (Gate::Close { .. }, "GATE") | (Gate::Open { .. }, "GATE_CLOSE") => {
                        return Err(self.err(n, format!("door '{}' cannot both open and close a gate", door.name)));
                    }
                    (Gate::Open { ttl, .. }, _) => Gate::Open { ports, ttl: *ttl },
                    (_, "GATE") => Gate::Open { ports, ttl: DEFAULT_GATE_TIMEOUT },
                    _ => Gate::Close { ports },
                };
            }
            "GATE_TIMEOUT" => {
                let ttl = self.seconds(n, key, value)?;
                door.gate = match std::mem::take(&mut door.gate) {
                    Gate::Open { ports, .. } => Gate::Open { ports, ttl },
                    Gate::None => Gate::Open { ports: Vec::new(), ttl },
                    Gate::Close { .. } => {
                        return Err(self.err(n, "gate_timeout belongs to a door with `gate`, not `gate_close`"));
                    }
                };
            }
            "STEALTH" => door.stealth = parse_bool(value).map_err(|m| self.err(n, m))?,
            "TARGET" => {
                door.target =
                    Some(value.parse().map_err(|_| self.err(n, format!("target '{value}' is not an IP address")))?);
            }
            "LOGFILE" | "PIDFILE" | "INTERFACE" => {
                return Err(self.err(
                    n,
                    format!("'{}' belongs in [options], not in door '{}'", key.to_ascii_lowercase(), door.name),
                ));
            }
            _ => {
                return Err(
                    self.err(n, format!("unknown directive '{}' in door '{}'", key.to_ascii_lowercase(), door.name))
                );
            }
        }
        Ok(())
    }

    fn seconds(&self, n: usize, key: &str, value: &str) -> Result<Duration, ConfigError> {
        value.parse::<u32>().map(|s| Duration::from_secs(u64::from(s))).map_err(|_| {
            self.err(n, format!("{} '{value}' is not a whole number of seconds", key.to_ascii_lowercase()))
        })
    }
}

fn non_empty(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

#[cfg(test)]
mod tests {
    use knock_common::TcpFlags;

    use super::*;
    use crate::config::{Attach, DEFAULT_CMD_TIMEOUT, DEFAULT_SEQ_TIMEOUT, Knock, Options, Proto};

    const DEBIAN_EXAMPLE: &str = include_str!("../../../examples/knockd.conf");

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("knockd.conf"), text)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    fn tcp(port: u16) -> Knock {
        Knock { port, proto: Proto::Tcp }
    }

    #[test]
    fn knockd_example_parses() {
        let c = parse(DEBIAN_EXAMPLE).unwrap();
        assert_eq!(c.options.log_file.as_deref(), Some(Path::new("/var/log/knockd.log")));
        assert_eq!(c.doors.len(), 2);
        let open = &c.doors[0];
        assert_eq!(open.name, "openSSH");
        assert_eq!(open.sequence, [tcp(7000), tcp(8000), tcp(9000)]);
        assert_eq!(open.seq_timeout, Duration::from_secs(5));
        assert_eq!(open.flags_set, TcpFlags::SYN);
        assert_eq!(open.flags_clear, 0);
        assert_eq!(open.start_for(false), Some("/sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT"));
        assert_eq!(open.stop_for(false), None);
        assert_eq!(open.cmd_timeout, DEFAULT_CMD_TIMEOUT);
        assert_eq!(c.doors[1].sequence, [tcp(9000), tcp(8000), tcp(7000)]);
    }

    #[test]
    fn start_stop_form_and_defaults() {
        let c = parse(
            "[openclose]\nsequence = 7000:udp, 8000:TCP ,9000\nstart_command = a %IP%\ncmd_timeout = 10\nstop_command = b %IP%\n",
        )
        .unwrap();
        let d = &c.doors[0];
        assert_eq!(d.sequence, [Knock { port: 7000, proto: Proto::Udp }, tcp(8000), tcp(9000)]);
        assert_eq!(d.start_for(false), Some("a %IP%"));
        assert_eq!(d.stop_for(false), Some("b %IP%"));
        assert_eq!(d.seq_timeout, DEFAULT_SEQ_TIMEOUT);
        assert_eq!((d.flags_set, d.flags_clear), (0, 0));
    }

    #[test]
    fn keys_are_case_insensitive_and_aliases_work() {
        let c = parse("[d]\nSEQUENCE=1\nTimeout=3\nCommand=x\nCommand_6=y\nTcpFlags=SYN,!ack\n").unwrap();
        let d = &c.doors[0];
        assert_eq!(d.seq_timeout, Duration::from_secs(3));
        assert_eq!(d.start_for(false), Some("x"));
        assert_eq!(d.start_for(true), Some("y"));
        assert_eq!((d.flags_set, d.flags_clear), (TcpFlags::SYN, TcpFlags::ACK));
    }

    #[test]
    fn v6_commands_fall_back_or_disable() {
        let c =
            parse("[a]\nsequence=1\ncommand=v4 %IP%\n[b]\nsequence=2\ncommand=v4\nstart_command_6 =\nstop_command=s\n")
                .unwrap();
        assert_eq!(c.doors[0].start_for(true), Some("v4 %IP%"));
        assert_eq!(c.doors[1].start_for(true), None);
        assert_eq!(c.doors[1].stop_for(true), Some("s"));
    }

    #[test]
    fn tcpflags_accept_spaces_and_last_mention_wins() {
        let c = parse("[d]\nsequence=1\ntcpflags = syn, ack\ntcpflags = !syn\n").unwrap();
        assert_eq!((c.doors[0].flags_set, c.doors[0].flags_clear), (TcpFlags::ACK, TcpFlags::SYN));
    }

    #[test]
    fn bare_usesyslog_and_value_in_equals() {
        let c = parse("UseSyslog\n[options]\nlogfile = /tmp/a=b\n").unwrap();
        assert!(c.options.use_syslog);
        assert_eq!(c.options.log_file.as_deref(), Some(Path::new("/tmp/a=b")));
    }

    #[test]
    fn bad_files_name_the_line_and_the_value() {
        let cases: &[(&str, &str)] = &[
            ("[d]\nsequence = 7000,70000\n", "knockd.conf:2: port 70000 in '70000' is out of range 1-65535"),
            ("[d]\nsequence = 7000,abc\n", "knockd.conf:2: 'abc' in 'abc' is not a port number"),
            ("[d]\nsequence = 7000,,8000\n", "knockd.conf:2: empty step in sequence (a doubled or trailing comma?)"),
            ("[d]\nsequence = 7000,\n", "knockd.conf:2: empty step in sequence (a doubled or trailing comma?)"),
            ("[d]\nsequence =\n", "knockd.conf:2: empty step in sequence (a doubled or trailing comma?)"),
            ("[d]\nsequence = 0\n", "knockd.conf:2: port 0 in '0' is out of range 1-65535"),
            ("[d]\nsequence = 7000:icmp\n", "knockd.conf:2: unknown protocol 'icmp' in '7000:icmp' (use tcp or udp)"),
            ("[d]\nsequence = 1\nfoo = bar\n", "knockd.conf:3: unknown directive 'foo' in door 'd'"),
            (
                "sequence = 1\n",
                "knockd.conf:1: 'sequence' is outside any section: all directives must belong to a section",
            ),
            (
                "[d]\nsequence = 1\ntcpflags = syn,bogus\n",
                "knockd.conf:3: unrecognized tcp flag 'bogus' (use fin, syn, rst, psh, ack, urg, each optionally with !)",
            ),
            ("\n[d]\nseq_timeout = 5\n", "knockd.conf:2: section 'd' has an empty knock sequence"),
            (
                "[d]\nsequence = 1\nseq_timeout = 5s\n",
                "knockd.conf:3: seq_timeout '5s' is not a whole number of seconds",
            ),
            (
                "[d]\nsequence = 1\ncmd_timeout = -1\n",
                "knockd.conf:3: cmd_timeout '-1' is not a whole number of seconds",
            ),
            (
                "[options]\nUseSyslog = yes\n",
                "knockd.conf:2: UseSyslog takes no value: write the bare word `UseSyslog`",
            ),
            ("[options]\nsequence = 1\n", "knockd.conf:2: unknown option 'sequence' in [options]"),
            (
                "[options]\nAttemptTableSize = 0\n",
                "knockd.conf:2: table size '0' is not a whole number from 1 to 16777216",
            ),
            (
                "[options]\nFirstKnockTableSize = lots\n",
                "knockd.conf:2: table size 'lots' is not a whole number from 1 to 16777216",
            ),
            (
                "[d]\nsequence = 1\ninterface = eth0\n",
                "knockd.conf:3: 'interface' belongs in [options], not in door 'd'",
            ),
            ("[]\n", "knockd.conf:1: bad section name: []"),
            ("[d]\nsequence = 1\njunk\n", "knockd.conf:3: expected `key = value`, found 'junk'"),
            ("[d]\nsequence = 1\ntarget = host.example\n", "knockd.conf:3: target 'host.example' is not an IP address"),
        ];
        for (text, want) in cases {
            assert_eq!(&err(text), want, "for {text:?}");
        }
    }

    #[test]
    fn sequence_length_and_door_count_are_bounded() {
        let long: Vec<String> = (1..=33).map(|p| p.to_string()).collect();
        let text = format!("[d]\nsequence = {}\n", long.join(","));
        assert_eq!(err(&text), "knockd.conf:2: sequence has 33 steps: at most 32 are supported");
        let ok: Vec<String> = (1..=32).map(|p| p.to_string()).collect();
        assert!(parse(&format!("[d]\nsequence = {}\n", ok.join(","))).is_ok());
        let many: String = (0..33).map(|i| format!("[d{i}]\nsequence = {}\n", i + 1)).collect::<Vec<_>>().concat();
        assert_eq!(err(&many), "knockd.conf:65: too many doors: at most 32 are supported");
    }

    #[test]
    fn options_section_name_is_case_sensitive_like_knockd() {
        // `[Options]` is a door; `logfile` in a door is refused.
        assert_eq!(
            err("[Options]\nlogfile = /x\n"),
            "knockd.conf:2: 'logfile' belongs in [options], not in door 'Options'"
        );
    }

    #[test]
    fn gate_directives() {
        let c = parse("[open]\nsequence = 1\ngate = 22/tcp, 51820/UDP\ngate_timeout = 5\nstealth = yes\n[close]\nsequence = 2\ngate_close = 22/tcp\n").unwrap();
        assert_eq!(
            c.doors[0].gate,
            Gate::Open { ports: vec![tcp(22), Knock { port: 51820, proto: Proto::Udp }], ttl: Duration::from_secs(5) }
        );
        assert!(c.doors[0].stealth);
        assert_eq!(c.doors[1].gate, Gate::Close { ports: vec![tcp(22)] });
        assert_eq!(
            parse("[d]\nsequence = 1\ngate = 22/tcp\n").unwrap().doors[0].gate,
            Gate::Open { ports: vec![tcp(22)], ttl: DEFAULT_GATE_TIMEOUT }
        );
        for (text, want) in [
            (
                "[d]\nsequence = 1\ngate = 22\n",
                "knockd.conf:3: gate port '22' needs a protocol: write e.g. 22/tcp or 51820/udp",
            ),
            (
                "[d]\nsequence = 1\ngate = 22/sctp\n",
                "knockd.conf:3: unknown protocol 'sctp' in '22:sctp' (use tcp or udp)",
            ),
            (
                "[d]\nsequence = 1\ngate = 22/tcp\ngate_close = 22/tcp\n",
                "knockd.conf:4: door 'd' cannot both open and close a gate",
            ),
            ("[d]\nsequence = 1\nstealth = maybe\n", "knockd.conf:3: 'maybe' is not yes or no"),
            ("[d]\nsequence = 1\ngate_timeout = 5\n", "knockd.conf:1: door 'd' has gate_timeout but no gate ports"),
            (
                "[d]\nsequence = 1\ngate = 1/tcp,2/tcp,3/tcp,4/tcp,5/tcp,6/tcp,7/tcp,8/tcp,9/tcp\n",
                "knockd.conf:3: 9 gate ports: at most 8 are supported",
            ),
        ] {
            assert_eq!(err(text), want, "{text:?}");
        }
    }

    #[test]
    fn attach_option() {
        assert_eq!(parse("[options]\nAttach = TC\n").unwrap().options.attach, Some(Attach::Tc));
        assert_eq!(parse("[options]\nattach = auto\n").unwrap().options.attach, Some(Attach::Auto));
        assert_eq!(parse("").unwrap().options.attach, None);
        assert_eq!(err("[options]\nattach = ebpf\n"), "knockd.conf:2: attach 'ebpf' is not auto, xdp or tc");
        let toml = Config::parse(Path::new("t.toml"), "[options]\nattach = \"xdp\"\n").unwrap();
        assert_eq!(toml.options.attach, Some(Attach::Xdp));
        let again = Config::parse(Path::new("t.toml"), &crate::config::toml_form::dump(&toml).unwrap()).unwrap();
        assert_eq!(again.options.attach, Some(Attach::Xdp), "dumped and read back");
    }

    #[test]
    fn interface_lists() {
        let c = parse("[options]\ninterface = eth0, eth1 eth2\n[d]\nsequence = 1\n").unwrap();
        assert_eq!(c.options.interfaces(), ["eth0", "eth1", "eth2"]);
        assert!(Options::default().interfaces().is_empty());
    }
}
