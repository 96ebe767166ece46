//! Saving and loading the dynamically quantized graph ops (hook for [`crate::serialize`]).

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use qgraph::{CustomOp, Node};
use serde_json::Value as Json;

use crate::serialize::LoadContext;
use crate::{Result, StoredTensor};

/// Saves a dynamic op if `op` is one: `(kind, attrs)`, its tensors added to `tensors`.
pub(crate) fn save(
    _node: &Node,
    _op: &dyn Any,
    _tensors: &mut BTreeMap<String, StoredTensor>,
) -> Result<Option<(&'static str, Json)>> {
    Ok(None)
}

/// Rebuilds a dynamic op of `kind`, or `None` if the kind is not a dynamic op.
pub(crate) fn load(_kind: &str, _attrs: &Json, _ctx: &LoadContext<'_>) -> Result<Option<Arc<dyn CustomOp>>> {
    Ok(None)
}
