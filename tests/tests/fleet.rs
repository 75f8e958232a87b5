//! A fleet of two knockgate nodes sharing grants through a real three-server NATS cluster
//! (JetStream, nats-server 2.11+): a knock on A opens B (a gate door and a command door with
//! its iptables rule); a secret knock of A replayed to B is refused; a node started after a
//! grant, or restarted in the middle of one, applies it until it expires, and runs its
//! command once; grants replicate with one NATS server of three down; with all down, each
//! node opens for its own knocks only, and once NATS is back the fleet converges; grants
//! forged without the fleet key are refused and counted.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests panic on failure")]

use std::time::{Duration, Instant};

use tests::{
    daemon::{bin, pace, wait_for},
    fleet::{A, B, CLIENT, FleetNet, NatsCluster, Node},
    netns::sh,
    service::{Echo, http_get, opens, shut_out},
};

/// How long a grant may take to reach the other node in these tests: the 50 ms target is
/// the bench's; here, the cluster forming and the nodes reconnecting come first.
fn wide() -> Duration {
    Duration::from_secs(20 * pace())
}

/// Seconds an open lasts: long enough for NATS to be restarted and the cluster to form
/// again before the grant expires.
fn gate_timeout() -> u64 {
    20 * pace()
}

/// A shorter one, for the test that waits for a grant to expire.
fn short_timeout() -> u64 {
    8 * pace()
}

/// A gate door, a command door with an iptables rule (2223), and a secret door (2224); opens
/// last `gt` seconds.
fn doors(gt: u64) -> String {
    format!(
        "[ssh]\n\tsequence = 7000,8000,9000\n\tseq_timeout = 5\n\ttcpflags = syn\n\tgate = 2222/tcp\n\tgate_timeout = {gt}\n\
         [fw]\n\tsequence = 7100,8100,9100\n\tseq_timeout = 5\n\ttcpflags = syn\n\
         \tstart_command = iptables -A INPUT -s %IP% -p tcp --dport 2223 -j ACCEPT\n\
         \tcmd_timeout = {gt}\n\tstop_command = iptables -D INPUT -s %IP% -p tcp --dport 2223 -j ACCEPT\n\
         [hidden]\n\tsecret_file = {{DIR}}/door.key\n\twindow = 60\n\tseq_timeout = 5\n\ttcpflags = syn\n\tgate = 2224/tcp\n",
    )
}

/// The secret door's key, the same on both nodes and the client.
const DOOR_KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

struct Fleet {
    gate_timeout: u64,
    a: Option<Node>,
    b: Option<Node>,
    nats: NatsCluster,
    net: FleetNet,
}

impl Fleet {
    /// The cluster, and the nodes asked for (A, then B), each with its bucket ready.
    fn start(start_a: bool, start_b: bool) -> Self {
        Self::start_lasting(gate_timeout(), start_a, start_b)
    }

    fn start_lasting(gate_timeout: u64, start_a: bool, start_b: bool) -> Self {
        let net = FleetNet::new();
        let nats = NatsCluster::start(&net.bus);
        let mut f = Self { gate_timeout, a: None, b: None, nats, net };
        if start_a {
            f.start_a();
        }
        if start_b {
            f.start_b();
        }
        f
    }

    fn node(&self, a: bool) -> Node {
        let (ns, iface, name) = if a { (&self.net.a, &self.net.a_if, "a") } else { (&self.net.b, &self.net.b_if, "b") };
        let metrics = if a { "127.0.0.1:9781" } else { "127.0.0.1:9782" };
        let node = Node::start_with(
            ns,
            iface,
            name,
            &self.net.servers(a),
            &format!("\tMetricsAddress = {metrics}\n"),
            &doors(self.gate_timeout),
            &[("door.key", DOOR_KEY)],
        );
        assert!(
            node.logged_within(wide(), &format!("fleet: bucket knockgate ready; node {name}")),
            "node {name} never reached the fleet's bucket; log:\n{}\n{}",
            node.log(),
            self.nats.logs()
        );
        node
    }

    fn start_a(&mut self) {
        self.a = Some(self.node(true));
    }

    fn start_b(&mut self) {
        self.b = Some(self.node(false));
    }

    fn a(&self) -> &Node {
        self.a.as_ref().unwrap()
    }

    fn b(&self) -> &Node {
        self.b.as_ref().unwrap()
    }

    /// `knock ARGS` from the client.
    fn knock(&self, args: &str) {
        sh(&format!("ip netns exec {} {} {args}", self.net.client, bin("knock").display()));
    }

