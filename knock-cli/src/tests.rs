//! The command line and profiles, as `Plan` makes them into a run.

use std::{
    net::IpAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use knock_common::PROTO_UDP;

use crate::{
    args::try_parse,
    plan::{AfterKnock, Knock, Plan},
    ports::Proto,
};

/// A directory of its own with files in it, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("knock-cli-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Writes `name` with `text` and `mode`; returns its path.
    fn file(&self, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn key(&self) -> PathBuf {
        self.file("k", "00112233445566778899aabbccddeeff\n", 0o600)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).unwrap();
    }
}

fn plan(argv: &[&str]) -> anyhow::Result<Plan> {
    Plan::new(&try_parse(argv).unwrap())
}

fn ports(p: &Plan) -> &[(u16, Proto)] {
    match &p.knock {
        Knock::Ports(h) => h,
        Knock::Secret { .. } => panic!("a secret knock: {p:?}"),
    }
}

#[test]
fn knock_0_8_command_lines() {
    let a = try_parse(&["-v", "198.18.0.1", "7000", "8000", "9000"]).unwrap();
    assert!(a.verbose && !a.udp && a.delay.is_none());
    assert_eq!(a.host.as_deref(), Some("198.18.0.1"));
    assert_eq!(a.ports, ["7000", "8000", "9000"]);
    let a = try_parse(&["-u", "-d", "200", "-6", "host", "1:tcp"]).unwrap();
    assert!(a.udp && a.ipv6 && !a.ipv4);
    assert_eq!(a.delay, Some(200));
    let a = try_parse(&["--udp", "--delay", "5", "--ipv4", "--verbose", "h", "1"]).unwrap();
    assert!(a.udp && a.ipv4 && a.verbose);
    let p = plan(&["-u", "-d", "200", "198.18.0.1", "7000", "8000:tcp"]).unwrap();
    assert_eq!(ports(&p), [(7000, Proto::Udp), (8000, Proto::Udp)]);
    assert_eq!((p.delay_ms, p.host.as_str()), (200, "198.18.0.1"));
}

#[test]
fn bad_command_lines_are_refused() {
    assert!(try_parse(&["-4", "-6", "host", "1"]).is_err());
    assert!(try_parse(&["-d", "-1", "host", "1"]).is_err(), "negative delay");
    assert!(try_parse(&["-x", "host", "1"]).is_err());
    assert!(try_parse(&["--profile", "a", "--no-profile"]).is_err());
    let dir = Dir::new("bad");
    let none = dir.0.join("none.toml");
    let none = none.to_str().unwrap();
    let e = plan(&["--profiles", none, "198.18.0.1"]).unwrap_err().to_string();
    assert!(e.contains("none.toml: No such file"), "a file named by --profiles must exist: {e}");
    let empty = dir.file("empty.toml", "", 0o600);
    let e = plan(&["--profiles", empty.to_str().unwrap(), "198.18.0.1"]).unwrap_err().to_string();
    assert!(e.starts_with("no PORT given, and '198.18.0.1' is no profile in"), "{e}");
    let e = plan(&["198.18.0.1", "7000", "70000"]).unwrap_err().to_string();
    assert_eq!(e, "port '70000' is out of range 1-65535", "every port is checked before one is sent");
    let e = plan(&["--print", "198.18.0.1", "7000"]).unwrap_err().to_string();
    assert!(e.contains("belong to a secret door's knock"), "{e}");
}

#[test]
fn secret_command_lines() {
    let dir = Dir::new("secret");
    let key = dir.key();
    let k = key.to_str().unwrap();
    let p = plan(&["--secret-file", k, "--length", "6", "--window", "10", "--source", "198.18.0.9", "h"]).unwrap();
    let Knock::Secret { params, source, .. } = &p.knock else { panic!() };
    assert_eq!((params.length, params.window_secs, *source), (6, 10, Some("198.18.0.9".parse().unwrap())));
    let p = plan(&["--secret-file", k, "--no-profile", "h"]).unwrap();
    let Knock::Secret { params, .. } = &p.knock else { panic!() };
    assert_eq!((params.length, params.window_secs), (4, 30), "the doors' defaults");
    assert!(try_parse(&["--secret-file", k, "--length", "9", "h"]).is_err(), "length 2..8");
    assert!(try_parse(&["--secret-file", k, "--window", "0", "h"]).is_err());
    let e = plan(&["--secret-file", k, "h", "7000"]).unwrap_err().to_string();
    assert!(e.contains("give no PORT"), "{e}");
    assert!(try_parse(&["--generate-secret"]).is_ok());
    assert!(try_parse(&["--generate-secret", "h"]).is_err());
    assert!(try_parse(&["--secret-file", k]).is_err(), "a HOST");
}

