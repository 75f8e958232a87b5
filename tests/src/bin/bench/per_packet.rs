//! Section 1: the XDP program's cost per packet (`BPF_PROG_TEST_RUN`).

use std::fmt::Write as _;

use knock_common::{
    Counter, XDP_DROP, XDP_PASS,
    secret::derive::{Params, Secret},
};
use knockd_user::{
    XDP_PASS_EBPF,
    kernel::hooks::Hook,
    kernel::program::{KnockProgram, Limits},
};
use serde_json::{Value, json};
use tests::{
    frame::{ACK, FrameBuilder, SYN},
    kernel::{counter, program_with},
};

use crate::{Opts, median, percentile};

/// The reference programs (`knock-ebpf/src/pass.rs`): the empty `xdp_pass`, and the floors
/// `port_floor` and `knock_floor`.
pub(crate) fn reference_programs() -> aya::Ebpf {
    let mut ebpf = aya::Ebpf::load(XDP_PASS_EBPF).unwrap();
    for name in ["xdp_pass", "port_floor", "knock_floor"] {
        let prog: &mut aya::programs::Xdp = ebpf.program_mut(name).unwrap().try_into().unwrap();
        prog.load().unwrap();
    }
    let prog: &mut aya::programs::SchedClassifier = ebpf.program_mut("tc_pass").unwrap().try_into().unwrap();
    prog.load().unwrap();
    ebpf
}

/// Runs reference program `name` `repeat` times on `frame`: the verdict and the kernel's mean
/// time per run. Whole nanoseconds, but the wall time of the call is no better: with
/// `repeat > 1` the kernel swaps the program into the XDP dispatcher and out again around the
/// runs, which costs milliseconds of waiting.
pub(crate) fn reference_run(ebpf: &aya::Ebpf, name: &str, frame: &[u8], repeat: u32) -> (u32, f64) {
    use aya::programs::TestRun as _;
    let opts = aya::programs::TestRunOptions { data_in: Some(frame), repeat, ..Default::default() };
    let r = match ebpf.program(name).unwrap() {
        aya::programs::Program::SchedClassifier(prog) => prog.test_run(opts).unwrap(),
        prog => <&aya::programs::Xdp>::try_from(prog).unwrap().test_run(opts).unwrap(),
    };
    (r.return_value, r.duration.as_nanos() as f64)
}

/// A program measured in the per-packet table.
#[derive(Clone, Copy)]
pub(crate) enum Measured<'a> {
    Knockgate(&'a KnockProgram),
    /// knockgate at TC ingress (`knockgate_tc`), against `tc_pass`.
    KnockgateTc(&'a KnockProgram),
    /// A reference program, by name.
    Reference(&'static str),
}

impl Measured<'_> {
    /// The empty program it is measured against: at its hook.
    pub(crate) fn empty(self) -> &'static str {
        if matches!(self, Measured::KnockgateTc(_)) { "tc_pass" } else { "xdp_pass" }
    }

    pub(crate) fn run(self, references: &aya::Ebpf, frame: &[u8], repeat: u32) -> (u32, f64) {
        match self {
            Measured::Knockgate(p) => {
                let (verdict, d) = p.test_run_timed(Hook::Xdp, frame, repeat).unwrap();
                (verdict, d.as_nanos() as f64)
            }
            Measured::KnockgateTc(p) => {
                let (verdict, d) = p.test_run_timed(Hook::Tc, frame, repeat).unwrap();
                (verdict, d.as_nanos() as f64)
            }
            Measured::Reference(name) => reference_run(references, name, frame, repeat),
        }
    }
}

/// Secret and plain doors set up so that one frame, repeated, takes the same path each time.
struct RepeatDoors {
    /// `c`'s first knock is in: the first port again is the step just matched.
    secret: KnockProgram,
    plain: KnockProgram,
    /// `seq_timeout = 0`: every attempt has expired by the next frame, so each is a first knock.
    secret_first: KnockProgram,
    plain_first: KnockProgram,
    /// The secret doors' first port in this window.
    first_port: u16,
    _keys: tempfile::TempDir,
}

