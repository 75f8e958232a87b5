//! Helpers for the privileged tests: crafted frames, network namespaces, processes.

pub mod frame;
pub mod netns;