#[test]
fn print_gives_the_shared_test_vectors() {
    // The same vectors the XDP program's tests open the door with.
    let dir = Dir::new("vectors");
    for (i, v) in knock_common::secret::derive::VECTORS.iter().enumerate() {
        let key = dir.file(&format!("v{i}"), v.secret, 0o600);
        let (length, window) = (v.length.to_string(), v.window_secs.to_string());
        let mut argv = vec!["--secret-file", key.to_str().unwrap(), "--length", &length, "--window", &window];
        argv.extend(["--source", v.source, "--print", "--no-profile"]);
        if v.udp {
            argv.push("-u");
        }
        argv.push(v.source);
        let crate::plan::Target { hits, bind, .. } = plan(&argv).unwrap().ports(v.unix_secs).unwrap();
        let want: Vec<(u16, Proto)> =
            v.ports.iter().map(|&p| (p, if v.udp { Proto::Udp } else { Proto::Tcp })).collect();
        assert_eq!(hits, want, "vector {i}");
        assert_eq!(bind, None, "--source is not bound to");
    }
}

#[test]
fn a_key_file_others_can_read_is_refused() {
    let dir = Dir::new("open");
    let key = dir.file("k", "00112233445566778899aabbccddeeff", 0o644);
    let e = plan(&["--secret-file", key.to_str().unwrap(), "--print", "198.18.0.1"]).unwrap_err().to_string();
    assert!(e.contains("mode 0644 lets other users at the key"), "{e}");
}

/// A profile file `text` (mode 0600) in `dir`, `%KEY%` replaced by a key file's path.
fn profiles(dir: &Dir, text: &str) -> PathBuf {
    let key = dir.key();
    dir.file("knock.toml", &text.replace("%KEY%", key.to_str().unwrap()), 0o600)
}

#[test]
fn a_lone_argument_that_names_a_profile_is_the_profile() {
    let dir = Dir::new("lone");
    let file = profiles(
        &dir,
        "[edge]\nhost = \"198.18.0.1\"\nsequence = [\"7000\", \"8000:udp\"]\ndelay = 150\nipv4 = true\ncommand = [\"ssh\", \"%HOST%\"]\n",
    );
    let f = file.to_str().unwrap();
    let p = plan(&["--profiles", f, "edge"]).unwrap();
    assert_eq!(p.host, "198.18.0.1");
    assert_eq!(ports(&p), [(7000, Proto::Tcp), (8000, Proto::Udp)]);
    assert_eq!((p.delay_ms, p.ipv4, p.ipv6, p.verbose), (150, true, false, false));
    assert_eq!(p.command, Some(AfterKnock { words: vec!["ssh".into(), "%HOST%".into()], origin: format!("{f}:6") }));
    // Flags override the profile.
    let p = plan(&["--profiles", f, "-u", "-d", "0", "-6", "-v", "edge"]).unwrap();
    assert_eq!(ports(&p), [(7000, Proto::Udp), (8000, Proto::Udp)]);
    assert_eq!((p.delay_ms, p.ipv4, p.ipv6, p.verbose), (0, false, true, true));
    // With ports, a HOST: knock 0.8's command, no profile.
    let p = plan(&["--profiles", f, "edge", "9000"]).unwrap();
    assert_eq!((p.host.as_str(), ports(&p)), ("edge", &[(9000, Proto::Tcp)][..]));
    assert!(p.command.is_none());
    // --no-profile: a host.
    let e = plan(&["--profiles", f, "--no-profile", "edge"]).unwrap_err().to_string();
    assert_eq!(e, "no PORT given to knock at edge (--no-profile: 'edge' is a host)");
    // --profile NAME HOST: the profile, knocked at another host.
    let p = plan(&["--profiles", f, "--profile", "edge", "198.18.0.7"]).unwrap();
    assert_eq!((p.host.as_str(), p.delay_ms), ("198.18.0.7", 150));
    let e = plan(&["--profiles", f, "--profile", "nope"]).unwrap_err().to_string();
    assert_eq!(e, format!("no profile 'nope' in {f}"));
    let e = plan(&["--profiles", f, "--profile", "edge", "h", "1"]).unwrap_err().to_string();
    assert!(e.contains("holds the knock"), "{e}");
}

