//! Full-text search on string columns (`"index": ["text"]`, format 9). In: a column's values
//! and `TEXT_MATCH(column, 'query')` queries. Out: a tantivy index per segment stored as a
//! section of the segment ([`index`]), parsed queries ([`query`]), and the docs a query
//! matches — from the index, or for a segment without one (a real-time chunk, an older
//! segment) by tokenizing each value (each dictionary value once) the same way.
//!
//! Tokens are the maximal runs of alphanumeric characters (Unicode's), lowercased; a token
//! of 40 bytes or more is dropped (its position stays taken). This rule is part of the
//! format: an index built by one version is searched by the next.

pub mod index;
pub mod query;
#[cfg(test)]
mod tests;

use tantivy::tokenizer::{LowerCaser, RemoveLongFilter, SimpleTokenizer, TextAnalyzer};

pub use index::TextIndex;
pub use query::{TextQuery, TextSearch};

/// The tokenizer's name inside the stored index.
pub(crate) const TOKENIZER: &str = "basalt_text_v1";

/// The analyzer of indexed values and of query terms.
pub fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .build()
}
