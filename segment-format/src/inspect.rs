//! Where a segment's bytes go. In: a segment's [`Footer`]. Out: per column, the stored bytes
//! of each structure (forward blocks, dictionary, null bitmap, inverted, range and sorted
//! indexes, bloom filter), for `basalt inspect` and size work.

use serde::Serialize;

use crate::layout::{Encoding, Footer, SectionRef};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ColumnBytes {
    pub column: String,
    /// `dictionary` or `raw`.
    pub encoding: &'static str,
    pub cardinality: Option<u32>,
    pub forward: u64,
    pub dictionary: u64,
    pub nulls: u64,
    pub inverted: u64,
    pub range: u64,
    pub sorted: u64,
    pub bloom: u64,
}

impl ColumnBytes {
    pub fn total(&self) -> u64 {
        self.forward
            + self.dictionary
            + self.nulls
            + self.inverted
            + self.range
            + self.sorted
            + self.bloom
    }
}

fn len(s: Option<&SectionRef>) -> u64 {
    s.map_or(0, |s| s.len)
}

/// Stored bytes per column and structure, in schema order.
pub fn column_bytes(footer: &Footer) -> Vec<ColumnBytes> {
    footer
        .columns
        .iter()
        .map(|c| {
            let (encoding, cardinality, dictionary) = match &c.encoding {
                Encoding::Dictionary {
                    cardinality,
                    dictionary,
                    ..
                } => ("dictionary", Some(*cardinality), dictionary.len),
                Encoding::Raw { .. } => ("raw", None, 0),
                Encoding::Packed => ("packed", None, 0),
                Encoding::RawStrings => ("raw_strings", c.stats.distinct.map(|d| d as u32), 0),
                Encoding::MultiValue {
                    cardinality,
                    dictionary,
                    ..
                } => ("multi_value", Some(*cardinality), dictionary.len),
            };
            ColumnBytes {
                column: c.name.clone(),
                encoding,
                cardinality,
                forward: c.blocks.iter().map(|b| b.data.len).sum(),
                dictionary,
                nulls: len(c.nulls.as_ref()),
                inverted: len(c.inverted.as_ref()),
                range: len(c.range.as_ref().map(|r| &r.section)),
                sorted: len(c.sorted_runs.as_ref()),
                bloom: len(c.bloom.as_ref()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::read_footer;

    #[test]
    fn breakdown_covers_every_section_of_the_fixture() {
        let bytes = include_bytes!("../fixtures/v1.seg").to_vec();
        let footer = read_footer(&bytes).unwrap();
        let cols = column_bytes(&footer);
        assert_eq!(cols.len(), footer.columns.len());
        let sum: u64 = cols.iter().map(ColumnBytes::total).sum();
        assert!(
            sum > 0 && sum < bytes.len() as u64,
            "{sum} of {}",
            bytes.len()
        );
        assert!(cols.iter().any(|c| c.inverted > 0));
    }
}
