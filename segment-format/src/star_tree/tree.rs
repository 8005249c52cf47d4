//! A decoded star-tree and the records a query reads from it. In: the section's bytes
//! (bounds-checked: a corrupt tree is an error, never a panic or a loop) and, per query, how
//! each dimension is used. Out: record indexes, and the records' dimension values and
//! metrics.

use crate::error::{Result, SegmentError};

use super::build::Node;
use super::filter::DimFilter;
use super::{StarMetric, StarTreeDef, SKETCH_REGISTERS, STAR_ID};

/// Records' values of one metric, in the definition's order.
#[derive(Debug)]
pub enum MetricValues {
    /// `count(*)`: the records' `count`.
    Count,
    /// Per record: how many non-null values were aggregated, and the aggregate (0 when none).
    Int {
        nonnull: Vec<u64>,
        values: Vec<i64>,
    },
    Float {
        nonnull: Vec<u64>,
        values: Vec<f64>,
    },
    /// Record `r`'s registers are `registers[offsets[r]..offsets[r + 1]]` with their ranks.
    Sketch {
        offsets: Vec<u32>,
        registers: Vec<u16>,
        ranks: Vec<u8>,
    },
}

/// How a query uses one dimension: grouped on, filtered, or both. A dimension it does not
/// use at all has no `DimUse`.
#[derive(Debug, Clone, Default)]
pub struct DimUse {
    pub grouped: bool,
    pub filter: Option<DimFilter>,
}

#[derive(Debug)]
pub struct StarTree {
    pub def: StarTreeDef,
    nodes: Vec<Node>,
    /// Per dimension, per record.
    dims: Vec<Vec<u32>>,
    pub count: Vec<u64>,
    pub metrics: Vec<MetricValues>,
}

fn corrupt(m: impl Into<String>) -> SegmentError {
    SegmentError::Corrupt(format!("star-tree: {}", m.into()))
}

/// Reads fixed-width little-endian values off the front of a byte slice.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.rest.len() < n {
            return Err(corrupt(format!("section ends inside its {what}")));
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Ok(a)
    }

    fn u32s(&mut self, n: usize, what: &str) -> Result<Vec<u32>> {
        let bytes = self.take(n.checked_mul(4).ok_or_else(|| corrupt(what))?, what)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    }

    fn u64s(&mut self, n: usize, what: &str) -> Result<Vec<u64>> {
        let bytes = self.take(n.checked_mul(8).ok_or_else(|| corrupt(what))?, what)?;
        Ok(bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect())
    }
}

