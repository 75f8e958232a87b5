//! The gate in the kernel (`BPF_PROG_TEST_RUN`): every parse path with crafted frames, and a
//! property test over random and mutated frames.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests panic on failure")]

use std::{net::IpAddr, time::Duration};

use knock_common::{Counter, XDP_ABORTED, XDP_DROP, XDP_PASS};
use knockd_user::{
    config::{Knock, Proto},
    kernel::program::KnockProgram,
};
use tests::{
    frame::{ACK, FrameBuilder, SYN},
    kernel::{counter, hook, program, test_runs},
};

const SERVER: &str = "198.18.0.1";
const SERVER6: &str = "2001:db8::1";
const CLIENT: &str = "198.18.0.2";
const CLIENT6: &str = "2001:db8::2";
const STRANGER: &str = "198.18.0.3";

fn config(gate_timeout: u32) -> String {
    format!(
        "[g]\nsequence = 7000,8000\nseq_timeout = 5\ntcpflags = syn\ngate = 22/tcp, 5353/udp\ngate_timeout = {gate_timeout}\n\
         [c]\nsequence = 8000,7000\ntcpflags = syn\ngate_close = 22/tcp\n\
         [s]\nsequence = 7100,7200\nstealth = yes\n"
    )
}

fn run(p: &KnockProgram, f: &FrameBuilder) -> u32 {
    p.test_run(hook(), &f.build()).expect("test_run")
}

fn syn22(src: &str) -> FrameBuilder {
    let dst = if src.contains(':') { SERVER6 } else { SERVER };
    FrameBuilder::tcp(src, dst, 22, SYN)
}

fn knock(p: &KnockProgram, src: &str, ports: &[u16]) {
    let dst = if src.contains(':') { SERVER6 } else { SERVER };
    for &port in ports {
        assert_eq!(run(p, &FrameBuilder::tcp(src, dst, port, SYN)), XDP_PASS);
    }
}

#[test]
fn gated_port_closed_before_open_after_closed_after_expiry() {
    let p = program(&config(1));
    assert_eq!(run(&p, &syn22(CLIENT)), XDP_DROP, "closed before the knock");
    assert_eq!(run(&p, &FrameBuilder::udp(CLIENT, SERVER, 5353)), XDP_DROP);
    assert_eq!(
        run(&p, &FrameBuilder::tcp(CLIENT, SERVER, 22, ACK)),
        XDP_PASS,
        "segments of established connections pass"
    );
    assert_eq!(run(&p, &FrameBuilder::tcp(CLIENT, SERVER, 22, SYN | ACK)), XDP_PASS);
    assert_eq!(run(&p, &FrameBuilder::tcp(CLIENT, SERVER, 2222, SYN)), XDP_PASS, "other ports are not gated");
    knock(&p, CLIENT, &[7000, 8000]);
    assert_eq!(run(&p, &syn22(CLIENT)), XDP_PASS, "open after the knock");
    assert_eq!(run(&p, &FrameBuilder::udp(CLIENT, SERVER, 5353)), XDP_PASS);
    assert_eq!(run(&p, &syn22(STRANGER)), XDP_DROP, "only for the knocker");
    assert!(p.allowed_until(CLIENT.parse().unwrap(), Knock { port: 22, proto: Proto::Tcp }).unwrap().is_some());
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(run(&p, &syn22(CLIENT)), XDP_DROP, "closed after gate_timeout");
    assert_eq!(
        run(&p, &FrameBuilder::tcp(CLIENT, SERVER, 22, ACK)),
        XDP_PASS,
        "established traffic outlives the allowance"
    );
}

#[test]
fn close_sequence_removes_the_source() {
    let p = program(&config(3600));
    knock(&p, CLIENT, &[7000, 8000]);
    assert_eq!(run(&p, &syn22(CLIENT)), XDP_PASS);
    knock(&p, CLIENT, &[8000, 7000]);
    assert_eq!(run(&p, &syn22(CLIENT)), XDP_DROP);
    assert_eq!(run(&p, &FrameBuilder::udp(CLIENT, SERVER, 5353)), XDP_PASS, "the close door names 22/tcp only");
}

