//! User space's half of secret doors: key files, the HMAC-SHA256 window keys, whole sequences,
//! and the test vectors that the client, the daemon's kernel tests and these tests share.

use std::{
    fmt,
    os::unix::fs::MetadataExt as _,
    path::Path,
    string::{String, ToString as _},
    vec::Vec,
};

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use super::{Inline, WindowKey, later_port};
use crate::{AddrKey, PROTO_TCP, PROTO_UDP};

/// Fewest bits a key file may hold.
pub const MIN_KEY_BITS: usize = 128;
/// Bits `knock --generate-secret` draws.
pub const GENERATED_KEY_BITS: usize = 256;

/// A door's secret. Its `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bits)", self.0.len() * 8)
    }
}

impl Secret {
    /// A secret from hex text (surrounding white space allowed), at least `MIN_KEY_BITS` long.
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let hex = text.trim();
        if hex.is_empty() {
            return Err(KeyError::Empty);
        }
        if let Some((at, _)) = hex.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
            return Err(KeyError::NotHex { at });
        }
        if !hex.len().is_multiple_of(2) {
            return Err(KeyError::OddLength);
        }
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| KeyError::NotHex { at: i }))
            .collect::<Result<_, _>>()?;
        if bytes.len() * 8 < MIN_KEY_BITS {
            return Err(KeyError::Short { bits: bytes.len() * 8 });
        }
        Ok(Self(bytes))
    }

    /// Reads a key file. The file must hold hex, belong to `owner` (when given) and be
    /// neither readable nor writable by group or others.
    pub fn read_file(path: &Path, owner: Option<u32>) -> Result<Self, KeyFileError> {
        let err = |error| KeyFileError { path: path.display().to_string(), error };
        let meta = std::fs::metadata(path).map_err(|e| err(KeyError::Io(e.to_string())))?;
        if !meta.is_file() {
            return Err(err(KeyError::NotAFile));
        }
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(err(KeyError::Open { mode }));
        }
        if let Some(want) = owner
            && meta.uid() != want
        {
            return Err(err(KeyError::Owner { uid: meta.uid(), want }));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(KeyError::Io(e.to_string())))?;
        Self::from_hex(&text).map_err(err)
    }

    /// `bytes` as a secret, for tests and `--generate-secret`.
    #[must_use]
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }

    /// Lower-case hex, as a key file holds it.
    #[must_use]
    pub fn to_hex(&self) -> String {
        use fmt::Write as _;
        self.0.iter().fold(String::new(), |mut s, b| {
            // Writing to a String cannot fail.
            let _infallible: fmt::Result = write!(s, "{b:02x}");
            s
        })
    }

    /// The key's bytes, for the fleet's grant signatures (`fleet`).
    #[cfg(feature = "fleet")]
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        // HMAC takes keys of any length.
        let mut mac = <Hmac<Sha256>>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }

    /// A public fingerprint of the key (32 bits of an HMAC under it): a changed key file
    /// changes the door.
    #[must_use]
    pub fn id(&self) -> u32 {
        let h = self.mac(&[b"knockgate key id v1"]);
        u32::from_be_bytes([h[0], h[1], h[2], h[3]])
    }

    /// Window `window`'s key: `HMAC-SHA256(secret, "knockgate window v1" || proto || length ||
    /// window_secs (be32) || window (be64))`; bytes 0-1 the first port, 16-31 the `SipHash` key.
    /// Not yet live (`live` 0, no deadline): the daemon sets those when it installs it.
    #[must_use]
    pub fn window_key(&self, p: &Params, window: u64) -> WindowKey {
        let h = self.mac(&[
            b"knockgate window v1",
            &[p.proto, p.length],
            &p.window_secs.to_be_bytes(),
            &window.to_be_bytes(),
        ]);
        let word =
            |i: usize| u64::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3], h[i + 4], h[i + 5], h[i + 6], h[i + 7]]);
        WindowKey {
            sip: [word(16), word(24)],
            window,
            not_before_ns: 0,
            not_after_ns: 0,
            first: super::port_of(u16::from_be_bytes([h[0], h[1]])),
            live: 0,
            _pad: [0; 5],
        }
    }

    /// The ports `src` knocks in `window`, in order.
    #[must_use]
    pub fn sequence(&self, p: &Params, src: &AddrKey, window: u64) -> Vec<u16> {
        let key = self.window_key(p, window);
        core::iter::once(key.first).chain((1..p.length).map(|s| later_port(&Inline, &key, src, s))).collect()
    }
}

