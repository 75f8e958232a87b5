//! The port tables the XDP program reads: `PORTS` (per (protocol, port) slot, the doors
//! knocking and gating there) and `PORT_BITS` (a bit per slot in use), written slot by slot.

use std::collections::BTreeMap;

use aya::{Ebpf, maps::Array};
use knock_common::{PORT_BIT_WORDS, PortBits, PortDoors, SECRET_WORD, maps, set_port_bit};

use crate::kernel::error::{KernelError, map_err, map_of};

/// Makes `PORTS` hold `want` (all other slots zero), writing only the slots that change.
pub(crate) fn sync_ports(
    ebpf: &mut Ebpf,
    have: &mut BTreeMap<u32, PortDoors>,
    want: BTreeMap<u32, PortDoors>,
) -> Result<(), KernelError> {
    let name = maps::PORTS;
    let mut map: Array<_, PortDoors> = Array::try_from(map_of(ebpf, name)?).map_err(map_err(name))?;
    for (&slot, doors) in &want {
        if have.get(&slot) != Some(doors) {
            map.set(slot, doors, 0).map_err(map_err(name))?;
        }
    }
    for slot in have.keys().filter(|s| !want.contains_key(s)) {
        map.set(*slot, PortDoors::default(), 0).map_err(map_err(name))?;
    }
    *have = want;
    Ok(())
}

/// Makes `PORT_BITS` hold a bit for each slot of the given tables that is not all zero, and
/// the mask of secret doors.
pub(crate) fn write_port_bits<'a>(
    ebpf: &mut Ebpf,
    tables: impl IntoIterator<Item = &'a BTreeMap<u32, PortDoors>>,
    secret_mask: u32,
) -> Result<(), KernelError> {
    let name = maps::PORT_BITS;
    // Made on the heap: 16 KiB is much for a stack.
    let mut bits: Box<PortBits> =
        vec![0; PORT_BIT_WORDS + 1].into_boxed_slice().try_into().map_err(|_| KernelError::MissingMap(name))?;
    bits[SECRET_WORD] = u64::from(secret_mask);
    for table in tables {
        for (&slot, doors) in table {
            if *doors != PortDoors::default() {
                set_port_bit(&mut bits, slot);
            }
        }
    }
    let mut map: Array<_, PortBits> = Array::try_from(map_of(ebpf, name)?).map_err(map_err(name))?;
    map.set(0, bits.as_ref(), 0).map_err(map_err(name))
}

/// `PORTS` content from per-slot masks of knocking doors and of gating doors.
pub(crate) fn port_doors(knock: &BTreeMap<u32, u32>, gate: &BTreeMap<u32, u32>) -> BTreeMap<u32, PortDoors> {
    let mut table: BTreeMap<u32, PortDoors> =
        knock.iter().map(|(&slot, &knock)| (slot, PortDoors { knock, gate: 0 })).collect();
    for (&slot, &gate) in gate {
        table.entry(slot).or_default().gate = gate;
    }
    table
}