#[test]
fn ipv6_is_gated_alike() {
    let p = program(&config(3600));
    for ext in [&[][..], &[0], &[0, 60], &[0, 43, 60], &[0, 43, 60, 51, 60, 60]] {
        assert_eq!(run(&p, &syn22(CLIENT6).v6_ext(ext)), XDP_DROP, "ext {ext:?}");
    }
    knock(&p, CLIENT6, &[7000, 8000]);
    for ext in [&[][..], &[0], &[0, 60], &[0, 43, 60], &[0, 43, 60, 51, 60, 60]] {
        assert_eq!(run(&p, &syn22(CLIENT6).v6_ext(ext)), XDP_PASS, "ext {ext:?}");
    }
    // Seven extension headers: more than the program follows, so dropped even when allowed.
    assert_eq!(run(&p, &syn22(CLIENT6).v6_ext(&[0, 60, 60, 60, 60, 60, 60])), XDP_DROP);
    assert_eq!(run(&p, &syn22(CLIENT)), XDP_DROP, "an IPv6 knock does not open IPv4");
}

#[test]
fn fragments() {
    let p = program(&config(3600));
    // First fragments carry the ports: gated like any packet.
    assert_eq!(run(&p, &syn22(STRANGER).fragment(0, true)), XDP_DROP);
    assert_eq!(run(&p, &syn22(CLIENT6).v6_ext(&[44]).fragment(0, true)), XDP_DROP);
    assert_eq!(run(&p, &syn22(CLIENT6).v6_ext(&[0, 44]).fragment(0, true)), XDP_DROP);
    // Later fragments cannot be reassembled without the first one: they pass.
    assert_eq!(run(&p, &syn22(STRANGER).fragment(8, false)), XDP_PASS);
    assert_eq!(run(&p, &syn22(CLIENT6).v6_ext(&[44]).fragment(8, true)), XDP_PASS);
    // A fragmented knock is no knock.
    for port in [7000, 8000] {
        run(&p, &FrameBuilder::tcp(CLIENT, SERVER, port, SYN).fragment(0, true));
    }
    assert_eq!(run(&p, &syn22(CLIENT)), XDP_DROP);
}

#[test]
fn vlan_tags_and_deeper_stacks() {
    let p = program(&config(3600));
    assert_eq!(run(&p, &syn22(STRANGER).vlan(5)), XDP_DROP);
    assert_eq!(run(&p, &syn22(STRANGER).vlan(5).vlan(6)), XDP_DROP);
    assert_eq!(run(&p, &syn22(STRANGER).vlan(5).vlan(6).vlan(7)), XDP_DROP, "deeper than supported");
    for port in [7000, 8000] {
        run(&p, &FrameBuilder::tcp(CLIENT, SERVER, port, SYN).vlan(5).vlan(6));
    }
    assert_eq!(run(&p, &syn22(CLIENT).vlan(5).vlan(6)), XDP_PASS);
    assert_eq!(run(&p, &syn22(CLIENT).vlan(5)), XDP_PASS);
    assert_eq!(run(&p, &syn22(CLIENT).vlan(5).vlan(6).vlan(7)), XDP_DROP, "fail closed even when allowed");
}

#[test]
fn truncated_frames_and_options_fail_closed() {
    let p = program(&config(3600));
    // Plain IPv4 (the short path), with options, IPv6, VLAN, and UDP.
    for frame in [
        syn22(STRANGER),
        syn22(STRANGER).ip_options(10),
        syn22(CLIENT6).v6_ext(&[0, 60]),
        syn22(STRANGER).vlan(3),
        FrameBuilder::udp(STRANGER, SERVER, 5353),
    ] {
        let full = frame.build();
        for len in (14..full.len()).filter(|&len| test_runs(&full[..len])) {
            assert_eq!(p.test_run(hook(), &full[..len]).unwrap(), XDP_DROP, "truncated to {len} of {}", full.len());
        }
        assert_eq!(p.test_run(hook(), &full).unwrap(), XDP_DROP);
    }
    // IHL pointing past the frame.
    let mut bad = syn22(STRANGER).build();
    bad[14] = 0x4f;
    assert_eq!(p.test_run(hook(), &bad).unwrap(), XDP_DROP);
    // Non-IP and other protocols are not a way to a TCP port: they pass.
    let mut arp = syn22(STRANGER).build();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(p.test_run(hook(), &arp).unwrap(), XDP_PASS);
    assert_eq!(run(&p, &FrameBuilder::proto(STRANGER, SERVER, 1)), XDP_PASS);
    assert!(counter(&p, Counter::GateDrops) > 0);
}

