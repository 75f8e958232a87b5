//! A fleet's grants: an open (or a close) made on one node, signed with the fleet's key, for
//! every other node to apply as if the knock had been its own. Pure: the encoding, the
//! signature (HMAC-SHA256, RustCrypto), the checks a node makes before applying one, the
//! conversion of a grant's wall-clock expiry to the node's monotonic clock, and the names of
//! the keys grants and single-use claims are stored under.

use core::{fmt, net::IpAddr, time::Duration};
use std::{format, string::String, vec::Vec};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret::derive::Secret;

/// What a grant does at the door it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The door was opened: a gate's allowance, a command door's start command.
    Open,
    /// A closing door (`gate_close`) was knocked: the allowance is withdrawn.
    Close,
}

impl Action {
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Action::Open => "open",
            Action::Close => "close",
        }
    }
}

/// One grant, as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub action: Action,
    /// The door's name (its `[section]`): nodes of a fleet share their doors.
    pub door: String,
    /// The knocker's address.
    pub addr: IpAddr,
    /// When the issuing node saw the knock, in ms since the Unix epoch.
    pub issued_ms: u64,
    /// When the grant ends, in ms since the Unix epoch.
    pub expires_ms: u64,
    /// The issuing node's `FleetName`.
    pub node: String,
    /// 128 random bits: no two grants are alike, and a grant's key is its nonce.
    pub nonce: [u8; 16],
}

/// Why a node refuses a grant; `name` is the metric's `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Not a grant of this format.
    Malformed,
    /// Its signature is not the fleet key's (no key, another key, or altered).
    Signature,
    /// It has ended.
    Expired,
    /// Issued further in the future than the clocks' skew bound allows.
    Future,
    /// It names a door this node does not have.
    UnknownDoor,
}

impl Refusal {
    pub const ALL: [Refusal; 5] =
        [Refusal::Malformed, Refusal::Signature, Refusal::Expired, Refusal::Future, Refusal::UnknownDoor];

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::Signature => "signature",
            Refusal::Expired => "expired",
            Refusal::Future => "future",
            Refusal::UnknownDoor => "unknown_door",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Malformed => "not a grant",
            Refusal::Signature => "its signature is not the fleet key's",
            Refusal::Expired => "it has expired",
            Refusal::Future => "it was issued further ahead than the clock skew allows",
            Refusal::UnknownDoor => "it names a door this node does not have",
        })
    }
}

/// The first line of every grant: the format and its version.
const MAGIC: &str = "knockgate grant v1";

fn hex(bytes: &[u8]) -> String {
    use core::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        // Writing to a String cannot fail.
        let _infallible: fmt::Result = write!(s, "{b:02x}");
        s
    })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// A name that fits on a grant's line: no line breaks, no control characters, not empty.
#[must_use]
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(char::is_control)
}

impl Grant {
    /// The signed text: the fields, one a line, in this order.
    fn body(&self) -> String {
        format!(
            "{MAGIC}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
            self.action.name(),
            self.door,
            self.addr,
            self.issued_ms,
            self.expires_ms,
            self.node,
            hex(&self.nonce)
        )
    }

    /// The grant as published: its fields, then `mac=` and the HMAC-SHA256 of them under `key`.
    #[must_use]
    pub fn sign(&self, key: &Secret) -> Vec<u8> {
        let body = self.body();
        let mac = mac(key, body.as_bytes()).finalize().into_bytes();
        format!("{body}mac={}\n", hex(&mac)).into_bytes()
    }

