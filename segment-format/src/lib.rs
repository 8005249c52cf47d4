//! `basalt-segment`: the immutable columnar segment.
//!
//! In: Arrow record batches and a [`SegmentSchema`] ([`builder`]). Out: segment bytes, and,
//! from those bytes, doc-id bitmaps for predicates ([`predicate`]) and Arrow arrays for the
//! matched docs ([`reader`]). The byte layout is documented in this crate's README.md and
//! versioned by [`layout::FORMAT_VERSION`]; older versions stay readable (see `fixtures/`).

pub mod bitpack;
pub mod bloom;
pub mod builder;
pub mod decimal;
pub mod doc_list;
pub mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod inspect;
pub mod int_block;
mod intern;
pub mod json;
mod key_match;
pub mod layout;
pub mod like;
pub mod multi_value;
pub mod ndv;
mod near_unique;
pub mod postings;
pub mod predicate;
mod range_index;
pub mod reader;
#[doc(hidden)] // public for benches/segment.rs only
pub mod rice;
pub mod search;
pub mod star_tree;
pub mod string_block;
mod string_leaf;
pub mod text;
pub mod types;

pub use builder::{build_segment, keeps_dictionary, string_dictionary_type, BuildOptions};
pub use error::{Result, SegmentError};
pub use layout::FORMAT_VERSION;
pub use predicate::{
    candidate_docs, evaluate, may_match, scanned_docs, simplify_for, simplify_for_blocks, CmpOp,
    Predicate,
};
pub use reader::SegmentReader;
pub use roaring::RoaringBitmap;
pub use types::{ColumnDef, ColumnType, IndexKind, SegmentSchema, Value};

#[cfg(test)]
mod fixture;
#[cfg(test)]
mod tests;
