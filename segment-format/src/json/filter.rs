//! `JSON_MATCH` filters. In: a filter in Pinot's syntax — `"$.a.b" = 'x'`, `!=`, `<`, `<=`,
//! `>`, `>=`, `IN (..)`, `NOT IN (..)`, `IS NULL`, `IS NOT NULL`, `REGEXP_LIKE("$.a", 're')`,
//! combined with `AND`, `OR`, `NOT` and parentheses. Out: a [`JsonFilter`] evaluated by one
//! function, [`eval`], over a sorted table of flattened keys ([`super::path::flatten`]) —
//! a whole segment's index, where each key has a doc set, or one document's keys, where the
//! answer is a bool — so the index and the per-value test cannot disagree.
//!
//! A comparison holds when some value at the path satisfies it (any element, for a `[*]`
//! path). Values compare as text (`= 'x'`, `< 'm'`), except against a number: `= 5` matches
//! the values written `5` or `5.0` (how serde_json writes the number 5), and `<`, `>` compare
//! the values that read as numbers. `IS NULL` holds when the path is missing or `null`; `NOT`
//! complements within the documents that are not SQL NULL. Text that is not JSON is a
//! document with no paths.

use std::ops::Range;

use regex::Regex;

use super::path::{JsonPath, EXISTS, VALUE};
use crate::predicate::CmpOp;

/// The longest filter accepted, in bytes.
pub const MAX_FILTER_BYTES: usize = 16 * 1024;
/// Deepest nesting of `NOT` and parentheses.
const MAX_DEPTH: usize = 64;
/// Compiled regular expressions larger than this are refused.
const REGEX_SIZE_LIMIT: usize = 4 << 20;

/// A parsed filter.
#[derive(Debug, Clone)]
pub enum JsonFilter {
    And(Vec<JsonFilter>),
    Or(Vec<JsonFilter>),
    Not(Box<JsonFilter>),
    /// `IS NOT NULL` (or, negated, `IS NULL`).
    Exists {
        path: JsonPath,
        negated: bool,
    },
    /// Some value at `path` passes `test`.
    Value {
        path: JsonPath,
        test: Test,
    },
}

/// A test on one scalar's text.
#[derive(Debug, Clone)]
pub enum Test {
    Compare(CmpOp, Literal),
    In { values: Vec<Literal>, negated: bool },
    Regex(Regex),
}

/// A literal of a filter.
#[derive(Debug, Clone)]
pub enum Literal {
    Str(String),
    /// A number and the texts a JSON value equal to it is written with.
    Num(f64, Vec<String>),
}

impl Literal {
    fn number(text: &str) -> Result<Literal, String> {
        let x: f64 = text
            .parse()
            .ok()
            .filter(|x: &f64| x.is_finite())
            .ok_or_else(|| format!("{text:?} is not a number"))?;
        let mut spellings = Vec::new();
        if let Ok(i) = text.parse::<i64>() {
            spellings.push(i.to_string());
        } else if let Ok(u) = text.parse::<u64>() {
            spellings.push(u.to_string());
        } else if x.fract() == 0.0 && x.abs() < 9.0e15 {
            spellings.push((x as i64).to_string());
        }
        if let Some(n) = serde_json::Number::from_f64(x) {
            spellings.push(n.to_string());
        }
        spellings.dedup();
        Ok(Literal::Num(x, spellings))
    }

    fn equals(&self, v: &str) -> bool {
        match self {
            Literal::Str(s) => s == v,
            Literal::Num(_, spellings) => spellings.iter().any(|s| s == v),
        }
    }

    /// The texts a value equal to this literal has.
    fn spellings(&self) -> &[String] {
        match self {
            Literal::Str(s) => std::slice::from_ref(s),
            Literal::Num(_, s) => s,
        }
    }
}

