//! Text index tests: `TEXT_MATCH` from the index and by tokenizing values equals a reference
//! written with regular expressions over the raw text (words are runs of letters and digits,
//! matched case-insensitively) for random texts and queries; query syntax and its errors;
//! damaged index bytes are errors, never panics.

use std::sync::Arc;

use proptest::prelude::*;

use super::{TextIndex, TextQuery, TextSearch};
use crate::predicate::{evaluate, may_match, Predicate};
use crate::reader::SegmentReader;
use crate::types::{ColumnDef, ColumnType, IndexKind};

const VOCAB: &[&str] = &[
    "error", "errors", "timeout", "time", "timer", "disk", "full", "user", "login", "failed", "ok",
    "retry", "a1", "x9z", "écran", "GET", "get",
];
const SEPARATORS: &[&str] = &[" ", ", ", "/", ".", "-", ": ", "_", "  "];

/// A word character, as tokens are made of.
const W: &str = r"[\p{Alphabetic}\p{N}]";
const NW: &str = r"[^\p{Alphabetic}\p{N}]";

/// A query: its text in the query syntax, and the reference regex or combination.
#[derive(Debug, Clone)]
enum Q {
    Leaf {
        text: String,
        reference: Arc<regex::Regex>,
    },
    And(Box<Q>, Box<Q>),
    Or(Box<Q>, Box<Q>),
    AndNot(Box<Q>, Box<Q>),
    Not(Box<Q>),
}

impl Q {
    fn text(&self) -> String {
        match self {
            Q::Leaf { text, .. } => text.clone(),
            Q::And(a, b) => format!("({}) AND ({})", a.text(), b.text()),
            Q::Or(a, b) => format!("({}) OR ({})", a.text(), b.text()),
            Q::AndNot(a, b) => format!("({}) AND NOT ({})", a.text(), b.text()),
            Q::Not(a) => format!("NOT ({})", a.text()),
        }
    }

    fn matches(&self, s: &str) -> bool {
        match self {
            Q::Leaf { reference, .. } => reference.is_match(s),
            Q::And(a, b) => a.matches(s) && b.matches(s),
            Q::Or(a, b) => a.matches(s) || b.matches(s),
            Q::AndNot(a, b) => a.matches(s) && !b.matches(s),
            Q::Not(a) => !a.matches(s),
        }
    }
}

fn word() -> impl Strategy<Value = String> {
    (prop::sample::select(VOCAB), 0..3u8).prop_map(|(w, case)| match case {
        0 => w.to_string(),
        1 => w.to_uppercase(),
        _ => {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect())
                .unwrap_or_default()
        }
    })
}

fn text() -> impl Strategy<Value = String> {
    prop::collection::vec((word(), prop::sample::select(SEPARATORS)), 0..8).prop_map(|parts| {
        let mut s = String::new();
        for (i, (w, sep)) in parts.iter().enumerate() {
            if i > 0 {
                s.push_str(sep);
            }
            s.push_str(w);
        }
        s
    })
}

fn re(pattern: String) -> Arc<regex::Regex> {
    Arc::new(regex::Regex::new(&pattern).unwrap())
}

fn esc(w: &str) -> String {
    regex::escape(&w.to_lowercase())
}

/// Up to `n` characters of `w` from the `skip`th (often not a prefix of `w`: it must then
/// match another word's start, or nothing).
fn fragment(w: &str, skip: usize, n: usize) -> String {
    let skip = skip.min(w.chars().count().saturating_sub(1));
    w.chars().skip(skip).take(n).collect()
}