    /// A grant read from `bytes` whose signature is `key`'s (compared in constant time).
    ///
    /// # Errors
    /// `Malformed` or `Signature`.
    pub fn verify(bytes: &[u8], key: &Secret) -> Result<Grant, Refusal> {
        let text = core::str::from_utf8(bytes).map_err(|_| Refusal::Malformed)?;
        let at = text.rfind("mac=").ok_or(Refusal::Malformed)?;
        let (body, tag) = text.split_at(at);
        let tag = unhex(tag.trim_start_matches("mac=").trim_end()).ok_or(Refusal::Malformed)?;
        mac(key, body.as_bytes()).verify_slice(&tag).map_err(|_| Refusal::Signature)?;
        let grant = Self::parse(body).ok_or(Refusal::Malformed)?;
        // Signed, but by a node that wrote fields no node writes: refused all the same.
        if grant.body() == body { Ok(grant) } else { Err(Refusal::Malformed) }
    }

    fn parse(body: &str) -> Option<Grant> {
        let mut lines = body.strip_suffix('\n')?.split('\n');
        if lines.next()? != MAGIC {
            return None;
        }
        let action = match lines.next()? {
            "open" => Action::Open,
            "close" => Action::Close,
            _ => return None,
        };
        let door = lines.next()?.into();
        let addr = lines.next()?.parse().ok()?;
        let issued_ms = lines.next()?.parse().ok()?;
        let expires_ms = lines.next()?.parse().ok()?;
        let node = lines.next()?.into();
        let nonce = unhex(lines.next()?)?.try_into().ok()?;
        if lines.next().is_some() {
            return None;
        }
        Some(Grant { action, door, addr, issued_ms, expires_ms, node, nonce })
    }

    /// Whether a node whose wall clock reads `now_ms` may apply this grant: not ended, and not
    /// issued more than `skew` ahead of its clock.
    ///
    /// # Errors
    /// `Expired` or `Future`.
    pub fn check_time(&self, now_ms: u64, skew: Duration) -> Result<(), Refusal> {
        let skew_ms = u64::try_from(skew.as_millis()).unwrap_or(u64::MAX);
        if self.expires_ms <= now_ms {
            Err(Refusal::Expired)
        } else if self.issued_ms > now_ms.saturating_add(skew_ms) {
            Err(Refusal::Future)
        } else {
            Ok(())
        }
    }

    /// The grant's expiry on a monotonic clock that reads `now_mono_ns` while the wall clock
    /// reads `now_ms`.
    #[must_use]
    pub fn deadline_ns(&self, now_ms: u64, now_mono_ns: u64) -> u64 {
        now_mono_ns.saturating_add(self.expires_ms.saturating_sub(now_ms).saturating_mul(1_000_000))
    }

    /// What is left of the grant at `now_ms`.
    #[must_use]
    pub fn remaining(&self, now_ms: u64) -> Duration {
        Duration::from_millis(self.expires_ms.saturating_sub(now_ms))
    }

    /// The key the grant is stored under: its nonce.
    #[must_use]
    pub fn key(&self) -> String {
        format!("{GRANT_PREFIX}{}", hex(&self.nonce))
    }
}

fn mac(key: &Secret, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.bytes()).unwrap_or_else(|_| unreachable!());
    mac.update(body);
    mac
}

/// Keys of grants start with this; a node watches `grant.>`.
pub const GRANT_PREFIX: &str = "grant.";

