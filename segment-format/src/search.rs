//! Leaves answered by a column's search index: `TEXT_MATCH` ([`crate::text`]) and
//! `JSON_MATCH` ([`crate::json`]). In: such a leaf and an open segment. Out: a test on one
//! string value (for segments or rows without the index: real-time chunks, dictionary values,
//! raw strings), the docs the index gives, and whether the index rules the segment out.

use roaring::RoaringBitmap;

use crate::error::Result;
use crate::json::JsonSearch;
use crate::predicate::Predicate;
use crate::reader::SegmentReader;
use crate::text::TextSearch;

/// A search leaf's query.
#[derive(Debug, Clone, Copy)]
pub enum Search<'a> {
    Text(&'a TextSearch),
    Json(&'a JsonSearch),
}

/// What a segment's index answered.
pub struct IndexAnswer {
    /// Docs (never NULL) where the leaf is TRUE, among those the index covers.
    pub docs: RoaringBitmap,
    /// Docs the index does not cover; their values are to be tested one by one.
    pub uncovered: RoaringBitmap,
}

impl Predicate {
    /// The column and query of a search leaf.
    pub fn search(&self) -> Option<(&str, Search<'_>)> {
        match self {
            Predicate::TextMatch { column, search } => Some((column, Search::Text(search))),
            Predicate::JsonMatch { column, search } => Some((column, Search::Json(search))),
            _ => None,
        }
    }
}

impl Search<'_> {
    /// The SQL function's name, for errors.
    pub fn function(&self) -> &'static str {
        match self {
            Search::Text(_) => SearchFunction::Text.sql_name(),
            Search::Json(_) => SearchFunction::Json.sql_name(),
        }
    }

    /// Whether one (non-null) value matches.
    pub fn matches_str(&self, s: &str) -> bool {
        match self {
            Search::Text(t) => t.query().matches_str(s),
            Search::Json(j) => j.filter().matches_str(s),
        }
    }

    /// Whether column `c` of `reader` has this search's index.
    pub(crate) fn indexed(&self, reader: &SegmentReader, c: usize) -> bool {
        let meta = reader.column_meta(c);
        match self {
            Search::Text(_) => meta.text.is_some(),
            Search::Json(_) => meta.json.is_some(),
        }
    }

    /// The index's answer on column `c`; `None` without an index.
    pub(crate) fn index_docs(
        &self,
        reader: &SegmentReader,
        c: usize,
    ) -> Result<Option<IndexAnswer>> {
        let nulls = reader.nulls(c)?;
        match self {
            Search::Text(t) => reader.text_index(c)?.map(|index| -> Result<_> {
                let mut docs = index.search(t.query())?;
                docs -= nulls.as_ref();
                Ok(IndexAnswer {
                    docs,
                    uncovered: RoaringBitmap::new(),
                })
            }),
            Search::Json(j) => reader.json_index(c)?.map(|index| -> Result<_> {
                Ok(IndexAnswer {
                    docs: index.search(j.filter(), &nulls)?,
                    uncovered: index.unindexed().clone(),
                })
            }),
        }
        .transpose()
    }

    /// False when the index shows no doc of column `c` can match.
    pub(crate) fn may_match(&self, reader: &SegmentReader, c: usize) -> Result<bool> {
        if reader.column_meta(c).stats.null_count >= reader.row_count() as u64 {
            return Ok(false);
        }
        Ok(match self {
            Search::Text(t) => match reader.text_index(c)? {
                Some(index) => index.may_match(t.query())?,
                None => true,
            },
            Search::Json(j) => match reader.json_index(c)? {
                Some(index) => index.may_match(j.filter())?,
                None => true,
            },
        })
    }
}

/// The SQL functions answered by a search index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SearchFunction {
    /// `TEXT_MATCH(column, 'query')`, tantivy's query syntax.
    Text,
    /// `JSON_MATCH(column, 'filter')`, Pinot's filter syntax.
    Json,
}

impl SearchFunction {
    pub const ALL: [SearchFunction; 2] = [SearchFunction::Text, SearchFunction::Json];

    /// The function's SQL name, upper case.
    pub fn sql_name(self) -> &'static str {
        match self {
            SearchFunction::Text => "TEXT_MATCH",
            SearchFunction::Json => "JSON_MATCH",
        }
    }

    /// What its second argument is called in errors.
    pub fn argument(self) -> &'static str {
        match self {
            SearchFunction::Text => "query",
            SearchFunction::Json => "filter",
        }
    }

    /// Parses the function's second argument; the error says what is wrong with it.
    pub fn parse(self, text: &str) -> std::result::Result<SearchQuery, String> {
        Ok(match self {
            SearchFunction::Text => SearchQuery::Text(TextSearch::parse(text)?),
            SearchFunction::Json => SearchQuery::Json(JsonSearch::parse(text)?),
        })
    }
}

/// A parsed search argument.
#[derive(Debug, Clone, PartialEq)]
pub enum SearchQuery {
    Text(TextSearch),
    Json(JsonSearch),
}

impl SearchQuery {
    pub fn search(&self) -> Search<'_> {
        match self {
            SearchQuery::Text(t) => Search::Text(t),
            SearchQuery::Json(j) => Search::Json(j),
        }
    }

    /// The leaf applying this search to `column`.
    pub fn into_predicate(self, column: String) -> Predicate {
        match self {
            SearchQuery::Text(search) => Predicate::TextMatch { column, search },
            SearchQuery::Json(search) => Predicate::JsonMatch { column, search },
        }
    }
}
