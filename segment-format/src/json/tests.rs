//! JSON index tests: `JSON_MATCH` from the index and from each value's text equals a
//! reference that walks the parsed JSON (no flattening) for random documents and filters,
//! negations included; filter and path syntax and their errors; documents too large to
//! flatten; damaged index bytes are errors, never panics.

use proptest::prelude::*;
use serde_json::{json, Value as Json};

use super::filter::{Literal, Test};
use super::path::Step;
use super::{JsonFilter, JsonIndex, JsonPath, JsonSearch};
use crate::predicate::{evaluate, may_match, CmpOp, Predicate};
use crate::reader::SegmentReader;
use crate::types::{ColumnDef, ColumnType, IndexKind};

const KEYS: &[&str] = &["a", "b", "n", "arr", "odd key"];
const WORDS: &[&str] = &["red", "green", "Blue", "x", "5a", "", "ümlaut", "it's"];
const PATHS: &[&str] = &[
    "$",
    "$.a",
    "$.b",
    "$.n",
    "$.a.b",
    "$.a.n",
    "$.arr",
    "$.arr[0]",
    "$.arr[1]",
    "$.arr[*]",
    "$.arr[*].a",
    "$.arr[0].n",
    "$['odd key']",
    "$[\"odd key\"].n",
    "$.arr[*][*]",
    "$.a.arr[*]",
    "$.missing",
];

// ---- the reference: walks the document itself ----

fn nodes<'a>(v: &'a Json, steps: &[Step], out: &mut Vec<&'a Json>) {
    let Some((step, rest)) = steps.split_first() else {
        out.push(v);
        return;
    };
    match (step, v) {
        (Step::Key(k), Json::Object(m)) => {
            if let Some(c) = m.get(k) {
                nodes(c, rest, out)
            }
        }
        (Step::Index(i), Json::Array(a)) => {
            if let Some(c) = a.get(*i) {
                nodes(c, rest, out)
            }
        }
        (Step::Any, Json::Array(a)) => a.iter().for_each(|c| nodes(c, rest, out)),
        _ => {}
    }
}

fn compare<T: PartialOrd + ?Sized>(op: CmpOp, a: &T, b: &T) -> bool {
    match op {
        CmpOp::Eq => a == b,
        CmpOp::NotEq => a != b,
        CmpOp::Lt => a < b,
        CmpOp::LtEq => a <= b,
        CmpOp::Gt => a > b,
        CmpOp::GtEq => a >= b,
    }
}

/// Generated strings never read as numbers, so a number literal compares with numbers only
/// (and is unequal to every string and boolean).
fn reference_test(test: &Test, node: &Json) -> bool {
    let text = match node {
        Json::String(s) => s.clone(),
        Json::Number(n) => n.to_string(),
        Json::Bool(b) => b.to_string(),
        _ => return false,
    };
    let eq = |lit: &Literal| match (lit, node) {
        (Literal::Num(x, _), Json::Number(n)) => n.as_f64() == Some(*x),
        (Literal::Num(..), _) => false,
        (Literal::Str(s), _) => *s == text,
    };
    match test {
        Test::Compare(op, Literal::Num(x, _)) => match node {
            Json::Number(n) => compare(*op, &n.as_f64().unwrap(), x),
            _ => *op == CmpOp::NotEq,
        },
        Test::Compare(op, Literal::Str(s)) => compare(*op, text.as_str(), s.as_str()),
        Test::In { values, negated } => values.iter().any(eq) != *negated,
        Test::Regex(re) => re.is_match(&text),
    }
}

fn reference(f: &JsonFilter, doc: Option<&Json>) -> bool {
    let at = |p: &JsonPath| {
        let mut out = Vec::new();
        if let Some(d) = doc {
            nodes(d, p.steps(), &mut out);
        }
        out.retain(|n| !n.is_null());
        out
    };
    match f {
        JsonFilter::And(v) => v.iter().all(|f| reference(f, doc)),
        JsonFilter::Or(v) => v.iter().any(|f| reference(f, doc)),
        JsonFilter::Not(f) => !reference(f, doc),
        JsonFilter::Exists { path, negated } => at(path).is_empty() == *negated,
        JsonFilter::Value { path, test } => at(path).iter().any(|n| reference_test(test, n)),
    }
}

// ---- generators ----

fn scalar() -> impl Strategy<Value = Json> {
    prop_oneof![
        prop::sample::select(WORDS).prop_map(|w| json!(w)),
        (-6i64..6).prop_map(|i| json!(i)),
        (-12i64..12).prop_map(|i| json!(i as f64 / 2.0)),
        any::<bool>().prop_map(|b| json!(b)),
        Just(Json::Null),
    ]
}

