//! Doors' commands: run within bounds, their owed stops journaled, and the interface's state
//! directory that holds the journal.

pub mod command;
pub mod journal;
pub mod keeper;
pub mod state;
pub mod task;