impl Test {
    /// Whether a scalar's text passes.
    pub fn passes(&self, v: &str) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Test::Compare(CmpOp::Eq, lit) => lit.equals(v),
            Test::Compare(CmpOp::NotEq, lit) => !lit.equals(v),
            Test::Compare(op, lit) => {
                let ord = match lit {
                    Literal::Str(s) => v.cmp(s.as_str()),
                    Literal::Num(x, _) => match v.parse::<f64>() {
                        Ok(y) if y.is_finite() => y.total_cmp(x),
                        _ => return false,
                    },
                };
                match op {
                    CmpOp::Lt => ord == Less,
                    CmpOp::LtEq => ord != Greater,
                    CmpOp::Gt => ord == Greater,
                    CmpOp::GtEq => ord != Less,
                    CmpOp::Eq | CmpOp::NotEq => unreachable!("handled above"),
                }
            }
            Test::In { values, negated } => values.iter().any(|l| l.equals(v)) != *negated,
            Test::Regex(re) => re.is_match(v),
        }
    }

    /// The exact texts that pass, when they are few (`=`, `IN`), so keys are looked up
    /// rather than every value of the path scanned.
    fn exact(&self) -> Option<Vec<&str>> {
        match self {
            Test::Compare(CmpOp::Eq, lit) => {
                Some(lit.spellings().iter().map(|s| s.as_str()).collect())
            }
            Test::In {
                values,
                negated: false,
            } => Some(
                values
                    .iter()
                    .flat_map(|l| l.spellings())
                    .map(|s| s.as_str())
                    .collect(),
            ),
            _ => None,
        }
    }
}

/// Sorted keys, each with a set of documents (a segment's index, or one document whose
/// keys all hold and whose sets are `true`).
pub trait KeyTable {
    type Set;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn key(&self, i: usize) -> &str;
    /// The documents holding key `i`.
    fn docs(&self, i: usize) -> crate::Result<Self::Set>;
    fn none(&self) -> Self::Set;
    /// Every document the filter is asked about.
    fn all(&self) -> Self::Set;
    fn union(&self, a: &mut Self::Set, b: Self::Set);
    fn intersect(&self, a: &mut Self::Set, b: Self::Set);
    /// `all` minus `b`.
    fn complement(&self, b: Self::Set) -> Self::Set;
    fn is_none(&self, s: &Self::Set) -> bool;
}