fn value() -> impl Strategy<Value = Json> {
    scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec((prop::sample::select(KEYS), inner.clone()), 0..4).prop_map(
                |kv| Json::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            ),
            prop::collection::vec(inner, 0..4).prop_map(Json::Array),
        ]
    })
}

/// A value's text: mostly JSON objects, sometimes another root, text that is not JSON, or NULL.
fn doc_text() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        6 => value().prop_map(|v| match v {
            Json::Object(_) => Some(v.to_string()),
            other => Some(json!({ "a": other.clone(), "arr": [other] }).to_string()),
        }),
        1 => value().prop_map(|v| Some(v.to_string())),
        1 => prop::sample::select(&["{", "hello", "", "[1,", "nul"][..]).prop_map(|s| Some(s.to_string())),
        1 => Just(None),
    ]
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn literal() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(WORDS).prop_map(quote),
        (-6i64..6).prop_map(|i| i.to_string()),
        (-12i64..12).prop_map(|i| format!("{}", i as f64 / 2.0)),
        prop::sample::select(&["true", "false", "'true'"][..]).prop_map(String::from),
    ]
}

fn leaf() -> impl Strategy<Value = String> {
    let path = prop::sample::select(PATHS).prop_map(|p| format!("\"{}\"", p.replace('"', "\"\"")));
    let op = prop::sample::select(&["=", "!=", "<>", "<", "<=", ">", ">="][..]);
    prop_oneof![
        4 => (path.clone(), op, literal()).prop_map(|(p, o, l)| format!("{p} {o} {l}")),
        2 => (path.clone(), any::<bool>(), prop::collection::vec(literal(), 1..4)).prop_map(
            |(p, neg, ls)| format!("{p} {}IN ({})", if neg { "NOT " } else { "" }, ls.join(", "))
        ),
        2 => (path.clone(), any::<bool>())
            .prop_map(|(p, neg)| format!("{p} IS {}NULL", if neg { "NOT " } else { "" })),
        1 => (path, prop::sample::select(&["^r", "e", "^$", "[0-9]", "(?i)blue"][..]))
            .prop_map(|(p, re)| format!("REGEXP_LIKE({p}, {})", quote(re))),
    ]
}

fn filter() -> impl Strategy<Value = String> {
    leaf().prop_recursive(2, 6, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) AND ({b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} OR {b}")),
            inner.prop_map(|a| format!("NOT ({a})")),
        ]
    })
}

fn segment(values: &[Option<String>], raw_strings: bool) -> SegmentReader {
    crate::tests::same_strings_twice(
        ColumnDef::new("j", ColumnType::Json).with_index(IndexKind::Json),
        ColumnDef::new("plain", ColumnType::Json),
        values,
        raw_strings,
    )
}

fn json_match(column: &str, f: &str) -> Predicate {
    Predicate::JsonMatch {
        column: column.into(),
        search: JsonSearch::parse(f).unwrap_or_else(|e| panic!("{f}: {e}")),
    }
}

fn docs(r: &SegmentReader, p: &Predicate) -> Vec<u32> {
    evaluate(r, p).unwrap().iter().collect()
}

/// Rows (not NULL) where the reference says `want`.
fn expected(values: &[Option<String>], f: &JsonFilter, want: bool) -> Vec<u32> {
    values
        .iter()
        .enumerate()
        .filter(|(_, v)| {
            v.as_deref().is_some_and(|s| {
                let doc = serde_json::from_str::<Json>(s).ok();
                reference(f, doc.as_ref()) == want
            })
        })
        .map(|(i, _)| i as u32)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// The index, the per-value path (raw or dictionary strings) and the reference agree,
    /// and so do their negations under three-valued logic; a pruned segment has no match.
    #[test]
    fn json_match_equals_the_reference(
        values in prop::collection::vec(doc_text(), 0..120),
        filters in prop::collection::vec(filter(), 1..8),
        raw_strings in any::<bool>(),
    ) {
        let r = segment(&values, raw_strings);
        prop_assert!(r.column_meta(0).json.is_some());
        for text in &filters {
            let f = JsonFilter::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let want = expected(&values, &f, true);
            prop_assert_eq!(&docs(&r, &json_match("j", text)), &want, "index: {}", text);
            prop_assert_eq!(&docs(&r, &json_match("plain", text)), &want, "values: {}", text);
            let not_want = expected(&values, &f, false);
            for column in ["j", "plain"] {
                let not = Predicate::Not(Box::new(json_match(column, text)));
                prop_assert_eq!(&docs(&r, &not), &not_want, "NOT on {}: {}", column, text);
            }
            if !may_match(&r, &json_match("j", text)).unwrap() {
                prop_assert!(want.is_empty(), "pruned a segment with matches: {}", text);
            }
        }
    }
}

