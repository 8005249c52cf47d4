//! `TEXT_MATCH` queries. In: a query string in tantivy's syntax (Lucene's): terms, quoted
//! phrases, `"big bad wo"*` phrase prefixes, `wo*` / `w?rd` wildcards, `/regex/`, `IN [a b]`,
//! `AND`, `OR`, `NOT`, `+`, `-` and parentheses. Out: a [`TextQuery`] that answers on one
//! value's tokens ([`TextQuery::matches`]) exactly as the segment's text index answers it
//! (see [`super::index`]): both tokenize with [`super::analyzer`] and combine clauses by the
//! same rule.
//!
//! Clauses combine as Lucene's: with any required clause (`+a`, `a AND b`) the optional ones
//! only score (which a filter ignores); with none, at least one optional clause must match; a
//! query of only prohibited clauses (`NOT a`) matches every value without them (Lucene would
//! match nothing). Field names (`title:a`), ranges, fuzzy terms and phrase slop are refused
//! with an error naming them.

use std::sync::Arc;

use tantivy::query_grammar::{self, Delimiter, Occur, UserInputAst, UserInputLeaf};

use super::analyzer;

/// The longest query accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 16 * 1024;
/// Compiled automata larger than this are refused (a hostile `/(a|b)*.../` cannot exhaust
/// memory).
const REGEX_SIZE_LIMIT: usize = 4 << 20;

/// A parsed `TEXT_MATCH` query.
#[derive(Debug, Clone)]
pub enum TextQuery {
    /// Tokens at these relative positions, one after another (one token: a term). With
    /// `prefix`, the last one is a prefix of the value's token.
    Phrase {
        terms: Vec<(usize, String)>,
        prefix: bool,
    },
    /// A token that matches a regular expression whole (wildcards become one).
    Pattern(Arc<Pattern>),
    /// Every value.
    All,
    Bool {
        must: Vec<TextQuery>,
        should: Vec<TextQuery>,
        must_not: Vec<TextQuery>,
    },
}

/// One regular expression, compiled for the term dictionary and for single tokens.
pub struct Pattern {
    pub source: String,
    pub(crate) fst: Arc<tantivy_fst::Regex>,
    row: regex::Regex,
}

impl std::fmt::Debug for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/{}/", self.source)
    }
}

impl Pattern {
    fn new(source: String) -> Result<Pattern, String> {
        let fst = tantivy_fst::Regex::new(&source)
            .map_err(|e| format!("regular expression /{source}/: {e}"))?;
        let row = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| format!("regular expression /{source}/: {e}"))?;
        Ok(Pattern {
            source,
            fst: Arc::new(fst),
            row,
        })
    }
}

impl TextQuery {
    /// Parses `query`; the error says what is wrong with it.
    pub fn parse(query: &str) -> Result<TextQuery, String> {
        if query.len() > MAX_QUERY_BYTES {
            return Err(format!(
                "the query is {} bytes, more than the {MAX_QUERY_BYTES} allowed",
                query.len()
            ));
        }
        if query.trim().is_empty() {
            return Err("the query is empty".into());
        }
        let (ast, errors) = query_grammar::parse_query_lenient(query);
        if let Some(e) = errors.first() {
            return Err(format!("syntax error at byte {}: {}", e.pos, e.message));
        }
        from_ast(ast)
    }

    /// Whether a value whose tokens are `tokens` (position, text; as [`tokenize`] gives
    /// them) matches.
    pub fn matches(&self, tokens: &Tokens) -> bool {
        match self {
            TextQuery::Phrase { terms, prefix } => tokens.has_phrase(terms, *prefix),
            TextQuery::Pattern(p) => tokens.texts().any(|t| p.row.is_match(t)),
            TextQuery::All => true,
            TextQuery::Bool {
                must,
                should,
                must_not,
            } => {
                let hit = if !must.is_empty() {
                    must.iter().all(|q| q.matches(tokens))
                } else if !should.is_empty() {
                    should.iter().any(|q| q.matches(tokens))
                } else {
                    true
                };
                hit && !must_not.iter().any(|q| q.matches(tokens))
            }
        }
    }

