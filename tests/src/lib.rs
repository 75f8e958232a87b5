//! Helpers for the privileged tests: crafted frames, network namespaces, processes.
//! Test helpers panic on failure, like the tests themselves (a panic keeps the backtrace).
#![allow(clippy::expect_used, clippy::missing_panics_doc, reason = "test helpers panic by design")]

pub mod daemon;
pub mod fleet;
pub mod frame;
pub mod inject;
pub mod kernel;
pub mod netns;
pub mod pinned;
pub mod scenario;
pub mod service;
