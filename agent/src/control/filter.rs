//! What a `palisade events` subscriber asked for.
use crate::{
    config::{Pattern, PatternError},
    events::{Event, EventType},
};

/// A subscriber's filter: container name/path globs and event types (empty = all).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub containers: Vec<Pattern>,
    pub types: Vec<EventType>,
}

impl Filter {
    pub fn matches(&self, ev: &Event) -> bool {
        (self.types.is_empty() || self.types.contains(&ev.kind))
            && (self.containers.is_empty()
                || self
                    .containers
                    .iter()
                    .any(|p| p.is_match(&ev.container.name) || p.is_match(&ev.container.id)))
    }
}

/// Why a subscription was refused.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error(transparent)]
    Pattern(#[from] PatternError),
    #[error("unknown event type `{0}` (one of: {all})", all = EventType::ALL.map(EventType::as_str).join(", "))]
    Type(String),
}

/// Builds an event filter from a subscribe request.
pub fn filter(containers: &[String], types: &[String]) -> Result<Filter, FilterError> {
    let containers = containers
        .iter()
        .map(|g| Pattern::new(g))
        .collect::<Result<Vec<_>, _>>()?;
    let types = types
        .iter()
        .map(|t| EventType::parse(t).ok_or_else(|| FilterError::Type(t.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Filter { containers, types })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::tests::sample;

    #[test]
    fn containers_and_types() {
        let f = Filter {
            containers: vec![Pattern::new("web-*").unwrap()],
            types: vec![EventType::Exit],
        };
        assert!(f.matches(&sample(EventType::Exit)));
        assert!(!f.matches(&sample(EventType::Exec)));
        let mut other = sample(EventType::Exit);
        other.container.name = "db".into();
        other.container.id = "/db".into();
        assert!(!f.matches(&other));
        assert!(Filter::default().matches(&other));
        assert!(filter(&["web-*".into()], &["exec".into()]).is_ok());
        assert!(
            filter(&[], &["nope".into()])
                .unwrap_err()
                .to_string()
                .contains("unknown event type `nope`")
        );
    }
}