/// The secret door's later steps differ, so no frame repeats as an advancing step: the rows
/// compare the step just matched (a retransmission) and a first knock, which both kinds of
/// door take. `before` is configuration for the doors before the one measured.
fn repeat_doors(c: &str, s: &str, before: &str) -> RepeatDoors {
    let keys = tempfile::tempdir().unwrap();
    let secret = Secret::from_bytes(&[7; 32]);
    let key = keys.path().join("bench.key");
    std::fs::write(&key, secret.to_hex()).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let secret_door = |timeout: u32| {
        program_with(
            &format!(
                "{before}[s]\nsecret_file = {}\nwindow = 86400\nseq_timeout = {timeout}\ntcpflags = syn\ngate = 22/tcp\n",
                key.display()
            ),
            Limits::default(),
        )
        .0
    };
    let plain_door = |timeout: u32| {
        program_with(
            &format!("{before}[p]\nsequence = 7200,7300\nseq_timeout = {timeout}\ntcpflags = syn\n"),
            Limits::default(),
        )
        .0
    };
    let params = Params { length: 4, window_secs: 86_400, proto: knock_common::PROTO_TCP };
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let first_port = secret.window_key(&params, params.window_at(unix)).first;
    let doors = RepeatDoors {
        secret: secret_door(3600),
        plain: plain_door(3600),
        secret_first: secret_door(0),
        plain_first: plain_door(0),
        first_port,
        _keys: keys,
    };
    doors.secret.test_run(Hook::Xdp, &FrameBuilder::tcp(c, s, first_port, SYN).build()).unwrap();
    doors.plain.test_run(Hook::Xdp, &FrameBuilder::tcp(c, s, 7200, SYN).build()).unwrap();
    doors
}

pub(crate) fn per_packet(opts: &Opts) -> Value {
    let (rounds, repeat) = if opts.smoke { (3, 2_000) } else { (31, 100_000) };
    let adv = vec!["7000"; 32].join(",");
    let config = format!(
        "[adv]\nsequence = {adv}\nseq_timeout = 3600\ntcpflags = syn\n[one]\nsequence = 7100\ntcpflags = syn\ngate = 22/tcp\ngate_timeout = 3600\n"
    );
    let (p, _) = program_with(&config, Limits::default());
    // One door and two: a knock visits the doors naming its port and those where its source
    // has an attempt (`by_doors` has the cost against the number of doors).
    let (single, _) =
        program_with(&format!("[adv]\nsequence = {adv}\nseq_timeout = 3600\ntcpflags = syn\n"), Limits::default());
    let references = reference_programs();
    let (c, s) = ("198.18.0.2", "198.18.0.1");
    let r = repeat_doors(c, s, "");
    let mut arp = FrameBuilder::tcp(c, s, 80, SYN).build();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, u32, Measured<'_>)> = vec![
        ("non-IP frame (ARP)", arp, XDP_PASS, Measured::Knockgate(&p)),
        ("UDP to a non-knock port", FrameBuilder::udp(c, s, 53).build(), XDP_PASS, Measured::Knockgate(&p)),
        ("TCP ACK", FrameBuilder::tcp(c, s, 443, ACK).build(), XDP_PASS, Measured::Knockgate(&p)),
        ("SYN to a non-knock port", FrameBuilder::tcp(c, s, 443, SYN).build(), XDP_PASS, Measured::Knockgate(&p)),
        (
            "SYN that advances a knock (two doors)",
            FrameBuilder::tcp(c, s, 7000, SYN).build(),
            XDP_PASS,
            Measured::Knockgate(&p),
        ),
        (
            "SYN that advances a knock (one door)",
            FrameBuilder::tcp(c, s, 7000, SYN).build(),
            XDP_PASS,
            Measured::Knockgate(&single),
        ),
        (
            "SYN that completes a knock (opens the gate)",
            FrameBuilder::tcp("198.18.0.9", s, 7100, SYN).build(),
            XDP_PASS,
            Measured::Knockgate(&p),
        ),
        (
            "IPv6 SYN, 3 extension headers",
            FrameBuilder::tcp("2001:db8::2", "2001:db8::1", 443, SYN).v6_ext(&[0, 43, 60]).build(),
            XDP_PASS,
            Measured::Knockgate(&p),
        ),
        ("gated SYN dropped", FrameBuilder::tcp("198.18.0.3", s, 22, SYN).build(), XDP_DROP, Measured::Knockgate(&p)),
        (
            "SYN to a non-knock port, a secret door configured",
            FrameBuilder::tcp("198.18.0.7", s, 443, SYN).build(),
            XDP_PASS,
            Measured::Knockgate(&r.secret),
        ),
        (
            "secret door: the step just matched, again",
            FrameBuilder::tcp(c, s, r.first_port, SYN).build(),
            XDP_PASS,
            Measured::Knockgate(&r.secret),
        ),
        (
            "plain door: the step just matched, again",
            FrameBuilder::tcp(c, s, 7200, SYN).build(),
            XDP_PASS,
            Measured::Knockgate(&r.plain),
        ),
        (
            "secret door: a first knock (window key, PRF, attempt stored)",
            FrameBuilder::tcp(c, s, r.first_port, SYN).build(),
            XDP_PASS,
            Measured::Knockgate(&r.secret_first),
        ),
        (
            "plain door: a first knock (attempt stored)",
            FrameBuilder::tcp(c, s, 7200, SYN).build(),
            XDP_PASS,
            Measured::Knockgate(&r.plain_first),
        ),
        // What any port-knocking filter costs at least (see knock-ebpf/src/pass.rs).
        (
            "floor: the port of a SYN to a non-knock port read and compared",
            FrameBuilder::tcp(c, s, 443, SYN).build(),
            XDP_PASS,
            Measured::Reference("port_floor"),
        ),
        (
            "floor: a knock as one read and write of the source's entry",
            FrameBuilder::tcp(c, s, 7000, SYN).build(),
            XDP_PASS,
            Measured::Reference("knock_floor"),
        ),
    ];
    let rows = measure(&cases, &references, rounds, repeat);
    let tc_rows = tc_rows(&config, &adv, &references, rounds, repeat);
    json!({
        "runs": rounds,
        "repeat": repeat,
        "rows": rows,
        "tc_rows": tc_rows,
        "by_doors": by_doors(&references, rounds, repeat),
        "paired_per_round": paired_per_round(repeat),
    })
}