/// The first key at or after `target`.
fn lower_bound<T: KeyTable + ?Sized>(t: &T, target: &str) -> usize {
    let (mut lo, mut hi) = (0, t.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if t.key(mid) < target {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

fn find<T: KeyTable + ?Sized>(t: &T, key: &str) -> Option<usize> {
    let i = lower_bound(t, key);
    (i < t.len() && t.key(i) == key).then_some(i)
}

/// The keys holding the values at `path`.
fn values_of<T: KeyTable + ?Sized>(t: &T, path: &str) -> Range<usize> {
    lower_bound(t, &format!("{path}{VALUE}"))..lower_bound(t, &format!("{path}{EXISTS}"))
}

/// The documents where `f` holds.
pub fn eval<T: KeyTable>(f: &JsonFilter, t: &T) -> crate::Result<T::Set> {
    Ok(match f {
        JsonFilter::And(v) => {
            let mut acc = t.all();
            for p in v {
                if t.is_none(&acc) {
                    break;
                }
                let s = eval(p, t)?;
                t.intersect(&mut acc, s);
            }
            acc
        }
        JsonFilter::Or(v) => {
            let mut acc = t.none();
            for p in v {
                let s = eval(p, t)?;
                t.union(&mut acc, s);
            }
            acc
        }
        JsonFilter::Not(p) => {
            let s = eval(p, t)?;
            t.complement(s)
        }
        JsonFilter::Exists { path, negated } => {
            let key = format!("{}{EXISTS}", path.canonical());
            let s = match find(t, &key) {
                Some(i) => t.docs(i)?,
                None => t.none(),
            };
            match negated {
                true => t.complement(s),
                false => s,
            }
        }
        JsonFilter::Value { path, test } => {
            let mut acc = t.none();
            let path = path.canonical();
            match test.exact() {
                Some(texts) => {
                    for text in texts {
                        if let Some(i) = find(t, &format!("{path}{VALUE}{text}")) {
                            let s = t.docs(i)?;
                            t.union(&mut acc, s);
                        }
                    }
                }
                None => {
                    let skip = path.len() + VALUE.len_utf8();
                    for i in values_of(t, path) {
                        if test.passes(&t.key(i)[skip..]) {
                            let s = t.docs(i)?;
                            t.union(&mut acc, s);
                        }
                    }
                }
            }
            acc
        }
    })
}

/// Sorted, distinct keys.
pub trait SortedKeys {
    fn count(&self) -> usize;
    fn key_at(&self, i: usize) -> &str;
}

impl SortedKeys for Vec<String> {
    fn count(&self) -> usize {
        self.len()
    }
    fn key_at(&self, i: usize) -> &str {
        &self[i]
    }
}

/// Keys whose sets are booleans: one document's keys (a key is TRUE where present), or
/// (`presence`) a table asked whether any document may match — a complement then may match
/// anything.
pub struct Truth<'a> {
    pub keys: &'a dyn SortedKeys,
    pub presence: bool,
}

impl KeyTable for Truth<'_> {
    type Set = bool;
    fn len(&self) -> usize {
        self.keys.count()
    }
    fn key(&self, i: usize) -> &str {
        self.keys.key_at(i)
    }
    fn docs(&self, _: usize) -> crate::Result<bool> {
        Ok(true)
    }
    fn none(&self) -> bool {
        false
    }
    fn all(&self) -> bool {
        true
    }
    fn union(&self, a: &mut bool, b: bool) {
        *a |= b
    }
    fn intersect(&self, a: &mut bool, b: bool) {
        *a &= b
    }
    fn complement(&self, b: bool) -> bool {
        self.presence || !b
    }
    fn is_none(&self, s: &bool) -> bool {
        !*s
    }
}

impl JsonFilter {
    /// Parses a filter; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<JsonFilter, String> {
        if text.len() > MAX_FILTER_BYTES {
            return Err(format!(
                "the filter is {} bytes, more than the {MAX_FILTER_BYTES} allowed",
                text.len()
            ));
        }
        let tokens = lex(text)?;
        let mut p = Parser { tokens, at: 0 };
        let f = p.or(0)?;
        match p.peek() {
            None => Ok(f),
            Some(t) => Err(format!("unexpected {t} after a complete filter")),
        }
    }

    /// Whether one document's text matches: the keys of the nodes at the paths the filter
    /// names (those are all `eval` looks at) are found in the text directly, and the same
    /// evaluation as the index's runs over them.
    pub fn matches_str(&self, doc: &str) -> bool {
        let mut paths = Vec::new();
        self.paths(&mut paths);
        let mut keys = Vec::new();
        let mut nodes = Vec::new();
        for p in paths {
            nodes.clear();
            super::path::nodes_at(doc, p.steps(), &mut nodes);
            for node in nodes.iter().filter(|n| !n.is_null()) {
                keys.push(format!("{}{EXISTS}", p.canonical()));
                if let Some(t) = super::path::scalar_text(node) {
                    keys.push(format!("{}{VALUE}{t}", p.canonical()));
                }
            }
        }
        keys.sort_unstable();
        keys.dedup();
        let doc = Truth {
            keys: &keys,
            presence: false,
        };
        eval(self, &doc).unwrap_or(false)
    }

    fn paths<'a>(&'a self, out: &mut Vec<&'a JsonPath>) {
        match self {
            JsonFilter::And(v) | JsonFilter::Or(v) => v.iter().for_each(|f| f.paths(out)),
            JsonFilter::Not(f) => f.paths(out),
            JsonFilter::Exists { path, .. } | JsonFilter::Value { path, .. } => out.push(path),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Path(String),
    Str(String),
    Num(String),
    Punct(&'static str),
}

impl std::fmt::Display for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tok::Word(w) => write!(f, "`{w}`"),
            Tok::Path(p) => write!(f, "path {p:?}"),
            Tok::Str(s) => write!(f, "string '{s}'"),
            Tok::Num(n) => write!(f, "number {n}"),
            Tok::Punct(p) => write!(f, "`{p}`"),
        }
    }
}

