//! Send targets: the `target` object of `POST /v1/messages` and its limits.

use super::message::{PushError, PushRequest, MAX_REGIDS};
use serde::Deserialize;

/// Most aliases one request may target.
pub const MAX_ALIASES: usize = 1000;
/// Most topics in one topic expression.
pub const MAX_EXPRESSION_TOPICS: usize = 5;
/// Longest topic or alias name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// How the topics of an expression combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TopicOp {
    /// Devices in any of the topics.
    #[default]
    Union,
    /// Devices in every topic.
    Intersection,
    /// Devices in the first topic and in none of the others.
    Difference,
}

/// Whom a push goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    RegIds(Vec<String>),
    Aliases(Vec<String>),
    /// One topic is an expression of one.
    Topics {
        topics: Vec<String>,
        op: TopicOp,
    },
    All,
}

/// Which devices of an app a group message (topic expression or broadcast) is for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub enum GroupFilter {
    All,
    Topics { topics: Vec<String>, op: TopicOp },
}

impl GroupFilter {
    /// The topics of the expression; none for a broadcast.
    pub fn topics(&self) -> &[String] {
        match self {
            GroupFilter::All => &[],
            GroupFilter::Topics { topics, .. } => topics,
        }
    }

    /// Whether a device with these topic memberships is a target. `member(i)` answers for
    /// `topics()[i]`.
    pub fn matches(&self, mut member: impl FnMut(usize) -> bool) -> bool {
        match self {
            GroupFilter::All => true,
            GroupFilter::Topics { topics, op } => match op {
                TopicOp::Union => (0..topics.len()).any(member),
                TopicOp::Intersection => (0..topics.len()).all(member),
                TopicOp::Difference => !topics.is_empty() && member(0) && !(1..topics.len()).any(member),
            },
        }
    }
}

impl Target {
    /// Single pushes (RegID, alias) count as "single" in statistics; the rest as "group".
    pub fn is_group(&self) -> bool {
        matches!(self, Target::Topics { .. } | Target::All)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetJson {
    regids: Option<Vec<String>>,
    aliases: Option<Vec<String>>,
    topic: Option<String>,
    topics: Option<Vec<String>>,
    op: Option<TopicOp>,
    all: Option<bool>,
}

/// A whole send request: a target and the message.
#[derive(Debug)]
pub struct SendRequest {
    pub target: Target,
    pub message: PushRequest,
}

/// Checks a topic or alias name: 1..=128 bytes, no `/`, `+`, `#` or control characters.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && !name.chars().any(|c| matches!(c, '/' | '+' | '#') || c.is_control())
}

fn check_names(what: &str, names: &[String], max: usize) -> Result<(), PushError> {
    if names.is_empty() || names.len() > max {
        return Err(PushError::Invalid(format!("target.{what} must hold 1..={max} entries, got {}", names.len())));
    }
    Ok(())
}

impl SendRequest {
    /// Parses and checks the JSON body of a send. Strict: a top-level field that is neither
    /// `target` nor a message field is refused, and the error names it.
    pub fn from_json(body: &[u8]) -> Result<SendRequest, PushError> {
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(body).map_err(|e| PushError::Invalid(format!("invalid JSON: {e}")))?;
        Self::from_map(map)
    }

