//! Section 5: a fleet. Two nodes and a three-server NATS cluster on this machine
//! (`tests::fleet`): from the last knock frame reaching node A to node B's `ALLOW` map
//! holding the client's allowance, and to B answering the client's SYN to the gated port.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tests::{
    fleet::{A, B, CLIENT, FleetNet, NatsCluster, Node},
    frame::{FrameBuilder, SYN},
    inject::{Injector, mac_of},
    netns::in_netns,
    service::Echo,
};

use crate::{Opts, percentile};

const TRIALS: u32 = 500;

const DOORS: &str = "[ssh]\n\tsequence = 7000,8000,9000\n\tseq_timeout = 5\n\ttcpflags = syn\n\tgate = 2222/tcp\n\tgate_timeout = 3600\n\
                     [close]\n\tsequence = 9000,8000,7000\n\tseq_timeout = 5\n\ttcpflags = syn\n\tgate_close = 2222/tcp\n";

/// Polls `f` every 50 µs for up to `limit`.
fn poll(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    false
}

fn ms(v: &mut [f64], p: f64) -> f64 {
    percentile(v, p) * 1000.0
}

pub(crate) fn fleet(opts: &Opts) -> Value {
    let trials = if opts.smoke { 3 } else { TRIALS };
    let net = FleetNet::new();
    let _nats = NatsCluster::start(&net.bus);
    let node = |a: bool| {
        let (ns, iface, name) = if a { (&net.a, &net.a_if, "a") } else { (&net.b, &net.b_if, "b") };
        let n = Node::start(ns, iface, name, &net.servers(a), "", DOORS);
        assert!(
            n.logged_within(Duration::from_mins(1), &format!("fleet: bucket knockgate ready; node {name}")),
            "{}",
            n.log()
        );
        n
    };
    let (node_a, node_b) = (node(true), node(false));
    let _echo = Echo::start(&net.b, 2222);
    let client_if = net.a_if.replace("kfa", "kfca");
    let inject = Injector::new(&net.client, &client_if, mac_of(&net.a, &net.a_if));
    let syn = |port: u16| inject.send(&FrameBuilder::tcp(CLIENT, A, port, SYN).build());
    let src: IpAddr = CLIENT.parse().unwrap();
    // B's pinned allowance table, opened once.
    let allow = aya::maps::MapData::from_pin(node_b.state.maps(&net.b_if).join(knock_common::maps::ALLOW)).unwrap();
    let allow =
        aya::maps::HashMap::<_, knock_common::AllowKey, u64>::try_from(aya::maps::Map::LruHashMap(allow)).unwrap();
    let key = {
        let a = knockd_user::kernel::spec::addr_key(src);
        knock_common::AllowKey { addr: a.addr, family: a.family, proto: knock_common::PROTO_TCP, port: 2222 }
    };
    let allowed = || allow.get(&key, 0).is_ok();
    let addr: SocketAddr = format!("{B}:2222").parse().unwrap();
    let (mut to_map, mut to_synack) = (Vec::new(), Vec::new());
    let mut failed = 0;
    for _ in 0..trials {
        syn(7000);
        syn(8000);
        std::thread::sleep(Duration::from_millis(2));
        let sock =
            in_netns(&net.client, || socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap());
        let t0 = Instant::now();
        syn(9000);
        if !poll(Duration::from_secs(5), allowed) {
            failed += 1;
            continue;
        }
        to_map.push(t0.elapsed().as_secs_f64());
        if sock.connect_timeout(&addr.into(), Duration::from_secs(2)).is_ok() {
            to_synack.push(t0.elapsed().as_secs_f64());
        } else {
            failed += 1;
        }
        drop(sock);
        // The close door withdraws the allowance on A, and through its grant on B.
        for port in [9000, 8000, 7000] {
            syn(port);
        }
        assert!(poll(Duration::from_secs(5), || !allowed()), "{}", node_b.log());
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(node_a);
    json!({
        "trials": trials,
        "failed": failed,
        "to_map_p50_ms": ms(&mut to_map, 0.5),
        "to_map_p99_ms": ms(&mut to_map, 0.99),
        "to_synack_p50_ms": ms(&mut to_synack, 0.5),
        "to_synack_p99_ms": ms(&mut to_synack, 0.99),
    })
}

/// The report's section on the fleet.
pub(crate) fn report(s: &mut String, r: &Value) {
    use std::fmt::Write as _;
    let g = &r["fleet"];
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    writeln!(
        s,
        "\n## Fleet\n\n\
         Two knockgate nodes, each in a namespace of its own, and a cluster of three nats-server (JetStream, the bucket \
         with three replicas) in a third, all on this machine (`tests::fleet`). Each of {} trials sends the three knock \
         frames of a gate door to node A and times, from the last one, node B's pinned `ALLOW` map holding the client's \
         allowance (polled every 50 µs from the benchmark) and then a TCP connection to B's gated port established (B's \
         SYN-ACK). A closing door knocked on A withdraws the allowance on both between trials. The path: A's kernel opens \
         and reports the open, A's daemon signs and publishes the grant, JetStream stores it on a majority of its three \
         servers, B's watch receives it, B's daemon checks and writes it. Target: p99 under 50 ms to B's map.\n\n\
         | from the last knock on A to | p50 | p99 |\n|---|---:|---:|\n\
         | B's map holding the allowance | {:.2} ms | {:.2} ms |\n\
         | B's SYN-ACK | {:.2} ms | {:.2} ms |\n\n{} of {} trials failed.",
        g["trials"],
        f(&g["to_map_p50_ms"]),
        f(&g["to_map_p99_ms"]),
        f(&g["to_synack_p50_ms"]),
        f(&g["to_synack_p99_ms"]),
        g["failed"],
        g["trials"]
    )
    .unwrap();
}

/// The summary's line.
pub(crate) fn summary(r: &Value) -> String {
    let g = &r["fleet"];
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    format!(
        "fleet: last knock on A to B's map p50 {:.2} ms, p99 {:.2} ms; to B's SYN-ACK p50 {:.2} ms, p99 {:.2} ms; {} failed",
        f(&g["to_map_p50_ms"]),
        f(&g["to_map_p99_ms"]),
        f(&g["to_synack_p50_ms"]),
        f(&g["to_synack_p99_ms"]),
        g["failed"]
    )
}
