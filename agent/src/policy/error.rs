//! What can go wrong applying policies, as the control socket and the log report it.
use super::bpf::BpfError;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error("{table} table: {source}")]
    Table {
        table: &'static str,
        source: aya::maps::MapError,
    },
    #[error("policy programs not loaded")]
    NotLoaded,
    #[error("no policy named `{0}` (see `palisade policy status`)")]
    Unknown(String),
    /// Files that do not parse or validate (every diagnostic with its `file:line:column`).
    #[error("{0}")]
    Files(#[from] palisade_policy::PolicyErrors),
    #[error("the registration names policies {names:?} that {file} does not hold")]
    Missing { names: Vec<String>, file: String },
    #[error("the policy engine has stopped")]
    Gone,
    #[error("policies of {container} cannot be put in place: {why}")]
    NotEnforced { container: String, why: String },
}

impl PolicyError {
    pub(super) fn table(table: &'static str) -> impl Fn(aya::maps::MapError) -> Self {
        move |source| PolicyError::Table { table, source }
    }
}
