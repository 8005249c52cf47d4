//! `basalt-semantic`: the semantic layer. A metric is defined once, in a model posted to the
//! admin API, and answered from whichever tier holds the range asked for.
//!
//! In: models (JSON or YAML, [`model`]), semantic queries (`/semantic/query`, [`request`])
//! and SQL over `semantic.<model>` with `MEASURE(name)` ([`sql`]). Out: SQL over Basalt's
//! tables that the [`basalt_query::QueryEngine`] runs — measures as aggregate expressions
//! (filtered measures as `FILTER (WHERE ...)`, approximate distinct counts and percentiles
//! as sketches that merge across segments), derived measures computed from their inputs
//! after aggregation — and, for `/semantic/query`, which tier answered each time range and
//! how fresh it is. Models persist in the metastore as one versioned document
//! ([`catalog`]), so every broker of a cluster serves the same models.

pub mod catalog;
pub mod error;
pub mod model;
pub mod request;
pub mod sql;

pub use catalog::{SemanticAnswer, SemanticLayer, SemanticRegistry};
pub use error::{Result, SemanticError};
pub use model::{BodyFormat, Model, ModelSpec};
pub use request::SemanticQuery;