#[test]
fn a_new_config_moves_gates_and_knock_ports() {
    use knockd_user::{config::Config, kernel::program::Limits};
    let (mut p, mut doors) = tests::kernel::program_with(&config(3600), Limits::default());
    let agree = |p: &KnockProgram| {
        let (listed, marked) = p.port_slots().unwrap();
        assert_eq!(listed, marked, "PORT_BITS marks exactly the slots PORTS holds");
        listed.len()
    };
    // 7000, 8000, 7100, 7200, 22/tcp and 5353/udp.
    assert_eq!(agree(&p), 6);
    let moved = "[g]\nsequence = 7300,7400\ntcpflags = syn\ngate = 2222/tcp\ngate_timeout = 3600\n";
    doors.install(Config::parse(std::path::Path::new("test.conf"), moved).unwrap().doors);
    p.apply(&doors).unwrap();
    assert_eq!(agree(&p), 3);
    assert_eq!(run(&p, &syn22(STRANGER)), XDP_PASS, "22 is no longer gated");
    assert_eq!(run(&p, &FrameBuilder::udp(STRANGER, SERVER, 5353)), XDP_PASS);
    assert_eq!(run(&p, &FrameBuilder::tcp(STRANGER, SERVER, 2222, SYN)), XDP_DROP, "2222 is");
    knock(&p, CLIENT, &[7000, 8000]);
    assert_eq!(run(&p, &FrameBuilder::tcp(CLIENT, SERVER, 2222, SYN)), XDP_DROP, "the old sequence opens nothing");
    knock(&p, CLIENT, &[7300, 7400]);
    assert_eq!(run(&p, &FrameBuilder::tcp(CLIENT, SERVER, 2222, SYN)), XDP_PASS, "the new one opens 2222");
    assert_eq!(counter(&p, Counter::Opens), 1);
}

#[test]
fn without_gates_unparseable_frames_pass() {
    let p = program("[k]\nsequence = 7000,8000\n");
    let full = syn22(STRANGER).build();
    for len in (14..full.len()).filter(|&len| test_runs(&full[..len])) {
        assert_eq!(p.test_run(hook(), &full[..len]).unwrap(), XDP_PASS);
    }
}

#[test]
fn stealth_doors_drop_their_knocks() {
    let p = program(&config(3600));
    assert_eq!(run(&p, &FrameBuilder::tcp(CLIENT, SERVER, 7100, SYN)), XDP_DROP);
    assert_eq!(run(&p, &FrameBuilder::tcp(CLIENT, SERVER, 7200, SYN)), XDP_DROP);
    assert_eq!(run(&p, &FrameBuilder::tcp(CLIENT, SERVER, 7000, SYN)), XDP_PASS, "door g is not stealthy");
    assert_eq!(counter(&p, Counter::StealthDrops), 2);
    assert_eq!(counter(&p, Counter::Opens), 1, "a stealth knock still counts");
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }
}

