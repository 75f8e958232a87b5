//! The summary printed and the report written (`BENCHMARKS.md`).

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::scrape;

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

pub(crate) fn summary(r: &Value) -> String {
    let mut s = String::new();
    let rows = r["per_packet"]["rows"].as_array().cloned().unwrap_or_default();
    let worst_other = rows.iter().take(4).map(|x| f(&x["ratio"])).fold(0.0, f64::max);
    let ratio = |is: &dyn Fn(&str) -> bool| {
        rows.iter().find(|x| x["case"].as_str().is_some_and(is)).map_or(0.0, |x| f(&x["ratio"]))
    };
    let step = |doors: &str| ratio(&|c| c.contains("advances") && c.contains(doors));
    let floor = |what: &str| ratio(&|c| c.starts_with("floor") && c.contains(what));
    let again = |door: &str| ratio(&|c| c.starts_with(door) && c.contains("just matched"));
    let first = |door: &str| ratio(&|c| c.starts_with(door) && c.contains("a first knock"));
    writeln!(
        s,
        "per-packet: non-knock traffic <= {worst_other:.2}x the empty program, a knock step {:.2}x (one door), {:.2}x (two doors); floors {:.2}x (port), {:.2}x (knock)",
        step("one door"),
        step("two doors"),
        floor("port"),
        floor("knock as")
    )
    .unwrap();
    writeln!(
        s,
        "per-packet: secret door: a step {:.2}x the empty program, {:.2}x a plain door's same step; a first knock {:.2}x, {:.2}x a plain door's; a SYN to another port with a secret door {:.2}x",
        again("secret"),
        again("secret") / again("plain").max(f64::MIN_POSITIVE),
        first("secret"),
        first("secret") / first("plain").max(f64::MIN_POSITIVE),
        ratio(&|c| c.contains("a secret door configured"))
    )
    .unwrap();
    for fl in r["flood"].as_array().cloned().unwrap_or_default() {
        writeln!(
            s,
            "flood: {}{}: {}/{} opens, daemon {:.2}% of a core, flood {:.0} pps ({}), {} frames dropped by the veth",
            fl["daemon"].as_str().unwrap_or(""),
            if fl["stealth"].as_bool() == Some(true) { " (stealth)" } else { "" },
            fl["opened"],
            fl["knocks"],
            f(&fl["daemon_cpu_percent"]),
            f(&fl["flood_pps"]),
            if fl["paced_pps"].as_u64() == Some(0) { "as fast as possible" } else { "paced" },
            fl["veth_dropped"]
        )
        .unwrap();
    }
    for l in r["latency"].as_array().cloned().unwrap_or_default() {
        writeln!(
            s,
            "latency: {}: p50 {:.2} ms, p99 {:.2} ms",
            l["daemon"].as_str().unwrap_or(""),
            f(&l["p50_ms"]),
            f(&l["p99_ms"])
        )
        .unwrap();
    }
    let g = &r["gate_latency"];
    writeln!(s, "gate latency: p50 {:.3} ms, p99 {:.3} ms", f(&g["p50_ms"]), f(&g["p99_ms"])).unwrap();
    let g = &r["spawn_floor"];
    writeln!(s, "spawn floor: p50 {:.3} ms, p99 {:.3} ms", f(&g["p50_ms"]), f(&g["p99_ms"])).unwrap();
    let g = &r["scrape"];
    writeln!(s, "metrics scrape: full tables p50 {:.1} ms, max {:.1} ms", f(&g["full_p50_ms"]), f(&g["full_max_ms"]))
        .unwrap();
    writeln!(s, "{}", crate::fleet::summary(r)).unwrap();
    s
}

/// A `measure` row's cells: frame, program ns, empty program ns, added ns, ratio (quartiles).
fn cost_cells(row: &Value) -> String {
    format!(
        "{} | {:.1} | {:.1} | {:.1} | {:.2}x ({:.2}-{:.2})",
        row["case"].as_str().unwrap_or(""),
        f(&row["knockgate_ns"]),
        f(&row["empty_ns"]),
        f(&row["added_ns"]),
        f(&row["ratio"]),
        f(&row["ratio_q1"]),
        f(&row["ratio_q3"])
    )
}