    /// [`SendRequest::from_json`] on an already parsed JSON object.
    pub fn from_map(mut map: serde_json::Map<String, serde_json::Value>) -> Result<SendRequest, PushError> {
        let target = map.remove("target").ok_or_else(|| PushError::Invalid("missing field `target`".into()))?;
        let t: TargetJson =
            serde_json::from_value(target).map_err(|e| PushError::Invalid(format!("invalid target: {e}")))?;
        let message = PushRequest::from_map(map)?;
        let given = [t.regids.is_some(), t.aliases.is_some(), t.topic.is_some(), t.topics.is_some(), t.all.is_some()]
            .iter()
            .filter(|&&g| g)
            .count();
        if given != 1 {
            return Err(PushError::Invalid(
                "target must have exactly one of regids, aliases, topic, topics, all".into(),
            ));
        }
        if t.op.is_some() && t.topics.is_none() {
            return Err(PushError::Invalid("target.op goes with target.topics".into()));
        }
        let target = if let Some(regids) = t.regids {
            check_names("regids", &regids, MAX_REGIDS)?;
            Target::RegIds(regids)
        } else if let Some(aliases) = t.aliases {
            check_names("aliases", &aliases, MAX_ALIASES)?;
            if let Some(bad) = aliases.iter().find(|a| !valid_name(a)) {
                return Err(PushError::Invalid(format!("alias {bad:?} is not a valid name")));
            }
            Target::Aliases(aliases)
        } else if let Some(topic) = t.topic {
            if !valid_name(&topic) {
                return Err(PushError::Invalid(format!("topic {topic:?} is not a valid name")));
            }
            Target::Topics { topics: vec![topic], op: TopicOp::Union }
        } else if let Some(topics) = t.topics {
            check_names("topics", &topics, MAX_EXPRESSION_TOPICS)?;
            if let Some(bad) = topics.iter().find(|a| !valid_name(a)) {
                return Err(PushError::Invalid(format!("topic {bad:?} is not a valid name")));
            }
            Target::Topics { topics, op: t.op.unwrap_or_default() }
        } else if t.all == Some(true) {
            Target::All
        } else {
            return Err(PushError::Invalid("target.all must be true".into()));
        };
        Ok(SendRequest { target, message })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::MessageKind;

    fn parse(json: &str) -> Result<Target, PushError> {
        SendRequest::from_json(json.as_bytes()).map(|r| r.target)
    }

    #[test]
    fn group_filters_combine_topics() {
        let expr = |op| GroupFilter::Topics { topics: vec!["a".into(), "b".into()], op };
        let only_a = |i: usize| i == 0;
        let both = |_: usize| true;
        assert!(expr(TopicOp::Union).matches(only_a));
        assert!(!expr(TopicOp::Intersection).matches(only_a));
        assert!(expr(TopicOp::Intersection).matches(both));
        assert!(expr(TopicOp::Difference).matches(only_a));
        assert!(!expr(TopicOp::Difference).matches(both));
        assert!(GroupFilter::All.matches(|_| false));
    }

    #[test]
    fn every_target_kind_parses() {
        assert_eq!(parse(r#"{"target":{"regids":["a"]},"title":"t"}"#), Ok(Target::RegIds(vec!["a".into()])));
        assert_eq!(parse(r#"{"target":{"aliases":["u1"]},"title":"t"}"#), Ok(Target::Aliases(vec!["u1".into()])));
        assert_eq!(
            parse(r#"{"target":{"topic":"news"}}"#),
            Ok(Target::Topics { topics: vec!["news".into()], op: TopicOp::Union })
        );
        assert_eq!(
            parse(r#"{"target":{"topics":["a","b"],"op":"difference"}}"#),
            Ok(Target::Topics { topics: vec!["a".into(), "b".into()], op: TopicOp::Difference })
        );
        assert_eq!(parse(r#"{"target":{"all":true}}"#), Ok(Target::All));
    }

    #[test]
    fn unknown_top_level_fields_are_refused_by_name() {
        let err = parse(r#"{"target":{"all":true},"title":"t","titel":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("`titel`"), "{err}");
        let err = parse(r#"{"title":"t"}"#).unwrap_err();
        assert!(err.to_string().contains("`target`"), "{err}");
        let err = parse(r#"{"target":{"all":true},"ttl":"soon"}"#).unwrap_err();
        assert!(err.to_string().contains("ttl") || err.to_string().contains("invalid type"), "{err}");
        let ok = SendRequest::from_json(br#"{"target":{"regids":["a"]},"type":"passthrough","payload":"p","ttl":5}"#)
            .unwrap();
        assert_eq!(ok.message.kind, MessageKind::Passthrough);
        assert_eq!(ok.message.ttl, Some(5));
    }

    #[test]
    fn bad_targets_are_refused() {
        for bad in [
            r#"{"target":{}}"#,
            r#"{"target":{"regids":[],"title":"t"}}"#,
            r#"{"target":{"regids":["a"],"topic":"b"}}"#,
            r#"{"target":{"topic":"a/b"}}"#,
            r##"{"target":{"topic":"#"}}"##,
            r#"{"target":{"topics":["a","b","c","d","e","f"]}}"#,
            r#"{"target":{"all":false}}"#,
            r#"{"target":{"topic":"a","op":"union"}}"#,
            r#"{"target":{"nope":1}}"#,
            r#"[1,2]"#,
        ] {
            assert!(parse(bad).is_err(), "{bad} must be refused");
        }
    }
}