impl StarTree {
    /// Decodes a tree of `def`; `float[m]` says metric `m` aggregates a float column.
    pub fn decode(def: &StarTreeDef, float: &[bool], raw: &[u8]) -> Result<StarTree> {
        let mut c = Cursor { rest: raw };
        let head = c.u32s(4, "header")?;
        let (d, m, n_nodes, n) = (
            head[0] as usize,
            head[1] as usize,
            head[2] as usize,
            head[3] as usize,
        );
        if d != def.dimensions.len() || m != def.metrics.len() || float.len() != m {
            return Err(corrupt("dimensions or metrics differ from its definition"));
        }
        // Every node takes 20 bytes and every record at least 8: sizes a section cannot hold
        // are refused before anything is allocated for them.
        if n_nodes == 0 || n_nodes.saturating_mul(20) > raw.len() || n.saturating_mul(8) > raw.len()
        {
            return Err(corrupt("node or record count larger than the section"));
        }
        let flat = c.u32s(n_nodes * 5, "nodes")?;
        let nodes: Vec<Node> = flat
            .chunks_exact(5)
            .map(|x| Node {
                value: x[0],
                start: x[1],
                end: x[2],
                first_child: x[3],
                children: x[4],
            })
            .collect();
        // Each node but the root is the child of exactly one node before it: a query visits
        // every node at most once.
        let mut parents = vec![0u8; n_nodes];
        for (i, node) in nodes.iter().enumerate() {
            let children_end = node.first_child as u64 + node.children as u64;
            if node.start > node.end
                || node.end as usize > n
                || (node.children > 0
                    && (node.first_child as usize <= i || children_end > n_nodes as u64))
            {
                return Err(corrupt(format!("node {i} points outside the tree")));
            }
            // Checked above to lie within the nodes when there are children.
            let children = match node.children {
                0 => 0..0,
                _ => node.first_child as usize..children_end as usize,
            };
            for p in &mut parents[children] {
                *p = p.saturating_add(1);
            }
        }
        if parents[0] != 0 || parents[1..].iter().any(|&p| p != 1) {
            return Err(corrupt("a node has no parent or several"));
        }
        let mut dims = Vec::with_capacity(d);
        for _ in 0..d {
            dims.push(c.u32s(n, "dimension values")?);
        }
        let count = c.u64s(n, "counts")?;
        let mut metrics = Vec::with_capacity(m);
        for (metric, &is_float) in def.metrics.iter().zip(float) {
            metrics.push(match metric {
                StarMetric::Count => MetricValues::Count,
                StarMetric::ApproxDistinct(_) => {
                    let offsets = c.u32s(n + 1, "sketch offsets")?;
                    let total = *offsets.last().expect("n + 1 >= 1") as usize;
                    if offsets[0] != 0 || offsets.windows(2).any(|w| w[0] > w[1]) {
                        return Err(corrupt("sketch offsets are not ascending"));
                    }
                    let registers: Vec<u16> = c
                        .take(
                            total.checked_mul(2).ok_or_else(|| corrupt("sketch"))?,
                            "sketch",
                        )?
                        .chunks_exact(2)
                        .map(|x| u16::from_le_bytes([x[0], x[1]]))
                        .collect();
                    let ranks = c.take(total, "sketch ranks")?.to_vec();
                    if registers.iter().any(|&r| r as usize >= SKETCH_REGISTERS)
                        || ranks.iter().any(|&r| r == 0 || r > 51)
                    {
                        return Err(corrupt("sketch register out of range"));
                    }
                    MetricValues::Sketch {
                        offsets,
                        registers,
                        ranks,
                    }
                }
                _ => {
                    let nonnull = c.u64s(n, "metric counts")?;
                    let bits = c.u64s(n, "metric values")?;
                    match is_float {
                        true => MetricValues::Float {
                            nonnull,
                            values: bits.into_iter().map(f64::from_bits).collect(),
                        },
                        false => MetricValues::Int {
                            nonnull,
                            values: bits.into_iter().map(|v| v as i64).collect(),
                        },
                    }
                }
            });
        }
        if !c.rest.is_empty() {
            return Err(corrupt("bytes left after the last metric"));
        }
        Ok(StarTree {
            def: def.clone(),
            nodes,
            dims,
            count,
            metrics,
        })
    }

    pub fn records(&self) -> usize {
        self.count.len()
    }

    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Dimension `d`'s value per record.
    pub fn dimension(&self, d: usize) -> &[u32] {
        &self.dims[d]
    }

    /// The records that together hold, once each, the rows passing every filter of `uses`
    /// (indexed by dimension), split by the grouped dimensions' values: the values of the
    /// dimensions used are never the star in them.
    pub fn select(&self, uses: &[Option<DimUse>]) -> Result<Vec<u32>> {
        if uses.len() != self.dims.len() {
            return Err(corrupt("query names another number of dimensions"));
        }
        let mut out = Vec::new();
        let mut stack = vec![(0usize, 0usize)];
        while let Some((n, level)) = stack.pop() {
            let node = self.nodes[n];
            if node.children == 0 {
                'records: for r in node.start..node.end {
                    for (d, u) in uses.iter().enumerate() {
                        let Some(u) = u else { continue };
                        let v = self.dims[d][r as usize];
                        if v == STAR_ID {
                            return Err(corrupt(format!("record {r} stars a dimension in use")));
                        }
                        if u.filter.as_ref().is_some_and(|f| !f.passes(v)) {
                            continue 'records;
                        }
                    }
                    out.push(r);
                }
                continue;
            }
            let Some(u) = uses.get(level) else {
                return Err(corrupt(format!("node {n} splits past the last dimension")));
            };
            let children = node.first_child as usize..(node.first_child + node.children) as usize;
            let star = children
                .clone()
                .rev()
                .find(|&c| self.nodes[c].value == STAR_ID);
            match (u, star) {
                // Not used: the star child holds the node's rows aggregated over it.
                (None, Some(s)) => stack.push((s, level + 1)),
                (None, None) => children.for_each(|c| stack.push((c, level + 1))),
                (Some(u), _) => {
                    for c in children.rev() {
                        let v = self.nodes[c].value;
                        if v != STAR_ID && u.filter.as_ref().is_none_or(|f| f.passes(v)) {
                            stack.push((c, level + 1));
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}