fn leaf() -> impl Strategy<Value = Q> {
    let term = word().prop_map(|w| Q::Leaf {
        reference: re(format!("(?i)(^|{NW}){}({NW}|$)", esc(&w))),
        text: w,
    });
    let phrase = prop::collection::vec(word(), 2..4).prop_map(|ws| Q::Leaf {
        text: format!("\"{}\"", ws.join(" ")),
        reference: re(format!(
            "(?i)(^|{NW}){}({NW}|$)",
            ws.iter()
                .map(|w| esc(w))
                .collect::<Vec<_>>()
                .join(&format!("{NW}+"))
        )),
    });
    let prefix = (word(), 0..3usize, 1..4usize).prop_map(|(w, skip, n)| {
        let p = fragment(&w, skip, n);
        Q::Leaf {
            text: format!("{p}*"),
            reference: re(format!("(?i)(^|{NW}){}", esc(&p))),
        }
    });
    let wildcard =
        (word(), any::<prop::sample::Index>(), any::<bool>()).prop_map(|(w, at, star)| {
            let chars: Vec<char> = w.chars().collect();
            let at = at.index(chars.len());
            let (mut text, mut reference) = (String::new(), format!("(?i)(^|{NW})"));
            for (i, c) in chars.iter().enumerate() {
                if i == at {
                    text.push('?');
                    reference.push_str(W);
                } else {
                    text.push(*c);
                    reference.push_str(&esc(&c.to_string()));
                }
            }
            if star {
                text.push('*');
                reference.push_str(&format!("{W}*"));
            }
            reference.push_str(&format!("({NW}|$)"));
            Q::Leaf {
                text,
                reference: re(reference),
            }
        });
    let phrase_prefix = (word(), word(), 0..3usize, 1..4usize).prop_map(|(a, b, skip, n)| {
        let p = fragment(&b, skip, n);
        Q::Leaf {
            text: format!("\"{a} {p}\"*"),
            reference: re(format!("(?i)(^|{NW}){}{NW}+{}", esc(&a), esc(&p))),
        }
    });
    prop_oneof![3 => term, 2 => phrase, 2 => prefix, 2 => wildcard, 1 => phrase_prefix]
}

fn query() -> impl Strategy<Value = Q> {
    leaf().prop_recursive(2, 6, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Q::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Q::Or(Box::new(a), Box::new(b))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Q::AndNot(Box::new(a), Box::new(b))),
            inner.prop_map(|a| Q::Not(Box::new(a))),
        ]
    })
}

fn segment(values: &[Option<String>], raw_strings: bool) -> SegmentReader {
    crate::tests::same_strings_twice(
        ColumnDef::new("m", ColumnType::String).with_index(IndexKind::Text),
        ColumnDef::new("plain", ColumnType::String),
        values,
        raw_strings,
    )
}

