//! What the daemon writes to the gate itself, rather than the XDP program: a fleet's grants
//! (an allowance until a deadline, or its withdrawal), and the open of a door whose gate
//! waits for the fleet; and which window a secret door's open spent, for its fleet claim.

use std::net::IpAddr;

use aya::maps::{HashMap, MapError};
use knock_common::{AllowKey, UsedKey, maps};

use crate::{
    config::Knock,
    kernel::{error::KernelError, error::map_err, program::KnockProgram, spec::addr_key},
};

fn allow_key(src: IpAddr, port: Knock) -> AllowKey {
    let a = addr_key(src);
    AllowKey { addr: a.addr, family: a.family, proto: port.proto.number(), port: port.port }
}

impl KnockProgram {
    /// Lets `src` open connections to `ports` until `until_ns` (`CLOCK_MONOTONIC`), or until
    /// the later end of an allowance it has already.
    pub fn allow(&mut self, src: IpAddr, ports: &[Knock], until_ns: u64) -> Result<(), KernelError> {
        let mut map: HashMap<_, AllowKey, u64> =
            HashMap::try_from(self.map_mut(maps::ALLOW)?).map_err(map_err(maps::ALLOW))?;
        for &port in ports {
            let key = allow_key(src, port);
            let until = match map.get(&key, 0) {
                Ok(now) => now.max(until_ns),
                Err(MapError::KeyNotFound) => until_ns,
                Err(e) => return Err(map_err(maps::ALLOW)(e)),
            };
            map.insert(key, until, 0).map_err(map_err(maps::ALLOW))?;
        }
        Ok(())
    }

    /// Withdraws `src`'s allowances for `ports`.
    pub fn withdraw(&mut self, src: IpAddr, ports: &[Knock]) -> Result<(), KernelError> {
        let mut map: HashMap<_, AllowKey, u64> =
            HashMap::try_from(self.map_mut(maps::ALLOW)?).map_err(map_err(maps::ALLOW))?;
        for &port in ports {
            match map.remove(&allow_key(src, port)) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(maps::ALLOW)(e)),
            }
        }
        Ok(())
    }

    /// The window whose sequence `src` last opened secret door `door` (slot, `epoch`) with,
    /// among `windows`: the kernel spends a knock's single use in `USED` before it reports
    /// the open, with the time it did.
    pub fn spent_window(
        &self,
        src: IpAddr,
        door: u8,
        epoch: u32,
        windows: impl IntoIterator<Item = u64>,
    ) -> Result<Option<u64>, KernelError> {
        let map: HashMap<_, UsedKey, u64> = HashMap::try_from(self.map(maps::USED)?).map_err(map_err(maps::USED))?;
        let a = addr_key(src);
        let mut last: Option<(u64, u64)> = None;
        for window in windows {
            let key = UsedKey { addr: a.addr, family: a.family, door, _pad: 0, epoch, window };
            match map.get(&key, 0) {
                Ok(at) if last.is_none_or(|(t, _)| at > t) => last = Some((at, window)),
                Ok(_) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(maps::USED)(e)),
            }
        }
        Ok(last.map(|(_, w)| w))
    }
}