/// The key a secret door's single use is claimed under: (door, knocker's address, window).
/// Every node derives the same key for the same knock.
#[must_use]
pub fn claim_key(door: &str, addr: IpAddr, window: u64) -> String {
    let addr = match addr {
        IpAddr::V4(a) => hex(&a.octets()),
        IpAddr::V6(a) => hex(&a.octets()),
    };
    format!("claim.{}.{addr}.{window}", hex(door.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Secret {
        Secret::from_bytes(b"0123456789abcdef0123456789abcdef")
    }

    fn grant() -> Grant {
        Grant {
            action: Action::Open,
            door: "ssh".into(),
            addr: "198.18.2.2".parse().unwrap(),
            issued_ms: 1_800_000_000_000,
            expires_ms: 1_800_000_030_000,
            node: "edge-a".into(),
            nonce: [7; 16],
        }
    }

    #[test]
    fn a_signed_grant_verifies_and_reads_back() {
        let g = grant();
        let wire = g.sign(&key());
        assert_eq!(Grant::verify(&wire, &key()), Ok(g.clone()));
        let v6 = Grant { addr: "2001:db8::2".parse().unwrap(), action: Action::Close, ..g };
        assert_eq!(Grant::verify(&v6.sign(&key()), &key()), Ok(v6));
    }

    #[test]
    fn another_key_no_key_or_an_altered_field_fails_the_signature() {
        let wire = grant().sign(&key());
        assert_eq!(
            Grant::verify(&wire, &Secret::from_bytes(b"another key, 32 bytes long......")),
            Err(Refusal::Signature)
        );
        let text = String::from_utf8(wire.clone()).unwrap();
        let altered = text.replace("198.18.2.2", "198.18.2.3");
        assert_eq!(Grant::verify(altered.as_bytes(), &key()), Err(Refusal::Signature));
        let longer = text.replace("1800000030000", "1800000930000");
        assert_eq!(Grant::verify(longer.as_bytes(), &key()), Err(Refusal::Signature));
        // Unsigned, or signed with an empty key.
        let body = text.split("mac=").next().unwrap();
        assert_eq!(Grant::verify(body.as_bytes(), &key()), Err(Refusal::Malformed));
        assert_eq!(Grant::verify(&grant().sign(&Secret::from_bytes(b"")), &key()), Err(Refusal::Signature));
        assert_eq!(Grant::verify(b"\xff\xfe", &key()), Err(Refusal::Malformed));
    }

    #[test]
    fn a_signed_body_of_another_shape_is_malformed() {
        let odd = format!("{MAGIC}\nopen\nssh\n198.18.2.2\n1\n2\nnode\n{}\nextra\n", hex(&[1; 16]));
        let tag = hex(&mac(&key(), odd.as_bytes()).finalize().into_bytes());
        assert_eq!(Grant::verify(format!("{odd}mac={tag}\n").as_bytes(), &key()), Err(Refusal::Malformed));
    }

    #[test]
    fn time_checks() {
        let g = grant();
        let skew = Duration::from_secs(5);
        assert_eq!(g.check_time(g.issued_ms, skew), Ok(()));
        assert_eq!(g.check_time(g.expires_ms - 1, skew), Ok(()));
        assert_eq!(g.check_time(g.expires_ms, skew), Err(Refusal::Expired));
        assert_eq!(g.check_time(g.issued_ms - 5_000, skew), Ok(()), "up to the skew ahead");
        assert_eq!(g.check_time(g.issued_ms - 5_001, skew), Err(Refusal::Future));
    }

    #[test]
    fn the_expiry_moves_to_the_monotonic_clock() {
        let g = grant();
        assert_eq!(g.deadline_ns(g.issued_ms, 1_000), 1_000 + 30_000 * 1_000_000);
        assert_eq!(g.deadline_ns(g.expires_ms + 10, 1_000), 1_000, "ended: now");
        assert_eq!(g.remaining(g.issued_ms + 1_000), Duration::from_secs(29));
    }

    #[test]
    fn keys_are_valid_nats_keys_and_the_same_on_every_node() {
        let valid = |k: &str| k.chars().all(|c| c.is_ascii_alphanumeric() || "-/_=.".contains(c));
        assert_eq!(grant().key(), format!("grant.{}", "07".repeat(16)));
        let claim = claim_key("ssh door", "2001:db8::2".parse().unwrap(), 60_000_123);
        assert!(valid(&claim) && valid(&grant().key()), "{claim}");
        assert_eq!(claim, claim_key("ssh door", "2001:db8::2".parse().unwrap(), 60_000_123));
        assert_ne!(claim, claim_key("ssh door", "2001:db8::3".parse().unwrap(), 60_000_123));
        assert!(valid_name("edge-a") && !valid_name("a\nb") && !valid_name(""));
    }
}
