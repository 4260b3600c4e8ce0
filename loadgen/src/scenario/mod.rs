//! The load scenarios, one file each, plus helpers they share (`common`).

pub mod common;
pub mod hold;
