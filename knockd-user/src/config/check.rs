//! `knockd --check`: a config read and validated as the daemon would, one line per door.

use crate::config::{Door, Gate, Knock, values::tcp_flags_text};

fn ports(knocks: &[Knock]) -> String {
    knocks.iter().map(|k| format!("{}/{}", k.port, k.proto.name())).collect::<Vec<_>>().join(",")
}

/// What `door` matches and does, in one line (without its name).
#[must_use]
pub fn summary(door: &Door) -> String {
    let knock = match &door.secret {
        None => format!("sequence {}", ports(&door.sequence)),
        Some(s) => format!(
            "secret {}: {} {} ports, window {}s, {:.0} bits to guess{}",
            s.path.display(),
            s.params.length,
            s.proto().name(),
            s.params.window_secs,
            s.guess_bits(),
            s.weakness().map_or(String::new(), |w| format!(" (warning: {w})"))
        ),
    };
    let mut parts = vec![knock, format!("seq_timeout {}s", door.seq_timeout.as_secs())];
    let flags = tcp_flags_text(door);
    if !flags.is_empty() {
        parts.push(format!("tcpflags {}", flags.join(",")));
    }
    if let Some(t) = door.target {
        parts.push(format!("target {t}"));
    }
    if let Some(ot) = &door.one_time {
        parts.push(format!("one-time sequences {}", ot.path.display()));
    }
    match &door.gate {
        Gate::None => {}
        Gate::Open { ports: p, ttl } => parts.push(format!("gate {} for {}s", ports(p), ttl.as_secs())),
        Gate::Close { ports: p } => parts.push(format!("gate_close {}", ports(p))),
    }
    if door.stealth {
        parts.push("stealth".to_owned());
    }
    match (
        door.start_for(false).is_some() || door.start_for(true).is_some(),
        door.stop_for(false).is_some() || door.stop_for(true).is_some(),
    ) {
        (true, true) => parts.push(format!("start and stop commands ({}s apart)", door.cmd_timeout.as_secs())),
        (true, false) => parts.push("command".to_owned()),
        _ => {}
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    #[test]
    fn one_line_per_door() {
        let c = Config::parse(
            Path::new("t"),
            "[a]\nsequence = 7000,8000:udp\nseq_timeout = 5\ntcpflags = syn,!ack\ngate = 22/tcp\ngate_timeout = 9\nstealth = yes\n\
             [b]\nsequence = 1\nstart_command = x\nstop_command = y\ncmd_timeout = 3\n",
        )
        .unwrap();
        let lines: Vec<String> = c.doors.iter().map(summary).collect();
        assert_eq!(
            lines,
            [
                "sequence 7000/tcp,8000/udp; seq_timeout 5s; tcpflags syn,!ack; gate 22/tcp for 9s; stealth",
                "sequence 1/tcp; seq_timeout 25s; start and stop commands (3s apart)",
            ]
        );
    }
}