    fn opens(&self, host: &str, port: u16) -> bool {
        opens(&self.net.client, CLIENT, &format!("{host}:{port}"))
    }

    fn shut_out(&self, host: &str, port: u16) -> bool {
        shut_out(&self.net.client, CLIENT, &format!("{host}:{port}"))
    }

    /// This window's ports of the secret door for the client, as `knock --print` gives them.
    fn secret_ports(&self, host: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let key = tests::fleet::key_file(dir.path(), DOOR_KEY);
        let print = format!(
            "ip netns exec {} {} --secret-file {} --window 60 --source {CLIENT} --print {host}",
            self.net.client,
            bin("knock").display(),
            key.display()
        );
        String::from_utf8(sh(&print).stdout).unwrap().trim().to_owned()
    }

    /// The iptables rules for the client on node `ns`'s port 2223.
    fn rules(ns: &str) -> usize {
        let out = sh(&format!("ip netns exec {ns} iptables -S INPUT")).stdout;
        String::from_utf8_lossy(&out)
            .lines()
            .filter(|l| l.contains(&format!("-s {CLIENT}/32")) && l.contains("2223"))
            .count()
    }

    /// A metric's value on node A (`a`) or B (whole: these count), 0 if absent.
    fn metric(&self, a: bool, series: &str) -> u64 {
        let (ns, addr) = if a { (&self.net.a, "127.0.0.1:9781") } else { (&self.net.b, "127.0.0.1:9782") };
        let body = http_get(ns, addr, "/metrics").unwrap_or_default();
        body.lines()
            .find_map(|l| {
                let v = l.strip_prefix(series)?.strip_prefix(' ')?.trim();
                v.split('.').next()?.parse().ok()
            })
            .unwrap_or(0)
    }
}

#[test]
fn a_knock_on_a_opens_b_for_a_gate_and_a_command_even_with_a_nats_server_down() {
    let mut f = Fleet::start(true, true);
    let _echo = Echo::start(&f.net.b, 2222);
    assert!(f.shut_out(B, 2222), "B is gated before any knock");
    let t = Instant::now();
    f.knock(&format!("{A} 7000 8000 9000"));
    assert!(wait_for(wide(), || f.opens(B, 2222)), "B never admitted A's knocker; B:\n{}", f.b().log());
    eprintln!("knock on A to B admitting: {:?}", t.elapsed());
    assert!(f.b().count(&format!("{CLIENT}: ssh: OPEN SESAME (granted by node a)")) == 1, "{}", f.b().log());
    assert_eq!(f.metric(false, "knockgate_fleet_grants_applied_total"), 1);
    assert_eq!(f.metric(true, "knockgate_fleet_grants_published_total"), 1);
    assert_eq!(f.metric(true, "knockgate_fleet_connected"), 1);

    // One NATS server of three down: grants still replicate (the bucket has three replicas).
    f.nats.kill(0);
    f.knock(&format!("{A} 7100 8100 9100"));
    assert!(
        wait_for(wide(), || Fleet::rules(&f.net.b) == 1),
        "B's iptables rule never appeared; B:\n{}\n{}",
        f.b().log(),
        f.nats.logs()
    );
    assert_eq!(Fleet::rules(&f.net.a), 1, "A ran its own command");
}

#[test]
fn a_secret_knock_of_a_replayed_to_b_is_refused_and_counted() {
    let f = Fleet::start(true, true);
    let _echo = Echo::start(&f.net.a, 2224);
    let ports = f.secret_ports(A);
    f.knock(&format!("{A} {ports}"));
    assert!(wait_for(wide(), || f.opens(A, 2224)), "A opened for the secret knock; A:\n{}", f.a().log());
    assert_eq!(f.metric(true, "knockgate_fleet_claims_total{result=\"claimed\"}"), 1);
    // The same knock, recorded on its way to A, replayed to B within its window.
    f.knock(&format!("{B} {ports}"));
    assert!(
        f.b().logged_within(
            wide(),
            &format!("{CLIENT}: hidden: replayed knock refused: a node of the fleet has opened with this knock")
        ),
        "B:\n{}",
        f.b().log()
    );
    assert_eq!(f.metric(false, "knockgate_fleet_claims_total{result=\"replay\"}"), 1);
    assert_eq!(f.b().count(&format!("{CLIENT}: hidden: OPEN SESAME")), 0, "B did not open for it");
}

