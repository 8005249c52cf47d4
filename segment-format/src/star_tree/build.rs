//! Builds a star-tree section. In: a [`StarTreeDef`], each dimension's dictionary id per row
//! ([`super::NULL_ID`] for nulls) and each metric's input column. Out: the section's bytes (layout
//! in README.md), or `None` when the tree would hold more than [`MAX_RECORDS`] records.

use std::cmp::Ordering;

use super::{StarMetric, StarTreeDef, MAX_RECORDS, STAR_ID};

/// One metric's input, row by row.
pub(crate) enum MetricInput {
    Count,
    Int {
        op: Op,
        values: Vec<Option<i64>>,
    },
    Float {
        op: Op,
        values: Vec<Option<f64>>,
    },
    /// A row's sketch register and rank ([`super::sketch_register`]), none for nulls.
    Sketch(Vec<Option<(u16, u8)>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Sum,
    Min,
    Max,
}

impl Op {
    pub(crate) fn of(m: &StarMetric) -> Option<Op> {
        match m {
            StarMetric::Sum(_) => Some(Op::Sum),
            StarMetric::Min(_) => Some(Op::Min),
            StarMetric::Max(_) => Some(Op::Max),
            _ => None,
        }
    }
}

/// Records' values of one metric.
enum Acc {
    Count,
    Int {
        op: Op,
        nonnull: Vec<u64>,
        values: Vec<i64>,
    },
    Float {
        op: Op,
        nonnull: Vec<u64>,
        values: Vec<f64>,
    },
    /// Per record, its registers sorted by index (only those above zero).
    Sketch(Vec<Vec<(u16, u8)>>),
}

fn int_fold(op: Op, a: i64, b: i64) -> i64 {
    match op {
        Op::Sum => a.wrapping_add(b),
        Op::Min => a.min(b),
        Op::Max => a.max(b),
    }
}

fn float_fold(op: Op, a: f64, b: f64) -> f64 {
    match op {
        Op::Sum => a + b,
        Op::Min => match a.total_cmp(&b) {
            Ordering::Greater => b,
            _ => a,
        },
        Op::Max => match a.total_cmp(&b) {
            Ordering::Less => b,
            _ => a,
        },
    }
}

/// Sorted register lists merged, keeping each register's highest rank.
fn merge_registers(a: &[(u16, u8)], b: &[(u16, u8)]) -> Vec<(u16, u8)> {
    let (mut i, mut j, mut out) = (0, 0, Vec::with_capacity(a.len().max(b.len())));
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x.0 == y.0 => {
                out.push((x.0, x.1.max(y.1)));
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x.0 < y.0 => {
                out.push(*x);
                i += 1;
            }
            (Some(x), None) => {
                out.push(*x);
                i += 1;
            }
            (_, Some(y)) => {
                out.push(*y);
                j += 1;
            }
            (None, None) => unreachable!("loop condition"),
        }
    }
    out
}

struct Records {
    dims: usize,
    /// Dimension values, `dims` per record.
    values: Vec<u32>,
    count: Vec<u64>,
    metrics: Vec<Acc>,
}

impl Records {
    fn len(&self) -> usize {
        self.count.len()
    }

    fn key(&self, r: usize, from: usize) -> &[u32] {
        &self.values[r * self.dims + from..(r + 1) * self.dims]
    }

    /// Starts a record with dimension values `key` and nothing aggregated.
    fn open(&mut self, key: &[u32]) {
        self.values.extend_from_slice(key);
        self.count.push(0);
        for m in &mut self.metrics {
            match m {
                Acc::Count => {}
                Acc::Int {
                    nonnull, values, ..
                } => {
                    nonnull.push(0);
                    values.push(0);
                }
                Acc::Float {
                    nonnull, values, ..
                } => {
                    nonnull.push(0);
                    values.push(0.0);
                }
                Acc::Sketch(s) => s.push(Vec::new()),
            }
        }
    }