/// What a secret door's sequences depend on besides the key; the client's `--length`,
/// `--window` and `-u` must say the same as the door.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Ports per knock, `MIN_LENGTH..=MAX_LENGTH`.
    pub length: u8,
    pub window_secs: u32,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
}

impl Params {
    /// Window number at `unix_secs`.
    #[must_use]
    pub fn window_at(&self, unix_secs: u64) -> u64 {
        unix_secs / u64::from(self.window_secs.max(1))
    }

    /// Bits an attacker who has seen the window's first port must guess: 16 a later port,
    /// less port 0.
    #[must_use]
    pub fn guess_bits(&self) -> f64 {
        f64::from(self.length.saturating_sub(1)) * 65535f64.log2()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    Io(String),
    NotAFile,
    /// Group or others may read or write it.
    Open {
        mode: u32,
    },
    Owner {
        uid: u32,
        want: u32,
    },
    Empty,
    NotHex {
        at: usize,
    },
    OddLength,
    Short {
        bits: usize,
    },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Io(e) => write!(f, "cannot read: {e}"),
            KeyError::NotAFile => write!(f, "not a regular file"),
            KeyError::Open { mode } => {
                write!(f, "mode {mode:04o} lets other users at the key: make it 0600 (chmod 600)")
            }
            KeyError::Owner { uid, want } => write!(f, "owned by uid {uid}, not by uid {want}, which reads it"),
            KeyError::Empty => write!(f, "holds no key (generate one with `knock --generate-secret`)"),
            KeyError::NotHex { at } => write!(f, "not a hex key (a non-hex character at offset {at})"),
            KeyError::OddLength => write!(f, "not a hex key (an odd number of digits)"),
            KeyError::Short { bits } => {
                write!(f, "a {bits}-bit key is too short: at least {MIN_KEY_BITS} bits are needed")
            }
        }
    }
}

/// A key file that cannot be used, and why (the key itself is never shown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFileError {
    pub path: String,
    pub error: KeyError,
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key file {}: {}", self.path, self.error)
    }
}

impl core::error::Error for KeyFileError {}

/// A derivation pinned down: `secret` (hex) knocking as `source` at `unix_secs` gives `ports`.
pub struct Vector {
    pub secret: &'static str,
    pub length: u8,
    pub window_secs: u32,
    pub udp: bool,
    pub source: &'static str,
    pub unix_secs: u64,
    pub ports: &'static [u16],
}

impl Vector {
    #[must_use]
    pub fn params(&self) -> Params {
        Params {
            length: self.length,
            window_secs: self.window_secs,
            proto: if self.udp { PROTO_UDP } else { PROTO_TCP },
        }
    }

    /// The source as an address key.
    #[must_use]
    pub fn source_key(&self) -> AddrKey {
        match self.source.parse::<core::net::IpAddr>() {
            Ok(core::net::IpAddr::V4(a)) => AddrKey::v4(a.octets()),
            Ok(core::net::IpAddr::V6(a)) => AddrKey::v6(a.octets()),
            Err(_) => AddrKey::v4([0; 4]),
        }
    }

    #[must_use]
    pub fn secret(&self) -> Secret {
        Secret::from_hex(self.secret).unwrap_or_else(|_| Secret(Vec::new()))
    }
}

