//! JSON columns: the JSON index (`"index": ["json"]`, format 10), `JSON_MATCH` filters and
//! JSON paths. In: a JSON column's values and filters in Pinot's `JSON_MATCH` syntax. Out:
//! a section per segment mapping each flattened path/value key to its docs ([`index`]),
//! parsed filters ([`filter`]), and the docs a filter matches — from the index, or for a
//! segment without one (a real-time chunk, an older segment) by flattening each value (each
//! dictionary value once) the same way ([`path::flatten`]).

pub mod filter;
pub mod flatten;
pub mod index;
pub mod path;
#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use filter::JsonFilter;
pub use index::JsonIndex;
pub use path::JsonPath;

/// A parsed `JSON_MATCH` filter with its text (two are equal when their texts are).
#[derive(Debug, Clone)]
pub struct JsonSearch {
    source: String,
    filter: Arc<JsonFilter>,
}

impl PartialEq for JsonSearch {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl JsonSearch {
    pub fn parse(source: &str) -> Result<JsonSearch, String> {
        Ok(JsonSearch {
            filter: Arc::new(JsonFilter::parse(source)?),
            source: source.to_string(),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn filter(&self) -> &JsonFilter {
        &self.filter
    }
}