    /// Whether `value` matches (tokenizing it).
    pub fn matches_str(&self, value: &str) -> bool {
        TOKENS.with(|t| {
            let mut t = t.borrow_mut();
            t.fill(value);
            self.matches(&t)
        })
    }
}

thread_local! {
    static TOKENS: std::cell::RefCell<Tokens> = std::cell::RefCell::new(Tokens::default());
}

/// A value's tokens by position (a removed over-long token leaves its position empty).
#[derive(Default)]
pub struct Tokens {
    by_position: Vec<Option<String>>,
    analyzer: Option<tantivy::tokenizer::TextAnalyzer>,
}

impl Tokens {
    /// Tokenizes `value`, replacing what was held.
    pub fn fill(&mut self, value: &str) {
        self.by_position.clear();
        let analyzer = self.analyzer.get_or_insert_with(analyzer);
        let mut stream = analyzer.token_stream(value);
        let by_position = &mut self.by_position;
        stream.process(&mut |token| {
            if by_position.len() <= token.position {
                by_position.resize(token.position + 1, None);
            }
            by_position[token.position] = Some(token.text.clone());
        });
    }

    fn texts(&self) -> impl Iterator<Item = &str> {
        self.by_position.iter().flatten().map(String::as_str)
    }

    fn at(&self, position: usize) -> Option<&str> {
        self.by_position.get(position)?.as_deref()
    }

    fn has_phrase(&self, terms: &[(usize, String)], prefix: bool) -> bool {
        let Some(((first_off, first), rest)) = terms.split_first() else {
            return false;
        };
        let last = terms.len() - 1;
        (0..self.by_position.len()).any(|p| {
            let Some(start) = p.checked_sub(*first_off) else {
                return false;
            };
            let fits = |i: usize, want: &str, got: Option<&str>| match got {
                Some(got) if prefix && i == last => got.starts_with(want),
                Some(got) => got == want,
                None => false,
            };
            fits(0, first, self.at(p))
                && rest
                    .iter()
                    .enumerate()
                    .all(|(i, (off, t))| fits(i + 1, t, self.at(start + off)))
        })
    }
}

/// `text`'s tokens with their positions, as the index holds them.
pub(crate) fn tokenize(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut a = analyzer();
    let mut stream = a.token_stream(text);
    stream.process(&mut |t| out.push((t.position, t.text.clone())));
    out
}

fn from_ast(ast: UserInputAst) -> Result<TextQuery, String> {
    match ast {
        UserInputAst::Boost(inner, _) => from_ast(*inner),
        UserInputAst::Leaf(leaf) => from_leaf(*leaf),
        UserInputAst::Clause(clauses) => {
            if clauses.is_empty() {
                return Err("the query has no terms".into());
            }
            let (mut must, mut should, mut must_not) = (Vec::new(), Vec::new(), Vec::new());
            for (occur, sub) in clauses {
                let q = from_ast(sub)?;
                match occur {
                    Some(Occur::Must) => must.push(q),
                    Some(Occur::MustNot) => must_not.push(q),
                    Some(Occur::Should) | None => should.push(q),
                }
            }
            if must.is_empty() && must_not.is_empty() && should.len() == 1 {
                return Ok(should.pop().expect("one clause"));
            }
            Ok(TextQuery::Bool {
                must,
                should,
                must_not,
            })
        }
    }
}

fn no_field(field: &Option<String>) -> Result<(), String> {
    match field {
        None => Ok(()),
        Some(f) => Err(format!(
            "field names ({f}:) are not supported: TEXT_MATCH searches the column it names"
        )),
    }
}