#[test]
fn a_node_started_or_restarted_during_a_grant_applies_it_until_it_expires_and_runs_its_command_once() {
    let mut f = Fleet::start_lasting(short_timeout(), true, false);
    f.knock(&format!("{A} 7000 8000 9000"));
    f.knock(&format!("{A} 7100 8100 9100"));
    assert!(wait_for(wide(), || f.metric(true, "knockgate_fleet_grants_published_total") == 2), "{}", f.a().log());
    let granted = Instant::now();
    // B starts after the grants were made: it applies what is still live.
    f.start_b();
    let _echo = Echo::start(&f.net.b, 2222);
    assert!(wait_for(wide(), || f.opens(B, 2222)), "B applied the live grant at start-up; B:\n{}", f.b().log());
    assert!(wait_for(wide(), || Fleet::rules(&f.net.b) == 1), "B ran the command door's start; B:\n{}", f.b().log());
    // B is killed and started again in the middle of the grants: it still admits, and the
    // command, whose stop is journaled, does not run a second time.
    f.b.as_mut().unwrap().daemon.kill();
    f.b.as_mut().unwrap().restart();
    assert!(f.b().logged_within(wide(), "fleet: bucket knockgate ready; node b"));
    assert!(f.opens(B, 2222), "B admits after its restart; B:\n{}", f.b().log());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(Fleet::rules(&f.net.b), 1, "one rule, not two; B:\n{}", f.b().log());
    // Until the grant expires, and not after: the allowance and the rule both go.
    let end = Duration::from_secs(short_timeout()) + Duration::from_secs(3 * pace());
    assert!(wait_for(end.saturating_sub(granted.elapsed()) + wide(), || Fleet::rules(&f.net.b) == 0), "B's stop ran");
    assert!(f.shut_out(B, 2222), "B's allowance expired with the grant");
}

#[test]
fn with_all_nats_servers_down_each_node_opens_for_its_own_knocks_and_the_fleet_converges_after() {
    let mut f = Fleet::start(true, true);
    let _echo_a = Echo::start(&f.net.a, 2222);
    let _echo_b = Echo::start(&f.net.b, 2222);
    for i in 0..3 {
        f.nats.kill(i);
    }
    assert!(wait_for(wide(), || f.metric(true, "knockgate_fleet_connected") == 0));
    f.knock(&format!("{A} 7000 8000 9000"));
    assert!(wait_for(wide(), || f.opens(A, 2222)), "A opens for its own knock; A:\n{}", f.a().log());
    assert!(f.shut_out(B, 2222), "B refuses A's client: no grant reached it");
    // A secret door's single use cannot be claimed: `FleetSingleUse = strict` refuses it.
    let ports = f.secret_ports(A);
    f.knock(&format!("{A} {ports}"));
    assert!(
        f.a().logged_within(wide(), &format!("{CLIENT}: hidden: open refused: the fleet cannot be reached to claim the knock's single use (FleetSingleUse = strict)")),
        "A:\n{}",
        f.a().log()
    );
    assert_eq!(f.metric(true, "knockgate_fleet_claims_total{result=\"unreachable\"}"), 1);
    assert!(wait_for(wide(), || f.metric(true, "knockgate_fleet_grants_unsent") == 1), "A keeps the grant to send");
    for i in 0..3 {
        f.nats.start_server(i);
    }
    assert!(
        wait_for(wide() * 3, || f.opens(B, 2222)),
        "after NATS came back, B applied A's grant; A:\n{}\nB:\n{}\n{}",
        f.a().log(),
        f.b().log(),
        f.nats.logs()
    );
    assert_eq!(f.metric(true, "knockgate_fleet_grants_unsent"), 0);
}

#[test]
fn grants_forged_without_the_fleet_key_are_refused_and_counted() {
    let f = Fleet::start(false, true);
    let _echo = Echo::start(&f.net.b, 2222);
    let forged = knock_common::fleet::Grant {
        action: knock_common::fleet::Action::Open,
        door: "ssh".into(),
        addr: CLIENT.parse().unwrap(),
        issued_ms: now_ms(),
        expires_ms: now_ms() + 60_000,
        node: "a".into(),
        nonce: [9; 16],
    };
    let wrong = knock_common::secret::derive::Secret::from_bytes(&[0x55; 32]);
    let signed_wrong = forged.sign(&wrong);
    let text = String::from_utf8(signed_wrong.clone()).unwrap();
    let unsigned = text.split("mac=").next().unwrap().to_owned();
    // Straight to NATS, as anyone on the bus could.
    let put = |key: &str, value: &[u8]| put_to_bucket(&f.net.bus, key, value);
    put("grant.0000000000000000000000000000000a", &signed_wrong);
    put("grant.0000000000000000000000000000000b", unsigned.as_bytes());
    assert!(
        wait_for(wide(), || f.metric(false, "knockgate_fleet_grants_refused_total{reason=\"signature\"}") == 1
            && f.metric(false, "knockgate_fleet_grants_refused_total{reason=\"malformed\"}") == 1),
        "B:\n{}",
        f.b().log()
    );
    assert!(f.shut_out(B, 2222), "a forged grant opens nothing");
    assert_eq!(f.metric(false, "knockgate_fleet_grants_applied_total"), 0);
}