#[test]
fn a_secret_profile_with_flags_over_it() {
    let dir = Dir::new("secret-profile");
    let file = profiles(
        &dir,
        "[db]\nhost = \"198.18.0.1\"\nsecret_file = \"%KEY%\"\nknock_length = 6\nwindow = 6\nprotocol = \"udp\"\nsource = \"198.18.0.9\"\n",
    );
    let f = file.to_str().unwrap();
    let p = plan(&["--profiles", f, "db"]).unwrap();
    let Knock::Secret { params, source, .. } = &p.knock else { panic!() };
    assert_eq!((params.length, params.window_secs, params.proto), (6, 6, PROTO_UDP));
    assert_eq!(*source, Some("198.18.0.9".parse::<IpAddr>().unwrap()));
    let p = plan(&["--profiles", f, "--length", "3", "--window", "60", "--source", "198.18.0.5", "db"]).unwrap();
    let Knock::Secret { params, source, .. } = &p.knock else { panic!() };
    assert_eq!((params.length, params.window_secs, *source), (3, 60, Some("198.18.0.5".parse().unwrap())));
    // The profile's ports are the key's: the same as --secret-file with the same values.
    let key = dir.0.join("k");
    let by_flags = plan(&[
        "--secret-file",
        key.to_str().unwrap(),
        "--length",
        "6",
        "--window",
        "6",
        "-u",
        "--source",
        "198.18.0.9",
        "--no-profile",
        "198.18.0.1",
    ])
    .unwrap();
    let by_profile = plan(&["--profiles", f, "db"]).unwrap();
    assert_eq!(by_flags.ports(1_000_000).unwrap(), by_profile.ports(1_000_000).unwrap());
}

#[test]
fn profile_errors_name_the_file_and_line() {
    let dir = Dir::new("errors");
    let f = |text: &str| profiles(&dir, text).to_str().unwrap().to_owned();
    let run = |file: &str| plan(&["--profiles", file, "db"]).unwrap_err().to_string();
    let file = f("[db]\nhost = \"h\"\nsecret_file = \"/nonexistent/knock.key\"\n");
    assert_eq!(
        run(&file),
        format!("{file}:3: key file /nonexistent/knock.key: cannot read: No such file or directory (os error 2)")
    );
    let open = dir.file("open.key", "00112233445566778899aabbccddeeff", 0o640);
    let file = f(&format!("[db]\nhost = \"h\"\n\nsecret_file = \"{}\"\n", open.display()));
    assert_eq!(
        run(&file),
        format!(
            "{file}:4: key file {}: mode 0640 lets other users at the key: make it 0600 (chmod 600)",
            open.display()
        )
    );
    let file = f("[db]\nhost = \"h\"\nsequence = [\"7000\", \"99999\"]\n");
    assert_eq!(run(&file), format!("{file}:3: port '99999' is out of range 1-65535"));
    let file = f("[db]\nhost = \"h\"\nsequence = [\"7000\"]\ntimeout = 5\n");
    assert!(run(&file).starts_with(&format!("{file}:4: unknown field `timeout`")), "{}", run(&file));
    let file = f("[db]\nhost = \"h\"\nsequence = [\"7000\"]\n");
    let e = plan(&["--profiles", &file, "--length", "6", "db"]).unwrap_err().to_string();
    assert!(e.contains(&format!("profile 'db' ({file}:3) holds a sequence")), "{e}");
    // A profile names a command to run: its file must not be writable by others.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(
        run(&file),
        format!(
            "{file}: mode 0666 lets other users change it, and a profile names a command to run: chmod go-w {file}"
        )
    );
}

#[test]
fn the_default_files() {
    let files = crate::profiles::default_files();
    assert_eq!(files.last().map(PathBuf::as_path), Some(Path::new("/etc/knockgate/knock.toml")));
    assert!(files.len() <= 2);
}