/// The per-packet rows of the program at TC ingress (`knockgate_tc`), against `tc_pass`: the
/// two-door config `config` and the one-door one with sequence `adv`.
fn tc_rows(config: &str, adv: &str, references: &aya::Ebpf, rounds: u32, repeat: u32) -> Vec<Value> {
    let (c, s) = ("198.18.0.2", "198.18.0.1");
    // The same program at TC ingress, against an empty TC program.
    let (mut tc, _) = program_with(config, Limits::default());
    tc.load_tc().unwrap();
    let (mut tc_single, _) =
        program_with(&format!("[adv]\nsequence = {adv}\nseq_timeout = 3600\ntcpflags = syn\n"), Limits::default());
    tc_single.load_tc().unwrap();
    let mut arp = FrameBuilder::tcp(c, s, 80, SYN).build();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let tc_cases: Vec<(&str, Vec<u8>, u32, Measured<'_>)> = vec![
        ("non-IP frame (ARP)", arp, XDP_PASS, Measured::KnockgateTc(&tc)),
        ("TCP ACK", FrameBuilder::tcp(c, s, 443, ACK).build(), XDP_PASS, Measured::KnockgateTc(&tc)),
        ("SYN to a non-knock port", FrameBuilder::tcp(c, s, 443, SYN).build(), XDP_PASS, Measured::KnockgateTc(&tc)),
        (
            "SYN that advances a knock (one door)",
            FrameBuilder::tcp(c, s, 7000, SYN).build(),
            XDP_PASS,
            Measured::KnockgateTc(&tc_single),
        ),
        (
            "gated SYN dropped",
            FrameBuilder::tcp("198.18.0.3", s, 22, SYN).build(),
            XDP_DROP,
            Measured::KnockgateTc(&tc),
        ),
    ];
    measure(&tc_cases, references, rounds, repeat)
}

/// Door counts of the cost-against-doors table.
const DOOR_COUNTS: [u32; 4] = [1, 2, 8, 32];

/// `n` doors of three ports each, the last of them `last` instead; `timeout` for all.
fn doors_config(n: u32, last: &str, timeout: u32) -> String {
    let mut config = plain_doors(n - 1, timeout);
    writeln!(config, "[last]\nsequence = {last}\nseq_timeout = {timeout}\ntcpflags = syn").unwrap();
    config
}

/// `n` doors of three ports each (10000-10002, 10010-10012, ...).
fn plain_doors(n: u32, timeout: u32) -> String {
    let mut config = String::new();
    for i in 0..n {
        let p = 10_000 + i * 10;
        writeln!(config, "[d{i}]\nsequence = {p},{},{}\nseq_timeout = {timeout}\ntcpflags = syn", p + 1, p + 2)
            .unwrap();
    }
    config
}