#[test]
fn paths_parse_to_canonical_spellings() {
    for (text, canonical) in [
        ("$", "$"),
        ("$.a.b", "$.a.b"),
        ("$['a'].b", "$.a.b"),
        ("$[\"a\"][0]", "$.a[0]"),
        ("$.a-b", "$[\"a-b\"]"),
        ("$['x.y']", "$[\"x.y\"]"),
        ("$['it\\'s']", "$[\"it's\"]"),
        ("$.arr[*].k", "$.arr[*].k"),
        ("$.ünï", "$[\"ünï\"]"),
    ] {
        let p = JsonPath::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(p.canonical(), canonical, "{text}");
    }
    for (text, why) in [
        ("a.b", "starts with `$`"),
        ("$.", "followed by a key"),
        ("$.a.*", "not supported"),
        ("$[", "holds"),
        ("$[1", "end with `]`"),
        ("$['a]", "end with its quote"),
        ("$a", "unexpected"),
    ] {
        match JsonPath::parse(text) {
            Ok(p) => panic!("{text:?} parsed as {p:?}"),
            Err(e) => assert!(e.contains(why), "{text:?}: {e}"),
        }
    }
}

#[test]
fn filter_syntax() {
    let ok = [
        "\"$.a\" = 'x'",
        "$.a = 'x'",
        "\"$.a.b\" = 'it''s'",
        "\"$.n\" >= -2.5 AND \"$.n\" < 1e3",
        "\"$.a\" <> 'x'",
        "\"$.a\" NOT IN ('x', 'y', 3)",
        "\"$.a\" is not null or NOT (\"$.b\" IS NULL)",
        "REGEXP_LIKE(\"$.a\", '^x.*')",
        "\"$.flag\" = true",
        "((\"$.a\" = 'x'))",
    ];
    for f in ok {
        JsonFilter::parse(f).unwrap_or_else(|e| panic!("{f}: {e}"));
    }
    let bad = [
        ("", "ends too early"),
        ("\"$.a\"", "ends too early"),
        ("\"$.a\" = NULL", "IS NULL"),
        ("\"$.a\" = 'x' extra", "after a complete filter"),
        ("'$.a' = 'x'", "expected a path"),
        ("\"a.b\" = 'x'", "starts with `$`"),
        ("\"$.a\" == 'x'", "expected a literal"),
        ("\"$.a\" = 'x", "unterminated"),
        ("\"$.a\" NOT = 'x'", "expected IN"),
        ("\"$.a\" = 1x", "not a number"),
        ("REGEXP_LIKE(\"$.a\", '(')", "regular expression"),
        ("\"$.a\" = 'x' # y", "unexpected"),
    ];
    for (f, why) in bad {
        match JsonFilter::parse(f) {
            Ok(p) => panic!("{f:?} parsed as {p:?}"),
            Err(e) => assert!(e.contains(why), "{f:?}: {e}"),
        }
    }
    let deep = format!("{}\"$.a\" = 1{}", "(".repeat(100), ")".repeat(100));
    assert!(JsonFilter::parse(&deep)
        .unwrap_err()
        .contains("nested deeper"));
    let long = format!(
        "\"$.a\" IN ({})",
        vec!["1"; super::filter::MAX_FILTER_BYTES].join(",")
    );
    assert!(JsonFilter::parse(&long).unwrap_err().contains("more than"));
}

#[test]
fn numbers_match_however_they_are_written() {
    let values: Vec<Option<String>> = [
        r#"{"n": 5}"#,
        r#"{"n": 5.0}"#,
        r#"{"n": 5e0}"#,
        r#"{"n": "5"}"#,
        r#"{"n": 5.5}"#,
        r#"{"n": -5}"#,
    ]
    .iter()
    .map(|s| Some(s.to_string()))
    .collect();
    let r = segment(&values, false);
    for column in ["j", "plain"] {
        assert_eq!(docs(&r, &json_match(column, "\"$.n\" = 5")), [0, 1, 2, 3]);
        assert_eq!(docs(&r, &json_match(column, "\"$.n\" = '5'")), [0, 3]);
        assert_eq!(
            docs(&r, &json_match(column, "\"$.n\" > 4.9")),
            [0, 1, 2, 3, 4]
        );
        assert_eq!(
            docs(&r, &json_match(column, "\"$.n\" IN (-5, 5.5)")),
            [4, 5]
        );
    }
}