fn text_match(column: &str, q: &str) -> Predicate {
    Predicate::TextMatch {
        column: column.into(),
        search: TextSearch::parse(q).unwrap_or_else(|e| panic!("{q}: {e}")),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The index, the tokenizing path (raw or dictionary strings) and the reference agree,
    /// and so do their negations under three-valued logic; a segment pruned by the term
    /// dictionary has no match.
    #[test]
    fn text_match_equals_the_reference(
        pool in prop::collection::vec(text(), 1..40),
        picks in prop::collection::vec((any::<prop::sample::Index>(), 0..10u8), 0..200),
        queries in prop::collection::vec(query(), 1..8),
        raw_strings in any::<bool>(),
    ) {
        let values: Vec<Option<String>> = picks
            .iter()
            .map(|(i, n)| (*n != 0).then(|| pool[i.index(pool.len())].clone()))
            .collect();
        let r = segment(&values, raw_strings);
        prop_assert!(r.column_meta(0).text.is_some());
        for q in &queries {
            let text = q.text();
            let want: Vec<u32> = values
                .iter()
                .enumerate()
                .filter(|(_, v)| v.as_deref().is_some_and(|s| q.matches(s)))
                .map(|(i, _)| i as u32)
                .collect();
            let indexed: Vec<u32> = evaluate(&r, &text_match("m", &text)).unwrap().iter().collect();
            let plain: Vec<u32> = evaluate(&r, &text_match("plain", &text)).unwrap().iter().collect();
            prop_assert_eq!(&indexed, &want, "index, query {}", text);
            prop_assert_eq!(&plain, &want, "tokenized, query {}", text);
            let not_want: Vec<u32> = values
                .iter()
                .enumerate()
                .filter(|(_, v)| v.as_deref().is_some_and(|s| !q.matches(s)))
                .map(|(i, _)| i as u32)
                .collect();
            for column in ["m", "plain"] {
                let not = Predicate::Not(Box::new(text_match(column, &text)));
                let got: Vec<u32> = evaluate(&r, &not).unwrap().iter().collect();
                prop_assert_eq!(&got, &not_want, "NOT on {}, query {}", column, text);
            }
            if !may_match(&r, &text_match("m", &text)).unwrap() {
                prop_assert!(want.is_empty(), "pruned a segment with matches: {}", text);
            }
        }
    }
}

#[test]
fn query_syntax() {
    let ok = [
        "error",
        "error timeout",
        "error AND timeout",
        "+error -timeout",
        "error OR (disk AND NOT full)",
        "\"disk full\"",
        "'disk full'",
        "\"disk fu\"*",
        "tim*",
        "t?me*",
        "*out",
        "/ti.*r/",
        "IN [error disk]",
        "NOT error",
        "error^2",
    ];
    for q in ok {
        TextQuery::parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
    }
    let bad = [
        ("", "empty"),
        ("   ", "empty"),
        ("title:error", "field names"),
        ("\"disk full\"~2", "slop"),
        ("[a TO b]", "range"),
        ("(error", "syntax error"),
        ("!!!", "no searchable word"),
        ("a-b*", "wildcard term"),
        ("/(/", "regular expression"),
    ];
    for (q, why) in bad {
        match TextQuery::parse(q) {
            Ok(p) => panic!("{q:?} parsed as {p:?}"),
            Err(e) => assert!(e.contains(why), "{q:?}: {e}"),
        }
    }
    let long = "a ".repeat(super::query::MAX_QUERY_BYTES);
    assert!(TextQuery::parse(&long).unwrap_err().contains("more than"));
}

#[test]
fn pure_negation_matches_values_without_the_word_and_never_nulls() {
    let values = vec![
        Some("disk full".to_string()),
        None,
        Some("all good".to_string()),
        Some(String::new()),
    ];
    let r = segment(&values, false);
    for column in ["m", "plain"] {
        let got: Vec<u32> = evaluate(&r, &text_match(column, "NOT disk"))
            .unwrap()
            .iter()
            .collect();
        assert_eq!(got, vec![2, 3], "{column}");
    }
}

#[test]
fn an_empty_segment_has_an_empty_index() {
    let r = segment(&[], false);
    assert!(evaluate(&r, &text_match("m", "error")).unwrap().is_empty());
    assert!(!may_match(&r, &text_match("m", "error")).unwrap());
}

#[test]
fn damaged_index_bytes_are_errors() {
    let values: Vec<Option<&str>> = (0..500)
        .map(|i| (i % 7 != 0).then_some(["disk full error", "login ok", "timeout retry"][i % 3]))
        .collect();
    let section = super::index::build(values.iter().copied()).unwrap();
    let good = TextIndex::open(&section, 500).unwrap();
    let q = TextQuery::parse("disk OR login").unwrap();
    assert_eq!(
        good.search(&q).unwrap().len(),
        (0..500).filter(|i| i % 7 != 0 && i % 3 != 2).count() as u64
    );
    assert!(
        TextIndex::open(&section, 499).is_err(),
        "row count is checked"
    );
    // Silence the panic messages tantivy's own checks print for the flipped bytes below.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut outcomes = (0, 0);
    for cut in (0..section.len()).step_by(97) {
        assert!(
            TextIndex::open(&section[..cut], 500).is_err(),
            "truncated at {cut}"
        );
    }
    for at in (0..section.len()).step_by(53) {
        let mut bad = section.clone();
        bad[at] ^= 0x5A;
        match TextIndex::open(&bad, 500).and_then(|i| i.search(&q)) {
            Ok(_) => outcomes.0 += 1,
            Err(_) => outcomes.1 += 1,
        }
    }
    std::panic::set_hook(hook);
    assert!(outcomes.1 > 0, "some damage is detected: {outcomes:?}");
}

/// The same values build the same segment bytes, text index included (tantivy draws a random
/// segment id per build; the section holds a fixed one), and the index still answers.
#[test]
fn the_same_values_build_the_same_bytes() {
    let values: Vec<Option<String>> = (0..300)
        .map(|i| (i % 7 != 0).then(|| format!("error {} in module m{}", i % 13, i % 5)))
        .collect();
    let build = || {
        let strs = values.iter().map(|v| v.as_deref());
        super::index::build(strs).unwrap()
    };
    assert!(
        build() == build(),
        "two builds of one column's index differ"
    );
    let r = segment(&values, false);
    let docs = evaluate(&r, &text_match("m", "\"module m3\" AND error")).unwrap();
    let want = (0..300).filter(|i| i % 7 != 0 && i % 5 == 3).count() as u64;
    assert_eq!(docs.len(), want);
}