#[expect(clippy::too_many_lines, reason = "the report's prose, written in the order it reads")]
pub(crate) fn report(r: &Value) -> String {
    let mut s = String::new();
    writeln!(s, "# knockgate benchmarks\n").unwrap();
    writeln!(
        s,
        "Produced by `cargo xtask bench` (this file, `results.json` and the plots in `bench/`), kernel {}, {} CPUs, in {:.0} s. \
         Every figure is a median (or percentile) of repeated runs; every comparison is taken in the same run. \
         The machine is a shared 2-core VM: absolute numbers move from run to run, the ratios much less.\n",
        r["kernel"].as_str().unwrap_or("?"),
        r["cpus"],
        f(&r["seconds"])
    ).unwrap();
    writeln!(s, "## 1. Per-packet cost of the XDP program (`BPF_PROG_TEST_RUN`)\n").unwrap();
    writeln!(
        s,
        "{} rounds of {} repetitions per frame, the shipped program timed between two runs of an empty `XDP_PASS` program \
         loaded in the same run, all on one CPU; the ratio is the median of the rounds' ratios (in brackets, the middle half \
         of them), the ns columns are medians; \"added ns\" is the median of the rounds' differences from the empty program, \
         the figure that carries over between machines, where the empty program's own cost does not. The kernel reports \
         whole nanoseconds per run. Targets: non-knock traffic ≤ 1.2x the empty program, a knock step ≤ 3x.\n\n\
         The two floor rows are reference programs (`knock-ebpf/src/pass.rs`) that do the least any port-knocking filter \
         must: read a frame's port and compare it with a knock port; and, for a knock, also read and write one \
         per-source entry, with no check that the entry is the source's, no timeout, no flood-proof second table and no \
         event. What knockgate adds above them is its parser (VLAN tags, IPv6 extension headers, fragments), the gate, \
         and the attempt tables' safeguards.\n\n\
         The secret-door rows (`secret_file`, one door) compare with a plain door of two steps measured the same way. \
         A secret door's later ports differ from step to step, so no repeated frame advances its attempt: the rows time \
         the step just matched sent again (the attempt found, its window key checked, the port compared), and a first \
         knock (with `seq_timeout = 0`, every attempt has expired by the next frame), which computes the SipHash block \
         of the later ports and stores the attempt. A secret door's packets go from `knockgate` to `knockgate_secret` by \
         tail call. Target: a secret door's step ≤ 2x a plain door's. The SYN to another port comes from a source with \
         no attempt: with a secret door configured, every SYN and UDP datagram looks at its source's attempt sets.\n",
        r["per_packet"]["runs"], r["per_packet"]["repeat"]
    ).unwrap();
    writeln!(s, "| frame | program ns | empty program ns | added ns | ratio |\n|---|---:|---:|---:|---:|").unwrap();
    for row in r["per_packet"]["rows"].as_array().cloned().unwrap_or_default() {
        writeln!(s, "| {} |", cost_cells(&row)).unwrap();
    }
    writeln!(s, "\n![per-packet cost](bench/per_packet.png)\n").unwrap();
    writeln!(s, "### At TC ingress\n").unwrap();
    writeln!(
        s,
        "The same program at TC ingress (`knockgate_tc`, as `Attach = tc` or `auto` runs it behind another XDP program), \
         timed the same way against an empty TC program (`tc_pass`, `knock-ebpf/src/pass.rs`) loaded in the same run. \
         The kernel builds the skb of each run outside the timed part; what TC ingress costs a real packet before any \
         program runs (the skb) is not in these figures.\n"
    )
    .unwrap();
    writeln!(s, "| frame | program ns | empty program ns | added ns | ratio |\n|---|---:|---:|---:|---:|").unwrap();
    for row in r["per_packet"]["tc_rows"].as_array().cloned().unwrap_or_default() {
        writeln!(s, "| {} |", cost_cells(&row)).unwrap();
    }
    writeln!(s, "\n### Cost against the number of doors\n").unwrap();
    writeln!(
        s,
        "N doors of three ports each; the knock hits the last door, whose sequence is one port 32 times (each repeat a later \
         step, one in 32 completing), or, with `seq_timeout = 0`, two ports (each repeat a first knock), or three ports for \
         the resets. In the secret rows the last door is a secret door, measured as in the table above. A knock visits only \
         the doors naming its port and the doors where its source has an attempt (`knock_common::visit`): `knockgate` \
         matches one door naming the port and ends one other door's attempt inline, and hands more to `knockgate_doors`. \
         The last column is the program's ns against the same frame with one door (for the reset across doors, against the \
         one-door reset; for the resets, calibrated as below). Target: at most 1.3x.\n\n\
         A reset cannot repeat (it leaves no attempt for the next run to reset), so the reset rows are timed one run at a \
         time: each of {} pairs per round runs an untimed frame that makes the attempt again (10000 or 7000), then the \
         reset, timed, then the empty program on it, timed the same way; the row's added ns is the difference of the two \
         means of the middle 80% (single runs are timed in steps of about 10 ns here), and its ratio is taken against the empty program timed in repeated runs, as everywhere else. A single \
         timed run costs more than one of many repeated, even after the difference: the row \"first knock, timed as the \
         resets\" is a first knock on the same program timed this way. How much more a single run costs varies from one \
         loaded program to the next (by tens of ns, alike for both frames on one program), so a reset is compared through \
         it: its calibrated ns is the repeated first knock's ns plus the reset's added ns less the single-run first \
         knock's.\n",
        r["per_packet"]["paired_per_round"]
    )
    .unwrap();
    writeln!(
        s,
        "| doors | frame | program ns | empty program ns | added ns | ratio | calibrated ns | against 1 door |\n|---:|---|---:|---:|---:|---:|---:|---:|"
    )
    .unwrap();
    let by_doors = r["per_packet"]["by_doors"].as_array().cloned().unwrap_or_default();
    let ns = |n: &Value, case: &str| {
        by_doors.iter().find(|x| x["doors"] == *n && x["case"].as_str().is_some_and(|c| c.starts_with(case)))
    };
    // A reset row's cost as the repeated rows would show it, as the bench calibrated it.
    let calibrated = |row: &Value| row["calibrated_ns"].as_f64();
    let cost = |row: &Value| calibrated(row).unwrap_or_else(|| f(&row["knockgate_ns"]));
    for row in &by_doors {
        let case = row["case"].as_str().unwrap_or("");
        let base = if case.starts_with("reset across") { "reset within" } else { case };
        // The single-run first knock is the resets' yardstick, not a cost to compare.
        let one = if case.starts_with("first knock, timed as") { None } else { ns(&json!(1), base) };
        let against =
            one.map_or(String::from("-"), |one| format!("{:.2}x", cost(row) / cost(one).max(f64::MIN_POSITIVE)));
        let cal = calibrated(row).map_or(String::new(), |c| format!("{c:.1}"));
        writeln!(s, "| {} | {} | {cal} | {against} |", row["doors"], cost_cells(row)).unwrap();
    }
    writeln!(s, "\n![cost against doors](bench/by_doors.png)\n").unwrap();
    writeln!(s, "## 2. Flood resilience\n").unwrap();
    writeln!(
        s,
        "A spoofed SYN flood at the first knock port (130,816 sources, all of 198.18.0.0/15 but the test subnet, in random order, sent with `sendmmsg` on an `AF_PACKET` socket \
         from the client namespace, as fast as one core can) while the legitimate client runs `knock -d 10 SERVER 7000 8000 9000` \
         repeatedly. Daemon CPU is user+system time of the daemon process over the window; softirq and system CPU are the \
         whole machine's (`/proc/stat`), the sender's work included, and where the nftables ruleset and XDP do theirs. \
         Target: every knock opens, under 2% of a core.\n\n\
         The frames carry valid IPv4 and TCP checksums, so the server's stack handles each spoofed SYN that XDP passes as a \
         real one (a connection-tracking entry where a ruleset tracks connections, and a TCP reset). Runs before 2026-12-02 \
         sent zero checksums, which the stack dropped at once; their figures are not comparable.\n\n\
         Each defender faces the flood twice: as fast as the sender can, and paced to a rate the receiving side of the veth \
         absorbs here without dropping frames. With an XDP program attached, a veth queues frames for it in a ring of 256; \
         when the receiving side falls behind, the ring overflows and the veth drops frames before XDP sees them (last \
         column), legitimate knocks among them, which then cannot open. A real NIC's receive ring does the same at its own \
         limit. Without XDP (knockd's and nftables' runs) the veth hands frames straight to the kernel's backlog queue, where losses are \
         not counted here. The drops come in bursts while the knock client starts and runs, so a knock is lost far more \
         often than the share of dropped frames suggests. Sender and receiver share this machine's two CPUs. With \
         `stealth = yes`, knockgate drops the knocks in XDP, and the stack's work for them goes. \
         `knockgate at TC` is the same daemon with `--attach tc` (TCX on Linux 6.6+, `cls_bpf` below): with no XDP program \
         on the veth, its frames take the backlog path as knockd's do, and each one is an skb before knockgate sees it.\n\n\
         The nftables rows are what an operator would write instead of any daemon: the nftables wiki's port-knocking \
         example (`tests/src/bin/bench/nft.rs`), one set of (source, next port) with a 5 s element timeout per step, a set \
         of allowed clients, and `ct state established` for the open port. Nothing leaves the kernel; an open is seen by \
         `nft get element` on the clients set.\n"
    ).unwrap();
    writeln!(s, "| defender | flood | legitimate opens | daemon CPU (% of a core) | softirq CPU (% of a core) | system CPU (% of a core) | flood rate (packets/s) | frames dropped by the veth |\n|---|---|---:|---:|---:|---:|---:|---:|").unwrap();
    for fl in r["flood"].as_array().cloned().unwrap_or_default() {
        let how = if fl["paced_pps"].as_u64() == Some(0) {
            "as fast as possible".to_owned()
        } else {
            format!("paced to {}", fl["paced_pps"])
        };
        writeln!(
            s,
            "| {}{} | {how} | {} of {} | {:.2}% | {:.1}% | {:.1}% | {:.0} | {} |",
            fl["daemon"].as_str().unwrap_or(""),
            if fl["stealth"].as_bool() == Some(true) { ", `stealth = yes`" } else { "" },
            fl["opened"],
            fl["knocks"],
            f(&fl["daemon_cpu_percent"]),
            f(&fl["softirq_cpu_percent"]),
            f(&fl["system_cpu_percent"]),
            f(&fl["flood_pps"]),
            fl["veth_dropped"]
        )
        .unwrap();
    }
    report_tables_fill(&mut s, r);
    writeln!(s, "\n![flood](bench/flood.png)\n").unwrap();
    writeln!(s, "## 3. Knock-to-open latency\n").unwrap();
    writeln!(
        s,
        "From the last knock frame leaving the client to the start command running (`echo x > fifo`, timed by the benchmark reading the FIFO), \
         and, for the gate, to a TCP connection to the gated port being established. Targets: p99 under 5 ms for commands, under 1 ms for the gate. \
         Both daemons run commands through `/bin/sh -c`; the floor row is the benchmark spawning that command itself, timed the same way, \
         with no knock and no daemon: on a VM, the tail of process start-up is the machine's.\n"
    ).unwrap();
    writeln!(s, "| path | trials | missed | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|").unwrap();
    for l in r["latency"].as_array().cloned().unwrap_or_default() {
        writeln!(
            s,
            "| {} command | {} | {} | {:.3} | {:.3} |",
            l["daemon"].as_str().unwrap_or(""),
            l["trials"],
            l["missed"],
            f(&l["p50_ms"]),
            f(&l["p99_ms"])
        )
        .unwrap();
    }
    let g = &r["gate_latency"];
    writeln!(
        s,
        "| knockgate gate (connection accepted) | {} | {} | {:.3} | {:.3} |",
        g["trials"],
        g["missed"],
        f(&g["p50_ms"]),
        f(&g["p99_ms"])
    )
    .unwrap();
    let g = &r["spawn_floor"];
    writeln!(
        s,
        "| floor: the command spawned directly, no knock, no daemon | {} | {} | {:.3} | {:.3} |",
        g["trials"],
        g["missed"],
        f(&g["p50_ms"]),
        f(&g["p99_ms"])
    )
    .unwrap();
    writeln!(s, "\n![latency](bench/latency.png)\n").unwrap();
    report_scale(&mut s, r);
    scrape::report(&mut s, r);
    crate::fleet::report(&mut s, r);
    s
}

