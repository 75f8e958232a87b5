//! The kernel side: the XDP program loaded and kept in step with the config, its attachment,
//! its pinned state, the secret doors' window keys, and the kernel floor.

pub mod attach;
pub mod doors;
pub mod error;
pub mod floor;
pub mod grants;
pub mod hooks;
pub mod netlink;
pub mod pin;
pub mod ports;
pub mod program;
pub mod rejection;
pub mod spec;
pub mod tc;
pub mod test_run;
pub mod windows;
