//! Palisade policies: the YAML format (`apiVersion: palisade.dev/v1`, `kind: Policy`), its
//! validation with `file:line:column` errors, conflict checks, selectors, compilation to the
//! kernel tables of `palisade-policy` and to seccomp rules, and learned policies.
//!
//! Pure logic, no kernel access: the agent loads the tables, the launcher builds the filter,
//! and the fuzz target (`fuzz/`) drives [`parse::parse_str`].
pub mod check;
mod check_enforce;
pub mod compile;
pub mod files;
pub mod learn;
pub mod model;
pub mod parse;
mod raw;

pub use model::{Diagnostic, PolicyErrors};
pub use model::{Mode, Policy, PolicySet, Target};
pub use parse::{load_paths, parse_str};

#[cfg(test)]
mod files_tests;
#[cfg(test)]
mod tests;
