//! SQL `LIKE` / `ILIKE` with Arrow's kernels. In: a pattern (`%` any run, `_` one character,
//! `\` escapes the next) and string values. Out: which values match.
//!
//! The segment's filters must answer exactly what DataFusion answers over the same rows, so
//! they use the same kernels DataFusion evaluates `LIKE` with (`arrow::compute::like` /
//! `ilike`): the same escapes, the same case folding, and a linear worst case (patterns are
//! compiled to a finite automaton, never matched by backtracking). A dictionary is matched
//! in one vectorized call over its values; raw string blocks one block at a time.

use arrow::array::{Array, BooleanArray, Scalar, StringArray};

use crate::error::{corrupt, Result};

/// A compiled `LIKE` or `ILIKE` pattern.
#[derive(Debug, Clone)]
pub struct Like {
    pattern: String,
    case_insensitive: bool,
    scalar: Scalar<StringArray>,
}

impl PartialEq for Like {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern && self.case_insensitive == other.case_insensitive
    }
}

impl Like {
    pub fn new(pattern: &str, case_insensitive: bool) -> Like {
        Like {
            pattern: pattern.to_string(),
            case_insensitive,
            scalar: StringArray::new_scalar(pattern),
        }
    }

    /// Which of `values` match (null where a value is null).
    pub fn mask(&self, values: &StringArray) -> Result<BooleanArray> {
        let r = if self.case_insensitive {
            arrow::compute::ilike(values, &self.scalar)
        } else {
            arrow::compute::like(values, &self.scalar)
        };
        r.map_err(|e| corrupt(format!("LIKE {:?}: {e}", self.pattern)))
    }

    /// Whether one value matches (tests and references; filters use [`Like::mask`]).
    pub fn matches(&self, s: &str) -> bool {
        self.mask(&StringArray::from(vec![s]))
            .map(|m| m.is_valid(0) && m.value(0))
            .unwrap_or(false)
    }

    /// The literal text every match of a case-sensitive pattern starts with (the characters
    /// before its first `%`, `_` or `\`), if any.
    pub fn literal_prefix(&self) -> Option<&str> {
        if self.case_insensitive {
            return None;
        }
        let end = self
            .pattern
            .find(['%', '_', '\\'])
            .unwrap_or(self.pattern.len());
        (end > 0).then(|| &self.pattern[..end])
    }

    /// `prefix` when the pattern is exactly `prefix%` (case-sensitive, no other wildcard or
    /// escape): its matches are a range of a sorted dictionary.
    pub fn prefix_only(&self) -> Option<&str> {
        let p = self.literal_prefix()?;
        (self.pattern.len() == p.len() + 1 && self.pattern.ends_with('%')).then_some(p)
    }
}

/// Whether `s` matches the pattern, as DataFusion's `LIKE` (or `ILIKE`) says.
pub fn sql_like(pattern: &str, s: &str, case_insensitive: bool) -> bool {
    Like::new(pattern, case_insensitive).matches(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn patterns() {
        assert!(sql_like("abc%", "abcdef", false));
        assert!(!sql_like("abc%", "xabc", false));
        assert!(sql_like("%bc%", "xabcx", false));
        assert!(sql_like("a_c", "abc", false));
        assert!(!sql_like("a_c", "abbc", false));
        assert!(sql_like("%", "", false));
        assert!(sql_like("a\\%", "a%", false));
        assert!(!sql_like("a\\%", "ab", false));
        assert!(sql_like("%a%a", "banana", false));
        assert!(sql_like("ABC%", "abcd", true));
        assert_eq!(Like::new("abc%", false).prefix_only(), Some("abc"));
        assert_eq!(Like::new("ab_c%", false).prefix_only(), None);
        assert_eq!(Like::new("ab_c%", false).literal_prefix(), Some("ab"));
        assert_eq!(Like::new("a\\%b%", false).prefix_only(), None);
        assert_eq!(Like::new("abc%", true).prefix_only(), None);
    }

    #[test]
    fn adversarial_patterns_take_linear_time() {
        // `%a%a%...%b` against a long run of `a`: exponential for a backtracking matcher.
        let pattern = format!("{}b", "%a".repeat(40));
        let value = "a".repeat(100_000);
        let start = std::time::Instant::now();
        assert!(!sql_like(&pattern, &value, false));
        assert!(!sql_like(&pattern, &value, true));
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    proptest! {
        /// The literal prefix and the prefix-range shortcut agree with the kernel.
        #[test]
        fn prefixes_agree_with_the_kernel(
            pattern in "[ab%_\\\\]{0,6}",
            value in "[ab%_\\\\]{0,8}",
        ) {
            let l = Like::new(&pattern, false);
            if let Some(p) = l.literal_prefix() {
                if l.matches(&value) {
                    prop_assert!(value.starts_with(p), "{pattern:?} {value:?}");
                }
            }
            if let Some(p) = l.prefix_only() {
                prop_assert_eq!(l.matches(&value), value.starts_with(p), "{:?} {:?}", pattern, value);
            }
        }
    }
}