/// Shared by `knock-common`'s tests, the client's (`knock --print`) and the XDP program's
/// (`tests/tests/xdp_secret.rs`): the three derive the same ports or a test fails.
pub const VECTORS: [Vector; 4] = [
    Vector {
        secret: "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        length: 4,
        window_secs: 30,
        udp: false,
        source: "198.18.0.2",
        unix_secs: 1_800_000_000,
        ports: &[21768, 58849, 22916, 57702],
    },
    Vector {
        secret: "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        length: 4,
        window_secs: 30,
        udp: false,
        source: "198.18.0.3",
        unix_secs: 1_800_000_000,
        ports: &[21768, 6705, 12075, 28387],
    },
    Vector {
        secret: "ffeeddccbbaa99887766554433221100",
        length: 8,
        window_secs: 60,
        udp: true,
        source: "2001:db8::2",
        unix_secs: 1_800_000_029,
        ports: &[18738, 46, 23035, 6784, 13761, 54452, 39435, 5390],
    },
    Vector {
        secret: "ffeeddccbbaa99887766554433221100",
        length: 2,
        window_secs: 5,
        udp: false,
        source: "198.18.0.2",
        unix_secs: 1_800_000_029,
        ports: &[53695, 9275],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vectors_hold() {
        for (i, v) in VECTORS.iter().enumerate() {
            let p = v.params();
            let got = v.secret().sequence(&p, &v.source_key(), p.window_at(v.unix_secs));
            assert_eq!(got, v.ports, "vector {i}");
        }
    }

    #[test]
    fn sequences_differ_by_source_window_protocol_length_and_key() {
        let v = &VECTORS[0];
        let (s, p, src) = (v.secret(), v.params(), v.source_key());
        let w = p.window_at(v.unix_secs);
        let base = s.sequence(&p, &src, w);
        assert_eq!(base.len(), 4);
        let next = s.sequence(&p, &src, w + 1);
        assert_ne!(base, next);
        let other = s.sequence(&p, &AddrKey::v4([198, 18, 0, 9]), w);
        assert_eq!(other[0], base[0], "the first port is the window's, the same for every source");
        assert_ne!(other[1..], base[1..]);
        assert_ne!(s.sequence(&Params { proto: PROTO_UDP, ..p }, &src, w)[0], base[0]);
        assert_ne!(s.sequence(&Params { length: 5, ..p }, &src, w)[0], base[0]);
        assert_ne!(Secret::from_bytes(&[7; 32]).sequence(&p, &src, w), base);
    }

    #[test]
    fn window_edges() {
        let p = Params { length: 4, window_secs: 30, proto: PROTO_TCP };
        assert_eq!(p.window_at(0), 0);
        assert_eq!(p.window_at(29), 0);
        assert_eq!(p.window_at(30), 1);
        assert_eq!(p.window_at(1_800_000_000), 60_000_000);
        assert_eq!(p.window_at(1_800_000_029), 60_000_000);
        assert_eq!(p.window_at(1_800_000_030), 60_000_001);
        assert!((p.guess_bits() - 48.0).abs() < 0.001);
    }

    #[test]
    fn hex_keys() {
        assert_eq!(
            Secret::from_hex(" 00112233445566778899aabbccddeeff\n").map(|s| s.to_hex()),
            Ok("00112233445566778899aabbccddeeff".into())
        );
        assert_eq!(Secret::from_hex("0011"), Err(KeyError::Short { bits: 16 }));
        assert_eq!(Secret::from_hex("  \n"), Err(KeyError::Empty));
        assert_eq!(Secret::from_hex("00112233445566778899aabbccddeefg"), Err(KeyError::NotHex { at: 31 }));
        assert_eq!(Secret::from_hex("00112233445566778899aabbccddeeff0"), Err(KeyError::OddLength));
        assert_eq!(std::format!("{:?}", Secret::from_bytes(&[1; 32])), "Secret(256 bits)");
    }

    #[test]
    fn key_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(std::format!("knockgate-key-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k");
        std::fs::write(&path, "00112233445566778899aabbccddeeff\n").unwrap();
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o604, false), (0o620, false)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = Secret::read_file(&path, None);
            assert_eq!(r.is_ok(), ok, "mode {mode:o}: {r:?}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let uid = std::fs::metadata(&path).unwrap().uid();
        let e = Secret::read_file(&path, Some(uid + 1)).unwrap_err();
        assert!(e.to_string().contains(&std::format!("owned by uid {uid}")), "{e}");
        std::fs::write(&path, "0011223344556677\n").unwrap();
        let e = Secret::read_file(&path, None).unwrap_err().to_string();
        assert_eq!(
            e,
            std::format!("key file {}: a 64-bit key is too short: at least 128 bits are needed", path.display())
        );
        let e = Secret::read_file(&dir.join("none"), None).unwrap_err().to_string();
        assert!(e.starts_with(&std::format!("key file {}: cannot read:", dir.join("none").display())), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