fn lex(text: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        // Quoted: '' inside a string and "" inside a path stand for the quote.
        if c == b'\'' || c == b'"' {
            let mut s = String::new();
            let mut j = i + 1;
            loop {
                let Some(rel) = text[j..].find(c as char) else {
                    return Err(format!("unterminated {} at byte {i}", c as char));
                };
                s.push_str(&text[j..j + rel]);
                j += rel + 1;
                if b.get(j) == Some(&c) {
                    s.push(c as char);
                    j += 1;
                } else {
                    break;
                }
            }
            out.push(match c {
                b'\'' => Tok::Str(s),
                _ => Tok::Path(s),
            });
            i = j;
            continue;
        }
        if let Some(p) = ["<=", ">=", "!=", "<>", "=", "<", ">", "(", ")", ","]
            .into_iter()
            .find(|p| text[i..].starts_with(p))
        {
            out.push(Tok::Punct(if p == "<>" { "!=" } else { p }));
            i += p.len();
            continue;
        }
        // A word, a bare path or a number: up to a space, an operator or a quote.
        let end = text[i..]
            .find(|ch: char| ch.is_whitespace() || "=!<>(),'\"".contains(ch))
            .map_or(text.len(), |e| i + e);
        let w = &text[i..end];
        let first = text[i..].chars().next().unwrap_or(' ');
        out.push(match first {
            _ if end == i => return Err(format!("unexpected {first:?} at byte {i}")),
            '$' => Tok::Path(w.to_string()),
            '0'..='9' | '-' | '+' | '.' => Tok::Num(w.to_string()),
            c if c.is_alphabetic() || c == '_' => Tok::Word(w.to_string()),
            _ => return Err(format!("unexpected {first:?} at byte {i}")),
        });
        i = end;
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Tok>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Result<Tok, String> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t.ok_or_else(|| "the filter ends too early".to_string())
    }

    fn keyword(&mut self, k: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(k)) {
            self.at += 1;
            return true;
        }
        false
    }

    fn expect(&mut self, p: &str) -> Result<(), String> {
        match self.next()? {
            Tok::Punct(q) if q == p => Ok(()),
            t => Err(format!("expected `{p}`, found {t}")),
        }
    }

    fn or(&mut self, depth: usize) -> Result<JsonFilter, String> {
        let mut v = vec![self.and(depth)?];
        while self.keyword("OR") {
            v.push(self.and(depth)?);
        }
        Ok(if v.len() == 1 {
            v.remove(0)
        } else {
            JsonFilter::Or(v)
        })
    }

    fn and(&mut self, depth: usize) -> Result<JsonFilter, String> {
        let mut v = vec![self.unary(depth)?];
        while self.keyword("AND") {
            v.push(self.unary(depth)?);
        }
        Ok(if v.len() == 1 {
            v.remove(0)
        } else {
            JsonFilter::And(v)
        })
    }

    fn unary(&mut self, depth: usize) -> Result<JsonFilter, String> {
        if depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        if self.keyword("NOT") {
            return Ok(JsonFilter::Not(Box::new(self.unary(depth + 1)?)));
        }
        if self.peek() == Some(&Tok::Punct("(")) {
            self.at += 1;
            let f = self.or(depth + 1)?;
            self.expect(")")?;
            return Ok(f);
        }
        if self.keyword("REGEXP_LIKE") {
            self.expect("(")?;
            let path = self.path()?;
            self.expect(",")?;
            let Tok::Str(re) = self.next()? else {
                return Err("REGEXP_LIKE's pattern must be a quoted string".to_string());
            };
            self.expect(")")?;
            let re = regex::RegexBuilder::new(&re)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| format!("regular expression {re:?}: {e}"))?;
            return Ok(JsonFilter::Value {
                path,
                test: Test::Regex(re),
            });
        }
        let path = self.path()?;
        if self.keyword("IS") {
            let negated = !self.keyword("NOT");
            if !self.keyword("NULL") {
                return Err("expected NULL after IS".to_string());
            }
            return Ok(JsonFilter::Exists { path, negated });
        }
        let negated = self.keyword("NOT");
        if self.keyword("IN") {
            self.expect("(")?;
            let mut values = vec![self.literal()?];
            while self.peek() == Some(&Tok::Punct(",")) {
                self.at += 1;
                values.push(self.literal()?);
            }
            self.expect(")")?;
            return Ok(JsonFilter::Value {
                path,
                test: Test::In { values, negated },
            });
        }
        if negated {
            return Err("expected IN after NOT".to_string());
        }
        let op = match self.next()? {
            Tok::Punct("=") => CmpOp::Eq,
            Tok::Punct("!=") => CmpOp::NotEq,
            Tok::Punct("<") => CmpOp::Lt,
            Tok::Punct("<=") => CmpOp::LtEq,
            Tok::Punct(">") => CmpOp::Gt,
            Tok::Punct(">=") => CmpOp::GtEq,
            t => return Err(format!("expected a comparison after the path, found {t}")),
        };
        let lit = self.literal()?;
        Ok(JsonFilter::Value {
            path,
            test: Test::Compare(op, lit),
        })
    }

    fn path(&mut self) -> Result<JsonPath, String> {
        match self.next()? {
            Tok::Path(p) => JsonPath::parse(&p),
            t => Err(format!("expected a path such as \"$.a.b\", found {t}")),
        }
    }

    fn literal(&mut self) -> Result<Literal, String> {
        match self.next()? {
            Tok::Str(s) => Ok(Literal::Str(s)),
            Tok::Num(n) => Literal::number(&n),
            Tok::Word(w) if w.eq_ignore_ascii_case("true") || w.eq_ignore_ascii_case("false") => {
                Ok(Literal::Str(w.to_ascii_lowercase()))
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("null") => {
                Err("compare with NULL through IS NULL or IS NOT NULL".to_string())
            }
            t => Err(format!(
                "expected a literal ('text', a number, true or false), found {t}"
            )),
        }
    }
}