#[test]
fn over_tls_with_a_nats_user_per_node_a_grant_still_reaches_the_other_node() {
    let net = FleetNet::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    // A private CA and the server's certificate, for both addresses it is reached at.
    std::fs::write(dir.path().join("san.ext"), "subjectAltName=IP:198.18.4.254,IP:198.18.5.254\n").unwrap();
    sh(&format!(
        "cd {d} && \
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=knockgate-test-ca \
           -keyout ca-key.pem -out ca.pem 2>/dev/null && \
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=nats -keyout server-key.pem \
           -out server.csr 2>/dev/null && \
         openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 -extfile san.ext \
           -out server.pem 2>/dev/null"
    ));
    // A NATS user per node: an NKey each; the seeds go to the nodes, the public keys to NATS.
    let users: Vec<nkeys::KeyPair> = (0..2).map(|_| nkeys::KeyPair::new_user()).collect();
    let seeds: Vec<String> = users.iter().map(|u| u.seed().unwrap()).collect();
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 0.0.0.0:4222\njetstream {{ store_dir: {d}/js }}\n\
             tls {{ cert_file: {d}/server.pem, key_file: {d}/server-key.pem }}\n\
             authorization {{ users: [ {{ nkey: {} }}, {{ nkey: {} }} ] }}\n",
            users[0].public_key(),
            users[1].public_key()
        ),
    )
    .unwrap();
    let nats = NatsCluster::single(&net.bus, &conf);
    // The server takes no one without TLS and one of the two users.
    let refused = tests::netns::in_netns(&net.bus, || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let options = async_nats::ConnectOptions::new().retry_on_initial_connect().max_reconnects(3);
            let plain = options.connect("nats://127.0.0.1:4222").await.unwrap();
            let tried = tokio::time::timeout(Duration::from_secs(3), plain.flush()).await;
            !matches!(tried, Ok(Ok(())))
        })
    });
    assert!(refused, "a client without TLS or a user was let on the bus");
    let node = |a: bool, seed: &str| {
        let (ns, iface, name, host) =
            if a { (&net.a, &net.a_if, "a", "198.18.4.254") } else { (&net.b, &net.b_if, "b", "198.18.5.254") };
        let options = format!("\tFleetCaFile = {d}/ca.pem\n\tFleetNKey = {{DIR}}/node.nk\n");
        let n = Node::start_with(
            ns,
            iface,
            name,
            &format!("tls://{host}:4222"),
            &options,
            &doors(gate_timeout()),
            &[("node.nk", seed), ("door.key", DOOR_KEY)],
        );
        assert!(
            n.logged_within(wide(), &format!("fleet: bucket knockgate ready; node {name}")),
            "node {name} never reached the fleet's bucket over TLS; log:\n{}\n{}",
            n.log(),
            nats.logs()
        );
        n
    };
    let (_a, b) = (node(true, &seeds[0]), node(false, &seeds[1]));
    let _echo = Echo::start(&net.b, 2222);
    sh(&format!("ip netns exec {} {} {A} 7000 8000 9000", net.client, bin("knock").display()));
    assert!(
        wait_for(wide(), || opens(&net.client, CLIENT, &format!("{B}:2222"))),
        "B never admitted A's knocker; B:\n{}",
        b.log()
    );
}

/// Puts `value` under `key` in the fleet's bucket, from namespace `bus`, with async-nats.
fn put_to_bucket(bus: &str, key: &str, value: &[u8]) {
    let (key, value) = (key.to_owned(), value.to_vec());
    tests::netns::in_netns(bus, move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let client = async_nats::connect("nats://127.0.0.1:4222").await.unwrap();
            let js = async_nats::jetstream::new(client);
            let kv = js.get_key_value(knockd_user::fleet::BUCKET).await.unwrap();
            kv.put(key, value.into()).await.unwrap();
        });
    });
}

fn now_ms() -> u64 {
    u64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap()
}