/// The knock step against the number of doors: the knock hits the last door, so a walk over
/// every door would pass all the others first.
fn by_doors(references: &aya::Ebpf, rounds: u32, repeat: u32) -> Vec<Value> {
    let (c, s) = ("198.18.0.2", "198.18.0.1");
    // The last door's sequence is one port 32 times: each repeat of it is a later step (one
    // in 32 completes the sequence). With `seq_timeout = 0` every repeat is a first knock.
    let adv = vec!["7000"; 32].join(",");
    let mut rows = Vec::new();
    for n in DOOR_COUNTS {
        let (later, _) = program_with(&doors_config(n, &adv, 3600), Limits::default());
        let (first, _) = program_with(&doors_config(n, "7000,7001", 0), Limits::default());
        let syn = |port| FrameBuilder::tcp(c, s, port, SYN).build();
        // The last door a secret door (`repeat_doors`), after N - 1 plain doors.
        let r = repeat_doors(c, s, &plain_doors(n - 1, 3600));
        let cases: Vec<(&str, Vec<u8>, u32, Measured<'_>)> = vec![
            ("first knock", syn(7000), XDP_PASS, Measured::Knockgate(&first)),
            ("later step", syn(7000), XDP_PASS, Measured::Knockgate(&later)),
            ("SYN to another port", syn(443), XDP_PASS, Measured::Knockgate(&later)),
            ("secret door: a first knock", syn(r.first_port), XDP_PASS, Measured::Knockgate(&r.secret_first)),
            ("secret door: the step just matched, again", syn(r.first_port), XDP_PASS, Measured::Knockgate(&r.secret)),
        ];
        let (resets, _) = program_with(&doors_config(n, "7000,7001,7002", 3600), Limits::default());
        let mut paired = vec![Paired {
            case: "reset within its door (7000, then 7002)",
            setup: syn(7000),
            frame: syn(7002),
            program: &resets,
        }];
        if n > 1 {
            // The source's attempt is at the first door: a knock at the last door's second
            // port resets it (and starts nothing: that door has no attempt to advance).
            paired.push(Paired {
                case: "reset across doors (10000, then 7001)",
                setup: syn(10_000),
                frame: syn(7001),
                program: &resets,
            });
        }
        // A first knock on the same program, timed as the resets are (7002 ends the attempt
        // the last run started): single runs cost more than repeated ones.
        paired.push(Paired {
            case: "first knock, timed as the resets (7002, then 7000)",
            setup: syn(7002),
            frame: syn(7000),
            program: &resets,
        });
        let mut measured = measure(&cases, references, rounds, repeat);
        measured.extend(measure_paired(&paired, references, rounds, repeat));
        calibrate_resets(&mut measured);
        for mut row in measured {
            row["doors"] = json!(n);
            rows.push(row);
        }
    }
    rows
}

/// Gives the reset rows of one door count their cost as the repeated rows would show it
/// (`calibrated_ns`, and `calibrated_ratio` against the empty program): the repeated first
/// knock's ns, plus what the reset costs over the first knock timed as the resets are, on the
/// same program. The report and the plot read these.
fn calibrate_resets(rows: &mut [Value]) {
    let find = |rows: &[Value], prefix: &str| {
        rows.iter().find(|r| r["case"].as_str().is_some_and(|c| c.starts_with(prefix))).cloned()
    };
    let (Some(first), Some(paired)) = (find(rows, "first knock"), find(rows, "first knock, timed as")) else {
        return;
    };
    let ns = |v: &Value| v.as_f64().unwrap_or(0.0);
    for row in rows.iter_mut().filter(|r| r["case"].as_str().is_some_and(|c| c.starts_with("reset"))) {
        let calibrated = ns(&first["knockgate_ns"]) + ns(&row["added_ns"]) - ns(&paired["added_ns"]);
        row["calibrated_ns"] = json!(calibrated);
        row["calibrated_ratio"] = json!(calibrated / ns(&first["empty_ns"]).max(f64::MIN_POSITIVE));
    }
}

/// A measured frame that changes the state it finds, so it cannot repeat: a reset leaves no
/// attempt for the next run to reset. `setup` (untimed) makes that state again each time.
struct Paired<'a> {
    case: &'static str,
    setup: Vec<u8>,
    frame: Vec<u8>,
    program: &'a KnockProgram,
}