/// Section 4 of the report.
fn report_scale(s: &mut String, r: &Value) {
    writeln!(s, "## 4. Scale\n").unwrap();
    writeln!(s, "knockgate: the attempt tables (`PROGRESS` + `FIRST_KNOCKS`, each sized to the row) filled with N tracked sources; per-packet cost of a knock step from a tracked source and of a SYN to a non-knock port (medians of {} runs on one CPU, each also timing the empty program: the ratios compare across rows, the ns less so, as this VM's speed drifts), and the tables' kernel memory (`memlock`).\n", r["scale"]["runs"]).unwrap();
    writeln!(s, "| tracked sources | knock step ns | knock step ratio | non-knock SYN ns | non-knock SYN ratio | attempt tables memory |\n|---:|---:|---:|---:|---:|---:|").unwrap();
    for row in r["scale"]["rows"].as_array().cloned().unwrap_or_default() {
        writeln!(
            s,
            "| {} | {:.1} | {:.2}x | {:.1} | {:.2}x | {:.1} MiB |",
            row["sources"],
            f(&row["knock_step_ns"]),
            f(&row["knock_step_ratio"]),
            f(&row["non_knock_syn_ns"]),
            f(&row["non_knock_syn_ratio"]),
            f(&row["attempt_tables_bytes"]) / 1_048_576.0
        )
        .unwrap();
    }
    writeln!(s, "\nknockd 0.8: CPU per packet (a spoofed first knock) with N attempts pending; its per-packet cleanup walks every attempt.\n").unwrap();
    writeln!(s, "| pending attempts | packets measured | knockd CPU µs per packet |\n|---:|---:|---:|").unwrap();
    for row in r["knockd_scale"]["rows"].as_array().cloned().unwrap_or_default() {
        writeln!(s, "| {} | {} | {:.1} |", row["pending_attempts"], row["probe_packets"], f(&row["cpu_us_per_packet"]))
            .unwrap();
    }
    writeln!(s, "\n![scale](bench/scale.png)").unwrap();
}