fn from_leaf(leaf: UserInputLeaf) -> Result<TextQuery, String> {
    match leaf {
        UserInputLeaf::Literal(l) => {
            no_field(&l.field_name)?;
            if l.slop > 0 {
                return Err(format!(
                    "phrase slop (\"{}\"~{}) is not supported",
                    l.phrase, l.slop
                ));
            }
            if l.delimiter == Delimiter::None && l.phrase.contains(['*', '?']) {
                return wildcard(&l.phrase);
            }
            phrase(&l.phrase, l.prefix)
        }
        UserInputLeaf::Regex { field, pattern } => {
            no_field(&field)?;
            Ok(TextQuery::Pattern(Arc::new(Pattern::new(pattern)?)))
        }
        UserInputLeaf::Set { field, elements } => {
            no_field(&field)?;
            let should = elements
                .iter()
                .map(|e| phrase(e, false))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(TextQuery::Bool {
                must: Vec::new(),
                should,
                must_not: Vec::new(),
            })
        }
        UserInputLeaf::All => Ok(TextQuery::All),
        UserInputLeaf::Range { .. } => Err("range queries are not supported".into()),
        UserInputLeaf::Exists { field } => Err(format!(
            "field names ({field}:*) are not supported: TEXT_MATCH searches the column it names"
        )),
    }
}

/// A term or phrase: its text as tokens (more than one token is a phrase, as `foo-bar`).
fn phrase(text: &str, prefix: bool) -> Result<TextQuery, String> {
    let tokens = tokenize(text);
    let Some(first) = tokens.first().map(|t| t.0) else {
        return Err(format!(
            "{text:?} has no searchable word (tokens are runs of letters and digits)"
        ));
    };
    let terms: Vec<(usize, String)> = tokens.into_iter().map(|(p, t)| (p - first, t)).collect();
    if prefix && terms.len() == 1 {
        // `"wo"*`: one token by prefix.
        return Ok(TextQuery::Pattern(Arc::new(Pattern::new(format!(
            "{}.*",
            regex::escape(&terms[0].1)
        ))?)));
    }
    Ok(TextQuery::Phrase { terms, prefix })
}

/// `w?rd*`: a token matched whole, `*` any run of characters and `?` one. Other characters
/// must be letters or digits (tokens hold nothing else); they match lowercased, as tokens
/// are.
fn wildcard(text: &str) -> Result<TextQuery, String> {
    let mut re = String::with_capacity(text.len() + 8);
    let mut chars = text.chars();
    let mut literal = false;
    while let Some(c) = chars.next() {
        match c {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            '\\' => match chars.next() {
                Some(e) if e.is_alphanumeric() => push_lower(&mut re, e, &mut literal),
                _ => return Err(bad_wildcard(text)),
            },
            c if c.is_alphanumeric() => push_lower(&mut re, c, &mut literal),
            _ => return Err(bad_wildcard(text)),
        }
    }
    if !literal && !re.contains('.') {
        return Err(bad_wildcard(text));
    }
    Ok(TextQuery::Pattern(Arc::new(Pattern::new(re)?)))
}

fn push_lower(re: &mut String, c: char, literal: &mut bool) {
    *literal = true;
    for l in c.to_lowercase() {
        re.push_str(&regex::escape(&l.to_string()));
    }
}

fn bad_wildcard(text: &str) -> String {
    format!(
        "wildcard term {text:?}: only letters, digits, * and ? (a wildcard matches one word; quote a phrase)"
    )
}

/// A `TEXT_MATCH` query as a predicate holds it: its text (what two predicates compare
/// equal by) and its parse.
#[derive(Debug, Clone)]
pub struct TextSearch {
    source: String,
    query: Arc<TextQuery>,
}

impl PartialEq for TextSearch {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl TextSearch {
    pub fn parse(source: &str) -> Result<TextSearch, String> {
        Ok(TextSearch {
            query: Arc::new(TextQuery::parse(source)?),
            source: source.to_string(),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn query(&self) -> &TextQuery {
        &self.query
    }
}