/// Frames measured from `paired_per_round` pairs in each of `rounds` rounds: `setup` run,
/// then `frame` run once and timed, then the empty program run once on it and timed. A single
/// timed run also carries the kernel's timer and call overhead, which the difference of the
/// two (trimmed) means cancels. That difference is the round's added ns; its ratio is taken against
/// the empty program timed in `repeat` runs, as in `measure`, so the rows compare.
fn measure_paired(cases: &[Paired<'_>], references: &aya::Ebpf, rounds: u32, repeat: u32) -> Vec<Value> {
    let _pinned = pin_to_current_cpu();
    let per_round = paired_per_round(repeat);
    let mut samples = vec![(Vec::new(), Vec::new(), Vec::new(), Vec::new()); cases.len()];
    for _ in 0..rounds {
        for (case, (k, e, r, a)) in cases.iter().zip(&mut samples) {
            let (_, before) = reference_run(references, "xdp_pass", &case.frame, repeat);
            let resets = counter(case.program, Counter::Resets);
            let (mut one, mut empty_one) = (Vec::new(), Vec::new());
            for _ in 0..per_round {
                case.program.test_run(Hook::Xdp, &case.setup).unwrap();
                let (verdict, d) = case.program.test_run_timed(Hook::Xdp, &case.frame, 1).unwrap();
                assert_eq!(verdict, XDP_PASS, "{}", case.case);
                one.push(d.as_nanos() as f64);
                empty_one.push(reference_run(references, "xdp_pass", &case.frame, 1).1);
            }
            if case.case.starts_with("reset") {
                assert_eq!(
                    counter(case.program, Counter::Resets) - resets,
                    u64::from(per_round),
                    "{}: every run a reset",
                    case.case
                );
            }
            let (_, after) = reference_run(references, "xdp_pass", &case.frame, repeat);
            let en = f64::midpoint(before, after);
            let added = trimmed_mean(&mut one) - trimmed_mean(&mut empty_one);
            k.push(en + added);
            e.push(en);
            r.push(if en > 0.0 { (en + added) / en } else { 0.0 });
            a.push(added);
        }
    }
    cases.iter().zip(&mut samples).map(|(case, (k, e, r, a))| row(case.case, k, e, r, a)).collect()
}

/// Times each case against the empty program, in `rounds` rounds of `repeat` runs: a row each.
fn measure(
    cases: &[(&str, Vec<u8>, u32, Measured<'_>)],
    references: &aya::Ebpf,
    rounds: u32,
    repeat: u32,
) -> Vec<Value> {
    // One CPU for the whole table, so that both programs run on the same core and caches.
    let _pinned = pin_to_current_cpu();
    // Rounds interleave the cases and the two programs, so a slow spell of this shared
    // machine hits both sides of a ratio; each ratio is taken within one round.
    let mut samples = vec![(Vec::new(), Vec::new(), Vec::new(), Vec::new()); cases.len()];
    for _ in 0..rounds {
        for ((name, frame, want, p), (k, e, r, a)) in cases.iter().zip(&mut samples) {
            let (_, before) = reference_run(references, p.empty(), frame, repeat);
            let (verdict, kn) = p.run(references, frame, repeat);
            let (_, after) = reference_run(references, p.empty(), frame, repeat);
            assert_eq!(verdict, *want, "{name}");
            let en = f64::midpoint(before, after);
            k.push(kn);
            e.push(en);
            r.push(if en > 0.0 { kn / en } else { 0.0 });
            a.push(kn - en);
        }
    }
    cases.iter().zip(&mut samples).map(|((name, ..), (k, e, r, a))| row(name, k, e, r, a)).collect()
}

/// The mean of the middle 80% of `v`: single runs are timed in steps of about 10 ns here, too
/// coarse for a median, and the mean of all would take in the slow outliers.
fn trimmed_mean(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let cut = v.len() / 10;
    let middle = &v[cut..v.len() - cut];
    middle.iter().sum::<f64>() / middle.len().max(1) as f64
}

/// Pairs per round in `measure_paired`: a full run's, or a smoke run's with few repeats.
const fn paired_per_round(repeat: u32) -> u32 {
    if repeat > 10_000 { 1_000 } else { 50 }
}

/// A table row from its rounds: the program's ns, the empty program's, their ratio and the
/// added ns.
fn row(case: &str, k: &mut [f64], e: &mut [f64], r: &mut [f64], a: &mut [f64]) -> Value {
    json!({
        "case": case,
        "knockgate_ns": median(k),
        "empty_ns": median(e),
        "added_ns": median(a),
        "ratio": median(r),
        "ratio_q1": percentile(r, 0.25),
        "ratio_q3": percentile(r, 0.75),
    })
}

/// Pins this thread to the CPU it runs on until the guard drops (then the old set of CPUs
/// applies again: daemons and senders started later must not inherit one CPU).
pub(crate) fn pin_to_current_cpu() -> impl Drop {
    struct Restore(libc::cpu_set_t);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: a cpu_set_t read by sched_getaffinity.
            unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const self.0) };
        }
    }
    // SAFETY: plain libc calls on zeroed cpu_set_t values.
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut old);
        let cpu = usize::try_from(libc::sched_getcpu()).unwrap_or(0);
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set);
        Restore(old)
    }
}
