//! What an operator sees: knockd's log, `--status` (read from the pins), and the Prometheus
//! metrics.

pub mod fleet;
pub mod log;
pub mod metrics;
pub mod status;
