//! Section 4: the cost with the attempt tables full, and knockd's with its attempts pending.

use std::time::{Duration, Instant};

use knockd_user::kernel::program::{KnockProgram, Limits};
use serde_json::{Value, json};
use tests::{
    daemon::wait_for,
    frame::{FrameBuilder, SYN},
    kernel::program_with,
};

use crate::{
    Opts, cpu_seconds, median,
    per_packet::{Measured, pin_to_current_cpu, reference_programs, reference_run},
    rig::{Peer, Rig},
};

pub(crate) fn scale(opts: &Opts) -> Value {
    let (sizes, runs, repeat): (&[u32], usize, u32) =
        if opts.smoke { (&[1_000], 3, 2_000) } else { (&[1_000, 100_000, 1_000_000], 21, 200_000) };
    let adv = vec!["7000"; 32].join(",");
    let references = reference_programs();
    let _pinned = pin_to_current_cpu();
    let mut rows = Vec::new();
    for &n in sizes {
        let limits = Limits { progress_entries: n, first_knock_entries: n, ..Limits::default() };
        let (mut p, doors) = program_with(&format!("[adv]\nsequence = {adv}\nseq_timeout = 3600\n"), limits);
        let epoch = doors.active().next().unwrap().1.epoch;
        let fill = Instant::now();
        p.fill_attempts(n, epoch, 0).unwrap();
        let fill_s = fill.elapsed().as_secs_f64();
        // A source in the middle of the table knocks its next step.
        let src = format!("2001:db8:ffff::{:x}:{:x}", (n / 2) >> 16, (n / 2) & 0xffff);
        let step = FrameBuilder::tcp(&src, "2001:db8::1", 7000, SYN).build();
        let other = FrameBuilder::tcp("198.18.0.2", "198.18.0.1", 443, SYN).build();
        // Each run also times the empty program, so that the rows compare as ratios: this VM's
        // speed drifts between rows more than the table size moves the cost.
        let (mut ks, mut os, mut kr, mut or) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let (_, empty) = reference_run(&references, "xdp_pass", &step, repeat);
            let (_, k) = Measured::Knockgate(&p).run(&references, &step, repeat);
            let (_, o) = Measured::Knockgate(&p).run(&references, &other, repeat);
            ks.push(k);
            os.push(o);
            kr.push(k / empty.max(1.0));
            or.push(o / empty.max(1.0));
        }
        let memory = KnockProgram::map_memory();
        let tables: u64 = memory.iter().filter(|(m, _)| m == "PROGRESS" || m == "FIRST_KNOCKS").map(|(_, b)| b).sum();
        rows.push(json!({
            "sources": n,
            "knock_step_ns": median(&mut ks),
            "non_knock_syn_ns": median(&mut os),
            "knock_step_ratio": median(&mut kr),
            "non_knock_syn_ratio": median(&mut or),
            "attempt_tables_bytes": tables,
            "fill_seconds": fill_s,
        }));
    }
    json!({ "runs": runs, "repeat": repeat, "rows": rows })
}

/// knockd's CPU per packet with N attempts pending (its cleanup walks them all per packet).
pub(crate) fn knockd_scale(opts: &Opts) -> Value {
    let (sizes, probe): (&[usize], usize) = if opts.smoke { (&[100], 50) } else { (&[1_000, 100_000], 500) };
    let mut rows = Vec::new();
    for &n in sizes {
        let rig = Rig::start(Peer::Knockd, "[k]\n\tsequence = 7000,8000,9000\n\tseq_timeout = 3600\n");
        let pid = rig.daemon.pid().unwrap();
        let fill = Instant::now();
        let limit = Duration::from_secs(if opts.smoke { 30 } else { 600 });
        // Inject in batches and let knockd catch up, so its capture buffer never overflows.
        let mut sent = 0usize;
        while sent < n && fill.elapsed() < limit {
            let batch = 500.min(n - sent);
            for i in sent..sent + batch {
                rig.syn(&format!("2001:db8:1::{:x}:{:x}", i >> 16, i & 0xffff), 7000);
            }
            sent += batch;
            wait_for(limit.saturating_sub(fill.elapsed()), || rig.count(": k: Stage 1") >= sent * 99 / 100);
        }
        let pending = rig.count(": k: Stage 1");
        let before = cpu_seconds(pid);
        for i in 0..probe {
            rig.syn(&format!("2001:db8:2::{:x}", i + 1), 7000);
            std::thread::sleep(Duration::from_micros(200));
        }
        wait_for(Duration::from_mins(2), || rig.count(": k: Stage 1") >= pending + probe);
        let handled = rig.count(": k: Stage 1") - pending;
        let cpu = cpu_seconds(pid) - before;
        rows.push(json!({
            "pending_attempts": pending,
            "probe_packets": handled,
            "cpu_us_per_packet": if handled > 0 { cpu * 1e6 / handled as f64 } else { 0.0 },
            "fill_seconds": fill.elapsed().as_secs_f64(),
        }));
    }
    json!({ "rows": rows })
}