    /// Adds input row `row` to the last record.
    fn add_row(&mut self, inputs: &[MetricInput], row: usize) {
        let last = self.len() - 1;
        self.count[last] += 1;
        for (m, input) in self.metrics.iter_mut().zip(inputs) {
            match (m, input) {
                (
                    Acc::Int {
                        op,
                        nonnull,
                        values,
                    },
                    MetricInput::Int { values: v, .. },
                ) => {
                    if let Some(x) = v[row] {
                        fold(nonnull, values, last, x, 1, |a, b| int_fold(*op, a, b));
                    }
                }
                (
                    Acc::Float {
                        op,
                        nonnull,
                        values,
                    },
                    MetricInput::Float { values: v, .. },
                ) => {
                    if let Some(x) = v[row] {
                        fold(nonnull, values, last, x, 1, |a, b| float_fold(*op, a, b));
                    }
                }
                (Acc::Sketch(s), MetricInput::Sketch(v)) => {
                    if let Some(reg) = v[row] {
                        let regs = &mut s[last];
                        match regs.binary_search_by_key(&reg.0, |r| r.0) {
                            Ok(i) => regs[i].1 = regs[i].1.max(reg.1),
                            Err(i) => regs.insert(i, reg),
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Adds record `r` to the last record.
    fn add_record(&mut self, r: usize) {
        let last = self.len() - 1;
        self.count[last] += self.count[r];
        for m in &mut self.metrics {
            match m {
                Acc::Count => {}
                Acc::Int {
                    op,
                    nonnull,
                    values,
                } => {
                    let (x, n) = (values[r], nonnull[r]);
                    fold(nonnull, values, last, x, n, |a, b| int_fold(*op, a, b));
                }
                Acc::Float {
                    op,
                    nonnull,
                    values,
                } => {
                    let (x, n) = (values[r], nonnull[r]);
                    fold(nonnull, values, last, x, n, |a, b| float_fold(*op, a, b));
                }
                Acc::Sketch(s) => s[last] = merge_registers(&s[last], &s[r]),
            }
        }
    }
}

/// Folds `n` non-null values aggregated to `x` into record `last` (nothing when `n` is 0).
fn fold<T: Copy>(
    nonnull: &mut [u64],
    values: &mut [T],
    last: usize,
    x: T,
    n: u64,
    f: impl Fn(T, T) -> T,
) {
    if n == 0 {
        return;
    }
    values[last] = match nonnull[last] {
        0 => x,
        _ => f(values[last], x),
    };
    nonnull[last] += n;
}

/// A node: its value of its parent's split dimension, its records, its children.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Node {
    pub(crate) value: u32,
    pub(crate) start: u32,
    pub(crate) end: u32,
    pub(crate) first_child: u32,
    pub(crate) children: u32,
}

/// Builds the tree of `def` over `rows` rows: `dims[d][row]` is dimension `d`'s id.
pub(crate) fn build(
    def: &StarTreeDef,
    rows: usize,
    dims: &[Vec<u32>],
    inputs: &[MetricInput],
) -> Option<(Vec<u8>, u32, u32)> {
    let d = dims.len();
    let mut recs = Records {
        dims: d,
        values: Vec::new(),
        count: Vec::new(),
        metrics: inputs
            .iter()
            .map(|i| match i {
                MetricInput::Count => Acc::Count,
                MetricInput::Int { op, .. } => Acc::Int {
                    op: *op,
                    nonnull: Vec::new(),
                    values: Vec::new(),
                },
                MetricInput::Float { op, .. } => Acc::Float {
                    op: *op,
                    nonnull: Vec::new(),
                    values: Vec::new(),
                },
                MetricInput::Sketch(_) => Acc::Sketch(Vec::new()),
            })
            .collect(),
    };
    // Base records: the rows grouped by every dimension, in split order.
    let tuple = |r: usize| dims.iter().map(move |col| col[r]);
    let mut order: Vec<u32> = (0..rows as u32).collect();
    order.sort_by(|&a, &b| tuple(a as usize).cmp(tuple(b as usize)));
    let mut key = vec![0u32; d];
    for (i, &row) in order.iter().enumerate() {
        let row = row as usize;
        let same = i > 0 && tuple(row).eq(tuple(order[i - 1] as usize));
        if !same {
            for (k, col) in key.iter_mut().zip(dims) {
                *k = col[row];
            }
            recs.open(&key);
        }
        recs.add_row(inputs, row);
    }
    drop(order);
    let mut nodes = vec![Node {
        value: STAR_ID,
        start: 0,
        end: recs.len() as u32,
        first_child: 0,
        children: 0,
    }];
    let mut stack = vec![(0usize, 0usize)];
    let leaf = def.max_leaf_records.max(1) as usize;
    while let Some((n, level)) = stack.pop() {
        let (s, e) = (nodes[n].start as usize, nodes[n].end as usize);
        if e - s <= leaf || level == d {
            continue;
        }
        // Runs of dimension `level`'s value (records are sorted by it within the node).
        let mut children: Vec<Node> = Vec::new();
        let mut at = s;
        while at < e {
            let v = recs.values[at * d + level];
            let mut end = at + 1;
            while end < e && recs.values[end * d + level] == v {
                end += 1;
            }
            children.push(Node {
                value: v,
                start: at as u32,
                end: end as u32,
                first_child: 0,
                children: 0,
            });
            at = end;
        }
        if children.len() > 1 {
            // The star child: the node's records aggregated over dimension `level`, sorted
            // by the dimensions after it.
            let mut by_rest: Vec<usize> = (s..e).collect();
            by_rest.sort_by(|&a, &b| recs.key(a, level + 1).cmp(recs.key(b, level + 1)));
            let first = recs.len();
            let mut key = recs.key(s, 0).to_vec();
            key[level] = STAR_ID;
            for (i, &r) in by_rest.iter().enumerate() {
                if i == 0 || recs.key(r, level + 1) != recs.key(by_rest[i - 1], level + 1) {
                    key[level + 1..].copy_from_slice(recs.key(r, level + 1));
                    recs.open(&key);
                }
                recs.add_record(r);
            }
            if recs.len() > MAX_RECORDS {
                return None;
            }
            children.push(Node {
                value: STAR_ID,
                start: first as u32,
                end: recs.len() as u32,
                first_child: 0,
                children: 0,
            });
        }
        nodes[n].first_child = nodes.len() as u32;
        nodes[n].children = children.len() as u32;
        for c in children {
            stack.push((nodes.len(), level + 1));
            nodes.push(c);
        }
    }
    Some((encode(&recs, &nodes), nodes.len() as u32, recs.len() as u32))
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// The section's bytes (see README.md, `star_tree`).
fn encode(recs: &Records, nodes: &[Node]) -> Vec<u8> {
    let n = recs.len();
    let mut out = Vec::new();
    put_u32(&mut out, recs.dims as u32);
    put_u32(&mut out, recs.metrics.len() as u32);
    put_u32(&mut out, nodes.len() as u32);
    put_u32(&mut out, n as u32);
    for node in nodes {
        for v in [
            node.value,
            node.start,
            node.end,
            node.first_child,
            node.children,
        ] {
            put_u32(&mut out, v);
        }
    }
    for dim in 0..recs.dims {
        for r in 0..n {
            put_u32(&mut out, recs.values[r * recs.dims + dim]);
        }
    }
    recs.count.iter().for_each(|&c| put_u64(&mut out, c));
    for m in &recs.metrics {
        match m {
            Acc::Count => {}
            Acc::Int {
                nonnull, values, ..
            } => {
                nonnull.iter().for_each(|&c| put_u64(&mut out, c));
                values.iter().for_each(|&v| put_u64(&mut out, v as u64));
            }
            Acc::Float {
                nonnull, values, ..
            } => {
                nonnull.iter().for_each(|&c| put_u64(&mut out, c));
                values.iter().for_each(|&v| put_u64(&mut out, v.to_bits()));
            }
            Acc::Sketch(s) => {
                let mut offset = 0u32;
                put_u32(&mut out, 0);
                for regs in s {
                    offset += regs.len() as u32;
                    put_u32(&mut out, offset);
                }
                for regs in s {
                    for &(i, _) in regs {
                        out.extend_from_slice(&i.to_le_bytes());
                    }
                }
                for regs in s {
                    out.extend(regs.iter().map(|&(_, r)| r));
                }
            }
        }
    }
    out
}
