//! `knockd --client-profile DOOR`: a door of the config as the client's profile (one `[DOOR]`
//! table of `knock.toml`, `knock_common::profile`), so that client and server cannot disagree;
//! and which doors a profile cannot open (`--check`).

use knock_common::{
    TcpFlags,
    profile::{self, render},
};

use crate::config::{Door, Proto};

/// Why a client cannot open `door` with `knock` and a profile alone, if it cannot.
#[must_use]
pub fn gap(door: &Door) -> Option<String> {
    if let Some(ot) = &door.one_time {
        return Some(format!(
            "its sequences are One_Time_Sequences ({}): each opens once, so a profile cannot hold one",
            ot.path.display()
        ));
    }
    let tcp = match &door.secret {
        Some(s) => s.proto() == Proto::Tcp,
        None => door.sequence.iter().any(|k| k.proto == Proto::Tcp),
    };
    // `knock` sends a TCP knock as a connect()'s SYN, with no other flag.
    let sent = TcpFlags::SYN;
    if tcp && (door.flags_set & !sent != 0 || door.flags_clear & sent != 0) {
        return Some(format!(
            "its TCPFlags ({}) ask for more than the plain SYN that knock sends",
            crate::config::values::tcp_flags_text(door).join(",")
        ));
    }
    None
}

/// What went wrong making a profile.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("no door '{0}' in {1} (its doors: {2})")]
    NoDoor(String, String, String),
    #[error("door '{0}' cannot be opened from a profile: {1}")]
    Gap(String, String),
    #[error("writing the profile: {0}")]
    Toml(#[from] toml::ser::Error),
}

/// The `[DOOR]` table for door `name` of `doors` (read from `config`), knocked at `host`.
pub fn for_door(doors: &[Door], config: &std::path::Path, name: &str, host: &str) -> Result<String, ProfileError> {
    let Some(door) = doors.iter().find(|d| d.name == name) else {
        let names: Vec<&str> = doors.iter().map(|d| d.name.as_str()).collect();
        return Err(ProfileError::NoDoor(name.to_owned(), config.display().to_string(), names.join(", ")));
    };
    if let Some(why) = gap(door) {
        return Err(ProfileError::Gap(name.to_owned(), why));
    }
    let mut comment =
        vec![format!("knockd --client-profile {name}: door '{name}' of {}; append it to knock.toml", config.display())];
    let spec = match &door.secret {
        Some(s) => {
            comment.push(
                "secret_file is the key's path on the server: copy the key to the client (mode 0600) and change the path if it differs; the key is never printed"
                    .to_owned(),
            );
            profile::Door::Secret {
                file: s.path.clone(),
                length: s.params.length,
                window: s.params.window_secs,
                udp: s.proto() == Proto::Udp,
            }
        }
        None => {
            profile::Door::Sequence(door.sequence.iter().map(|k| format!("{}:{}", k.port, k.proto.name())).collect())
        }
    };
    Ok(render(name, host, &spec, &comment)?)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use knock_common::profile::{Knocks, Profiles};

    use super::*;
    use crate::config::Config;

    #[test]
    fn a_door_s_profile_parses_back_to_the_door() {
        let c = Config::parse(
            Path::new("t.conf"),
            "[ssh]\nsequence = 7000,8000:udp,9000\n[ot]\none_time_sequences = /nonexistent\n",
        );
        // One_Time_Sequences needs its file, so a one-time door does not parse here:
        // `doors_a_profile_cannot_open` makes one by hand.
        assert!(c.is_err());
        let c = Config::parse(Path::new("t.conf"), "[ssh]\nsequence = 7000,8000:udp,9000\ntcpflags = syn\n").unwrap();
        let text = for_door(&c.doors, Path::new("t.conf"), "ssh", "198.18.0.1").unwrap();
        let p = Profiles::parse(Path::new("knock.toml"), &text).unwrap();
        let ssh = &p.tables["ssh"];
        assert_eq!(ssh.host.value, "198.18.0.1");
        let Knocks::Sequence(seq) = &ssh.knocks else { panic!("{text}") };
        assert_eq!(seq.value, ["7000:tcp", "8000:udp", "9000:tcp"]);
        let e = for_door(&c.doors, Path::new("t.conf"), "nope", "h").unwrap_err().to_string();
        assert_eq!(e, "no door 'nope' in t.conf (its doors: ssh)");
    }

    #[test]
    fn doors_a_profile_cannot_open() {
        let c = Config::parse(Path::new("t.conf"), "[fin]\nsequence = 7000\ntcpflags = fin\n[udp]\nsequence = 1:udp\ntcpflags = fin\n[ack]\nsequence = 1\ntcpflags = syn,!ack\n").unwrap();
        assert_eq!(
            gap(&c.doors[0]).as_deref(),
            Some("its TCPFlags (fin) ask for more than the plain SYN that knock sends")
        );
        assert_eq!(gap(&c.doors[1]), None, "flags do not apply to UDP");
        assert_eq!(gap(&c.doors[2]), None, "a plain SYN has no ACK");
        let e = for_door(&c.doors, Path::new("t.conf"), "fin", "h").unwrap_err().to_string();
        assert!(e.starts_with("door 'fin' cannot be opened from a profile: its TCPFlags"), "{e}");
        let mut ot = c.doors[2].clone();
        ot.one_time = Some(crate::config::OneTime { path: "/etc/knockd/ot".into(), offset: 0 });
        assert!(gap(&ot).is_some_and(|g| g.starts_with("its sequences are One_Time_Sequences (/etc/knockd/ot)")));
    }
}
