//! Empty on purpose: `knockd-user` lists this crate as a build-dependency so that cargo
//! rebuilds the XDP program (the `knock-ebpf` binary) when its sources change.
#![no_std]
