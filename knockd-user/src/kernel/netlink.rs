//! What the kernel has attached at an interface's XDP hook, asked over rtnetlink
//! (`RTM_GETLINK`, `IFLA_XDP`): the one question aya cannot answer, since a program
//! attached by netlink (`ip link set dev X xdp obj ...`) has no `bpf_link` to list; and the
//! `cls_bpf` filters at its `clsact` ingress (`RTM_GETTFILTER`), which have none either.

use std::io;

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached},
    tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// The interface index of `name`, if such an interface exists.
#[must_use]
pub fn ifindex(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok().filter(|&i| i != 0)
}

/// What an interface's XDP hook holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XdpState {
    /// The ids of the programs attached, in any mode.
    pub programs: Vec<u32>,
    /// `driver`, `skb` (generic), `hw`, `multi`, or `none`.
    pub mode: &'static str,
}

/// The ids of the XDP programs attached to interface `ifindex` (in any mode), or `None`
/// if the interface does not exist (any more).
pub fn xdp_programs(ifindex: u32) -> io::Result<Option<Vec<u32>>> {
    Ok(xdp_state(ifindex)?.map(|s| s.programs))
}

/// What interface `ifindex`'s XDP hook holds, or `None` if the interface does not exist.
pub fn xdp_state(ifindex: u32) -> io::Result<Option<XdpState>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut message = LinkMessage::default();
    message.header.index = ifindex;
    let mut packet =
        NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(RouteNetlinkMessage::GetLink(message)));
    packet.header.flags = NLM_F_REQUEST;
    packet.header.sequence_number = 1;
    packet.finalize();
    let mut request = vec![0; packet.buffer_len()];
    packet.serialize(&mut request);
    socket.send(&request, 0)?;
    let mut reply = vec![0; 64 * 1024];
    let size = socket.recv(&mut &mut reply[..], 0)?;
    let reply = reply.get(..size).unwrap_or_default();
    let parsed: NetlinkMessage<RouteNetlinkMessage> = NetlinkMessage::deserialize(reply)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("rtnetlink reply: {e}")))?;
    match parsed.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => Ok(Some(attached(&link))),
        NetlinkPayload::Error(e) if e.code.map(std::num::NonZero::get) == Some(-libc::ENODEV) => Ok(None),
        NetlinkPayload::Error(e) => Err(e.to_io()),
        other => Err(io::Error::new(io::ErrorKind::InvalidData, format!("unexpected rtnetlink reply: {other:?}"))),
    }
}

/// A link message's `IFLA_XDP`: program ids (the single-mode id and the per-mode ones) and
/// the attach mode.
fn attached(link: &LinkMessage) -> XdpState {
    let xdp =
        || link.attributes.iter().filter_map(|a| if let LinkAttribute::Xdp(x) = a { Some(x) } else { None }).flatten();
    let mode = xdp()
        .find_map(|x| match x {
            LinkXdp::Attached(XdpAttached::Driver) => Some("driver"),
            LinkXdp::Attached(XdpAttached::SocketBuffer) => Some("skb"),
            LinkXdp::Attached(XdpAttached::Hardware) => Some("hw"),
            LinkXdp::Attached(XdpAttached::Multiple) => Some("multi"),
            _ => None,
        })
        .unwrap_or("none");
    let mut ids: Vec<u32> = xdp()
        .filter_map(|x| match x {
            LinkXdp::ProgId(id) | LinkXdp::DrvProgId(id) | LinkXdp::SkbProgId(id) | LinkXdp::HwProgId(id) => Some(*id),
            _ => None,
        })
        .filter(|&id| id != 0)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    XdpState { programs: ids, mode }
}

/// A BPF filter at an interface's `clsact` ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcFilter {
    pub priority: u16,
    pub handle: u32,
    /// The id of its program.
    pub program: u32,
}

/// The BPF filters at interface `ifindex`'s `clsact` ingress (none without the qdisc), or
/// `None` if the interface does not exist.
pub fn tc_filters(ifindex: u32) -> io::Result<Option<Vec<TcFilter>>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut message = TcMessage::default();
    message.header.index = i32::try_from(ifindex).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    message.header.parent = TcHandle { major: 0xffff, minor: TcHandle::MIN_INGRESS };
    let mut packet = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(RouteNetlinkMessage::GetTrafficFilter(message)),
    );
    packet.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    packet.header.sequence_number = 1;
    packet.finalize();
    let mut request = vec![0; packet.buffer_len()];
    packet.serialize(&mut request);
    socket.send(&request, 0)?;
    let mut filters = Vec::new();
    let mut reply = vec![0; 64 * 1024];
    loop {
        let size = socket.recv(&mut &mut reply[..], 0)?;
        let mut at = reply.get(..size).unwrap_or_default();
        while !at.is_empty() {
            let parsed: NetlinkMessage<RouteNetlinkMessage> = NetlinkMessage::deserialize(at)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("rtnetlink reply: {e}")))?;
            let len = (parsed.header.length as usize).max(16);
            at = at.get(len..).unwrap_or_default();
            match parsed.payload {
                NetlinkPayload::Done(_) => return Ok(Some(filters)),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewTrafficFilter(m)) => {
                    let program = m.attributes.iter().find_map(|a| match a {
                        TcAttribute::Options(o) => o.iter().find_map(|o| match o {
                            TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => Some(*id),
                            _ => None,
                        }),
                        _ => None,
                    });
                    if let Some(program) = program {
                        let handle = (u32::from(m.header.handle.major) << 16) | u32::from(m.header.handle.minor);
                        let priority = u16::try_from(m.header.info >> 16).unwrap_or(0);
                        filters.push(TcFilter { priority, handle, program });
                    }
                }
                NetlinkPayload::Error(e) if e.code.map(std::num::NonZero::get) == Some(-libc::ENODEV) => {
                    return Ok(None);
                }
                // No clsact qdisc: no filters.
                NetlinkPayload::Error(e) if e.code.map(std::num::NonZero::get) == Some(-libc::EINVAL) => {
                    return Ok(Some(filters));
                }
                NetlinkPayload::Error(e) => return Err(e.to_io()),
                _ => {}
            }
        }
    }
}

/// The name of loaded program `id`, if it has one.
#[must_use]
pub fn program_name(id: u32) -> Option<String> {
    aya::programs::loaded_programs().flatten().find(|p| p.id() == id).and_then(|p| p.name_as_str().map(str::to_owned))
}

/// The id and name of a loaded program, for messages: `id 42 (name "xdp_pass")`.
#[must_use]
pub fn describe_program(id: u32) -> String {
    match program_name(id) {
        Some(name) => format!("id {id} (name \"{name}\")"),
        None => format!("id {id}"),
    }
}
