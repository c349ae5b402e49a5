//! Correlation metadata carried on every published message.
//!
//! [`CorrelationMetadata`] is the ergonomic form of the wire `Correlation`:
//! a root correlation starts a workflow (its workflow id is its own id), and
//! [`CorrelationMetadata::child`] derives a step of the same workflow that
//! inherits workflow, stage and tags and points at its parent.

use std::collections::BTreeMap;

use daemoneye_lib::proto::Correlation;

/// Correlation of one message with a workflow and its parent message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CorrelationMetadata {
    /// Id of this message or step.
    pub correlation_id: String,
    /// Correlation id of the step that caused this one.
    pub parent_id: Option<String>,
    /// Id of the workflow this step belongs to.
    pub workflow_id: Option<String>,
    /// Stage of the workflow, e.g. `detection`.
    pub stage: Option<String>,
    /// Free-form tags.
    pub tags: BTreeMap<String, String>,
}

impl CorrelationMetadata {
    /// A root correlation: starts a workflow whose id is `correlation_id`.
    pub fn new(correlation_id: impl Into<String>) -> Self {
        let id = correlation_id.into();
        Self { workflow_id: Some(id.clone()), correlation_id: id, ..Self::default() }
    }

    /// A root correlation with a fresh time-ordered UUID (v7).
    pub fn generate() -> Self {
        Self::new(uuid::Uuid::now_v7().to_string())
    }

    /// Sets the workflow id.
    #[must_use]
    pub fn with_workflow(mut self, workflow_id: impl Into<String>) -> Self {
        self.workflow_id = Some(workflow_id.into());
        self
    }

    /// Sets the stage.
    #[must_use]
    pub fn with_stage(mut self, stage: impl Into<String>) -> Self {
        self.stage = Some(stage.into());
        self
    }

    /// Adds or replaces a tag.
    #[must_use]
    pub fn with_tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }

    /// A child step: new id, same workflow, stage and tags; `parent_id` is
    /// this correlation's id.
    pub fn child(&self, correlation_id: impl Into<String>) -> Self {
        Self {
            correlation_id: correlation_id.into(),
            parent_id: Some(self.correlation_id.clone()),
            workflow_id: self.workflow_id.clone().or_else(|| Some(self.correlation_id.clone())),
            stage: self.stage.clone(),
            tags: self.tags.clone(),
        }
    }

    /// Alias of [`Self::child`] (the name used in the design documents).
    pub fn create_child(&self, correlation_id: impl Into<String>) -> Self {
        self.child(correlation_id)
    }
}

impl From<CorrelationMetadata> for Correlation {
    fn from(m: CorrelationMetadata) -> Self {
        Self {
            correlation_id: m.correlation_id,
            parent_id: m.parent_id,
            workflow_id: m.workflow_id,
            stage: m.stage,
            tags: m.tags.into_iter().collect(),
        }
    }
}

impl From<&CorrelationMetadata> for Correlation {
    fn from(m: &CorrelationMetadata) -> Self {
        m.clone().into()
    }
}

impl From<Correlation> for CorrelationMetadata {
    fn from(c: Correlation) -> Self {
        Self {
            correlation_id: c.correlation_id,
            parent_id: c.parent_id,
            workflow_id: c.workflow_id,
            stage: c.stage,
            tags: c.tags.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_inherits_and_links() {
        let parent = CorrelationMetadata::new("wf-1").with_stage("detection").with_tag("workflow", "threat_analysis");
        let child = parent.child("analysis-1");
        assert_eq!(child.correlation_id, "analysis-1");
        assert_eq!(child.parent_id.as_deref(), Some("wf-1"));
        assert_eq!(child.workflow_id.as_deref(), Some("wf-1"));
        assert_eq!(child.stage.as_deref(), Some("detection"));
        assert_eq!(child.tags["workflow"], "threat_analysis");
        let grandchild = child.create_child("g");
        assert_eq!(grandchild.workflow_id.as_deref(), Some("wf-1"));
        assert_eq!(grandchild.parent_id.as_deref(), Some("analysis-1"));
    }

    #[test]
    fn proto_round_trip() {
        let m = CorrelationMetadata::generate().with_tag("a", "b").with_stage("s");
        let back = CorrelationMetadata::from(Correlation::from(&m));
        assert_eq!(back, m);
    }
}