#[test]
fn a_repeated_member_counts_each_time() {
    let values = vec![Some(r#"{"a": 1, "a": {"b": 2}}"#.to_string())];
    let r = segment(&values, false);
    for column in ["j", "plain"] {
        for f in ["\"$.a\" = 1", "\"$.a.b\" = 2", "\"$.a\" IS NOT NULL"] {
            assert_eq!(docs(&r, &json_match(column, f)), [0], "{column}: {f}");
        }
    }
}

#[test]
fn documents_too_large_to_flatten_are_tested_from_their_text() {
    let big = json!({ "a": "big", "arr": (0..40_000).collect::<Vec<i32>>() }).to_string();
    assert!(super::path::flatten(&big).is_none());
    let mut values: Vec<Option<String>> = (0..50)
        .map(|i| {
            Some(json!({ "a": if i % 2 == 0 { "even" } else { "odd" }, "arr": [i] }).to_string())
        })
        .collect();
    values[7] = Some(big.clone());
    values[9] = None;
    let r = segment(&values, false);
    let index = r.json_index(0).unwrap().unwrap();
    assert_eq!(index.unindexed().iter().collect::<Vec<_>>(), [7]);
    for f in [
        "\"$.a\" = 'big'",
        "\"$.arr[*]\" = 39999",
        "\"$.arr[0]\" = 0",
        "\"$.arr[*]\" > 45 AND \"$.a\" != 'odd'",
        "NOT (\"$.a\" = 'even')",
        "\"$.b\" IS NULL",
    ] {
        let parsed = JsonFilter::parse(f).unwrap();
        let want = expected(&values, &parsed, true);
        assert_eq!(docs(&r, &json_match("j", f)), want, "{f}");
        assert_eq!(docs(&r, &json_match("plain", f)), want, "{f}");
        assert!(may_match(&r, &json_match("j", f)).unwrap());
    }
}

#[test]
fn absent_keys_prune_the_segment() {
    let values: Vec<Option<String>> = (0..100)
        .map(|i| {
            let country = ["de", "fr", "us"][i % 3];
            Some(json!({ "country": country, "n": i }).to_string())
        })
        .collect();
    let r = segment(&values, false);
    assert!(may_match(&r, &json_match("j", "\"$.country\" = 'fr'")).unwrap());
    assert!(!may_match(&r, &json_match("j", "\"$.country\" = 'jp'")).unwrap());
    assert!(!may_match(&r, &json_match("j", "\"$.city\" IS NOT NULL")).unwrap());
    assert!(!may_match(
        &r,
        &json_match("j", "\"$.n\" > 1000 AND \"$.country\" = 'de'")
    )
    .unwrap());
    assert!(may_match(&r, &json_match("j", "NOT (\"$.country\" = 'jp')")).unwrap());
    // The plain column has no index, so it is never pruned by one.
    assert!(may_match(&r, &json_match("plain", "\"$.country\" = 'jp'")).unwrap());
}

#[test]
fn damaged_index_bytes_are_errors() {
    let values: Vec<String> = (0..500)
        .map(|i| {
            let s = ["a", "b"][i % 2];
            json!({ "k": i % 13, "s": s, "arr": [i, "x"] }).to_string()
        })
        .collect();
    let section = super::index::build(values.iter().map(|s| Some(s.as_str()))).unwrap();
    let f = JsonFilter::parse("\"$.k\" = 3 OR \"$.arr[*]\" > 490").unwrap();
    let none = crate::RoaringBitmap::new();
    let good = JsonIndex::open(&section, 500).unwrap();
    assert_eq!(
        good.search(&f, &none).unwrap().len(),
        (0..500).filter(|i| i % 13 == 3 || *i > 490).count() as u64
    );
    for cut in (0..section.len()).step_by(31) {
        assert!(
            JsonIndex::open(&section[..cut], 500).is_err(),
            "truncated at {cut}"
        );
    }
    let mut outcomes = (0, 0);
    for at in (0..section.len()).step_by(7) {
        let mut bad = section.clone();
        bad[at] ^= 0x5A;
        match JsonIndex::open(&bad, 500).and_then(|i| i.search(&f, &none)) {
            Ok(_) => outcomes.0 += 1,
            Err(_) => outcomes.1 += 1,
        }
    }
    assert!(outcomes.1 > 0, "some damage is detected: {outcomes:?}");
}