/// What happens to each defender when its table fills, with the nftables run's own figures.
fn report_tables_fill(s: &mut String, r: &Value) {
    let floods = r["flood"].as_array().cloned().unwrap_or_default();
    let nft = floods.iter().find(|x| x["tables"].is_object()).map(|x| x["tables"].clone()).unwrap_or_default();
    writeln!(s, "\n**When the table fills.**\n").unwrap();
    writeln!(
        s,
        "- nftables: the wiki's sets have no `size`, so nft gives them 65,535 elements. During the flood the set of \
         sources between steps held {} elements: every slot taken by a spoofed first knock for its 5 s. A full set \
         refuses `add`, so a legitimate first knock is recorded only if it arrives just after an element expired and \
         before a spoofed knock takes the slot, a matter of luck at these rates; nothing evicts, and nothing tells the operator (no log, no counter in the ruleset). With \
         `ct state` in the ruleset the namespace tracks connections too: {} entries, one per spoofed source (the \
         table's limit is `nf_conntrack_max`, {} on this machine; beyond it the kernel evicts unconfirmed entries \
         or drops new packets). A bigger `size` only moves the limit: the flood's rate times the step timeout is what it \
         must hold.",
        nft["candidates"], nft["conntrack"], nft["conntrack_max"]
    )
    .unwrap();
    writeln!(
        s,
        "- knockgate: a spoofed first knock lands in `FIRST_KNOCKS`, 8-way sets keyed by a hash with a secret key; a full \
         set gives up its oldest attempt, so a legitimate first knock is always stored, and its second knock moves it to \
         `PROGRESS`, which a first knock never reaches: the flood cannot evict an attempt past its first knock. Evictions \
         are counted (`knockgate_attempt_evictions_total{{table=\"first_knocks\"}}`).\n\
         - knockd 0.8: every spoofed source is a new attempt in one unbounded list, which each packet walks to expire old \
         ones (section 4), so the daemon falls behind the capture and legitimate knocks are lost in its buffer.\n"
    )
    .unwrap();
}