/// An independent reading of a frame, as the kernel stack would deliver it: `Some(source)`
/// when it is a new TCP connection (SYN, no ACK) to port 22.
fn syn_to_22(f: &[u8]) -> Option<IpAddr> {
    let get = |i: usize| f.get(i).copied();
    let be16 = |i: usize| Some(u16::from_be_bytes([get(i)?, get(i + 1)?]));
    let mut off = 12;
    let mut ethertype = be16(off)?;
    for _ in 0..2 {
        if ethertype == 0x8100 || ethertype == 0x88a8 {
            off += 4;
            ethertype = be16(off)?;
        }
    }
    let l3 = off + 2;
    let (src, proto, l4): (IpAddr, u8, usize) = match ethertype {
        0x0800 => {
            let vihl = get(l3)?;
            let ihl = usize::from(vihl & 0xf) * 4;
            if vihl >> 4 != 4 || ihl < 20 || be16(l3 + 6)? & 0x1fff != 0 {
                return None;
            }
            let s: [u8; 4] = f.get(l3 + 12..l3 + 16)?.try_into().ok()?;
            (IpAddr::from(s), get(l3 + 9)?, l3 + ihl)
        }
        0x86dd => {
            let s: [u8; 16] = f.get(l3 + 8..l3 + 24)?.try_into().ok()?;
            let mut next = get(l3 + 6)?;
            let mut at = l3 + 40;
            for _ in 0..6 {
                match next {
                    0 | 43 | 60 => {
                        let len = (usize::from(get(at + 1)?) + 1) * 8;
                        next = get(at)?;
                        at += len;
                    }
                    51 => {
                        let len = (usize::from(get(at + 1)?) + 2) * 4;
                        next = get(at)?;
                        at += len;
                    }
                    44 => {
                        if be16(at + 2)? >> 3 != 0 {
                            return None;
                        }
                        next = get(at)?;
                        at += 8;
                    }
                    _ => break,
                }
            }
            (IpAddr::from(s), next, at)
        }
        _ => return None,
    };
    if proto != 6 {
        return None;
    }
    let flags = get(l4 + 13)?;
    (f.len() >= l4 + 20 && be16(l4 + 2)? == 22 && flags & SYN != 0 && flags & ACK == 0).then_some(src)
}

#[test]
fn property_never_aborts_and_gated_syns_pass_only_when_allowed() {
    let p = program(&config(3600));
    knock(&p, CLIENT, &[7000, 8000]);
    knock(&p, CLIENT6, &[7000, 8000]);
    let tcp22 = Knock { port: 22, proto: Proto::Tcp };
    let bases: Vec<Vec<u8>> = [CLIENT, STRANGER, CLIENT6, "2001:db8::3"]
        .iter()
        .flat_map(|src| {
            [
                syn22(src),
                syn22(src).vlan(9),
                syn22(src).vlan(9).vlan(10),
                if src.contains(':') { syn22(src).v6_ext(&[0, 43, 60]) } else { syn22(src).ip_options(4) },
                if src.contains(':') {
                    syn22(src).v6_ext(&[44]).fragment(0, true)
                } else {
                    syn22(src).fragment(0, true)
                },
            ]
        })
        .map(|f| f.build())
        .collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut passed, mut dropped) = (0u32, 0u32);
    for i in 0..30_000 {
        let frame: Vec<u8> = if i % 10 == 0 {
            // Wholly random bytes.
            (0..14 + rng.below(120)).map(|_| u8::try_from(rng.next() & 0xff).unwrap()).collect()
        } else {
            let mut f = bases[rng.below(bases.len())].clone();
            for _ in 0..=rng.below(3) {
                let at = rng.below(f.len());
                f[at] = u8::try_from(rng.next() & 0xff).unwrap();
            }
            if rng.below(4) == 0 {
                f.truncate(14 + rng.below(f.len() - 13));
            }
            f
        };
        if !test_runs(&frame) {
            continue;
        }
        let verdict = p.test_run(hook(), &frame).unwrap();
        assert_ne!(verdict, XDP_ABORTED, "frame {frame:02x?}");
        assert!(verdict == XDP_PASS || verdict == XDP_DROP, "verdict {verdict}");
        if verdict == XDP_PASS {
            passed += 1;
            if let Some(src) = syn_to_22(&frame) {
                assert!(
                    p.allowed_until(src, tcp22).unwrap().is_some(),
                    "a SYN to 22 from {src} passed without an allowance: {frame:02x?}"
                );
            }
        } else {
            dropped += 1;
        }
    }
    assert!(passed > 1000 && dropped > 1000, "both verdicts exercised: {passed} passed, {dropped} dropped");
}
