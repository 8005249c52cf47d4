//! A column's text index: a tantivy index of one segment whose doc ids are the segment's
//! doc ids. In: the column's values ([`build`]), or the section's bytes ([`TextIndex::open`])
//! and a [`TextQuery`]. Out: the section's bytes, or the docs whose value matches.
//!
//! The section holds the tantivy index's files: a u32 count, then per file a u16 name
//! length, the name, a u64 length and the bytes. The index has one field, tokenized by
//! [`super::analyzer`] with positions (for phrases) and without norms (nothing is scored),
//! and one document per row in row order, empty for a NULL, so tantivy's doc id is the row.
//! Readers check every length against the section, that the index has one segment of
//! exactly the segment's rows, and turn a panic inside tantivy over damaged bytes into an
//! error.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use roaring::RoaringBitmap;
use tantivy::directory::error::{DeleteError, OpenReadError, OpenWriteError};
use tantivy::directory::{
    AntiCallToken, FileHandle, OwnedBytes, TerminatingWrite, WatchCallback, WatchHandle, WritePtr,
};
use tantivy::query::{EnableScoring, PhrasePrefixQuery, PhraseQuery, Query, RegexQuery, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions};
use tantivy::tokenizer::TokenizerManager;
use tantivy::{Directory, Index, IndexReader, ReloadPolicy, Searcher, TantivyDocument, Term};

use super::query::TextQuery;
use super::TOKENIZER;
use crate::error::{corrupt, Result, SegmentError};

/// Memory tantivy may use for its in-memory postings while building (it grows past it for a
/// large segment rather than splitting the index).
const BUILD_BUDGET: usize = 64 << 20;
/// Files a text index may hold (tantivy writes fewer than ten).
const MAX_FILES: u32 = 64;

fn tantivy_err(what: &str, e: impl std::fmt::Display) -> SegmentError {
    corrupt(format!("text index {what}: {e}"))
}

fn schema() -> (Schema, Field) {
    let mut b = Schema::builder();
    let indexing = TextFieldIndexing::default()
        .set_tokenizer(TOKENIZER)
        .set_index_option(IndexRecordOption::WithFreqsAndPositions)
        .set_fieldnorms(false);
    let field = b.add_text_field(
        "text",
        TextOptions::default().set_indexing_options(indexing),
    );
    (b.build(), field)
}

fn tokenizers() -> TokenizerManager {
    let m = TokenizerManager::default();
    m.register(TOKENIZER, super::analyzer());
    m
}

/// The text index of `values` (one per row, in row order) as section bytes.
pub fn build<'a>(values: impl Iterator<Item = Option<&'a str>>) -> Result<Vec<u8>> {
    let build_err = |e: tantivy::TantivyError| SegmentError::Schema {
        column: String::new(),
        message: format!("building the text index: {e}"),
    };
    let (schema, field) = schema();
    let dir = Files::default();
    let mut writer = Index::builder()
        .schema(schema)
        .tokenizers(tokenizers())
        .single_segment_index_writer(dir.clone(), BUILD_BUDGET)
        .map_err(build_err)?;
    for v in values {
        let mut doc = TantivyDocument::new();
        if let Some(s) = v {
            doc.add_text(field, s);
        }
        writer.add_document(doc).map_err(build_err)?;
    }
    writer.finalize().map_err(build_err)?;
    let files = dir.0.lock().map_err(|_| corrupt("text index build lock"))?;
    let files = deterministic(&files)?;
    let mut out = Vec::with_capacity(files.values().map(|b| b.len() + 32).sum::<usize>() + 4);
    out.extend_from_slice(&(files.len() as u32).to_le_bytes());
    for (name, bytes) in files.iter() {
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    Ok(out)
}

/// The segment id every built index gets, for its files' names and `meta.json`.
const FIXED_SEGMENT_ID: &str = "00000000000000000000000000000000";

/// The index's files with the random segment id tantivy drew replaced by
/// [`FIXED_SEGMENT_ID`] (in the file names, `meta.json` and `.managed.json`) and
/// `.managed.json`'s list sorted, so the same values always give the same section bytes (the
/// segment builder is deterministic; the index has one segment, so one id serves).
fn deterministic(
    files: &BTreeMap<PathBuf, OwnedBytes>,
) -> Result<BTreeMap<String, std::borrow::Cow<'_, [u8]>>> {
    let names: Vec<String> = files
        .keys()
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    let id = names
        .iter()
        .filter_map(|n| n.split_once('.').map(|(stem, _)| stem))
        .find(|stem| stem.len() == 32 && stem.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string);
    let Some(id) = id else {
        let bytes = files.values().map(|b| b.as_slice().into());
        return Ok(names.into_iter().zip(bytes).collect());
    };
    let hyphenated = format!(
        "{}-{}-{}-{}-{}",
        &id[..8],
        &id[8..12],
        &id[12..16],
        &id[16..20],
        &id[20..]
    );
    let fixed_hyphenated = "00000000-0000-0000-0000-000000000000";
    let mut out = BTreeMap::new();
    for (name, bytes) in names.into_iter().zip(files.values()) {
        let bytes = match name.as_str() {
            "meta.json" => String::from_utf8_lossy(bytes.as_slice())
                .replace(&hyphenated, fixed_hyphenated)
                .replace(&id, FIXED_SEGMENT_ID)
                .into_bytes()
                .into(),
            ".managed.json" => {
                let mut listed: Vec<String> = serde_json::from_slice(bytes.as_slice())
                    .map_err(|e| tantivy_err("file list", e))?;
                for n in listed.iter_mut() {
                    *n = n.replace(&id, FIXED_SEGMENT_ID);
                }
                listed.sort();
                serde_json::to_vec(&listed)
                    .map_err(|e| tantivy_err("file list", e))?
                    .into()
            }
            _ => bytes.as_slice().into(),
        };
        out.insert(name.replace(&id, FIXED_SEGMENT_ID), bytes);
    }
    Ok(out)
}

/// An opened text index.
pub struct TextIndex {
    // Kept so the searcher's files stay open.
    _reader: IndexReader,
    searcher: Searcher,
    field: Field,
}

impl std::fmt::Debug for TextIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextIndex")
            .field("docs", &self.searcher.num_docs())
            .finish()
    }
}

impl TextIndex {
    /// Opens the index in `section`, which must hold `rows` documents.
    pub fn open(section: &[u8], rows: u32) -> Result<TextIndex> {
        let dir = Files::default();
        {
            let mut files = dir.0.lock().map_err(|_| corrupt("text index lock"))?;
            let all = OwnedBytes::new(section.to_vec());
            let mut at = 0usize;
            let mut take = |n: usize, what: &str| -> Result<OwnedBytes> {
                let end = at
                    .checked_add(n)
                    .filter(|&e| e <= all.len())
                    .ok_or_else(|| corrupt(format!("text index: {what} runs past the section")))?;
                let s = all.slice(at..end);
                at = end;
                Ok(s)
            };
            let count = u32::from_le_bytes(
                take(4, "file count")?
                    .as_slice()
                    .try_into()
                    .unwrap_or_default(),
            );
            if count > MAX_FILES {
                return Err(corrupt(format!("text index: {count} files")));
            }
            for _ in 0..count {
                let n = u16::from_le_bytes(
                    take(2, "a name length")?
                        .as_slice()
                        .try_into()
                        .unwrap_or_default(),
                );
                let name = take(n as usize, "a file name")?;
                let name = std::str::from_utf8(name.as_slice())
                    .map_err(|_| corrupt("text index: a file name is not UTF-8"))?
                    .to_string();
                if name.is_empty() || name.contains(['/', '\\']) || name.starts_with("..") {
                    return Err(corrupt(format!("text index: file name {name:?}")));
                }
                let len = u64::from_le_bytes(
                    take(8, "a file length")?
                        .as_slice()
                        .try_into()
                        .unwrap_or_default(),
                );
                let len = usize::try_from(len).map_err(|_| corrupt("text index: file length"))?;
                let bytes = take(len, "a file")?;
                files.insert(PathBuf::from(name), bytes);
            }
            if at != all.len() {
                return Err(corrupt("text index: bytes after its last file"));
            }
        }
        let opened = catch_unwind(AssertUnwindSafe(|| -> Result<TextIndex> {
            let mut index = Index::open(dir).map_err(|e| tantivy_err("open", e))?;
            index.set_tokenizers(tokenizers());
            let (_, field) = schema();
            if index.schema().get_field("text").ok() != Some(field) {
                return Err(corrupt("text index: unexpected schema"));
            }
            let reader = index
                .reader_builder()
                .reload_policy(ReloadPolicy::Manual)
                .try_into()
                .map_err(|e| tantivy_err("open", e))?;
            let searcher = reader.searcher();
            let segs = searcher.segment_readers();
            let docs: u64 = segs.iter().map(|s| s.max_doc() as u64).sum();
            if segs.len() > 1 || docs != rows as u64 {
                return Err(corrupt(format!(
                    "text index holds {docs} docs in {} segments, the segment {rows} rows",
                    segs.len()
                )));
            }
            Ok(TextIndex {
                _reader: reader,
                searcher,
                field,
            })
        }));
        opened.unwrap_or_else(|_| Err(corrupt("text index: damaged (tantivy panicked opening it)")))
    }

    /// The docs whose value matches `q` (NULL rows are empty documents: they match only
    /// queries every value matches, which the caller removes).
    pub fn search(&self, q: &TextQuery) -> Result<RoaringBitmap> {
        catch_unwind(AssertUnwindSafe(|| self.eval(q))).unwrap_or_else(|_| {
            Err(corrupt(
                "text index: damaged (tantivy panicked searching it)",
            ))
        })
    }

    /// False when no document can match `q`: a word it needs (a term or a phrase's word)
    /// is in none. A term-dictionary lookup per word; postings are not read.
    pub fn may_match(&self, q: &TextQuery) -> Result<bool> {
        catch_unwind(AssertUnwindSafe(|| self.may(q))).unwrap_or_else(|_| {
            Err(corrupt(
                "text index: damaged (tantivy panicked searching it)",
            ))
        })
    }

    fn may(&self, q: &TextQuery) -> Result<bool> {
        Ok(match q {
            TextQuery::Phrase { terms, prefix } => {
                let exact = if *prefix {
                    &terms[..terms.len() - 1]
                } else {
                    &terms[..]
                };
                for seg in self.searcher.segment_readers() {
                    let inv = seg
                        .inverted_index(self.field)
                        .map_err(|e| tantivy_err("search", e))?;
                    for (_, t) in exact {
                        let term = Term::from_field_text(self.field, t);
                        if inv
                            .get_term_info(&term)
                            .map_err(|e| tantivy_err("search", e))?
                            .is_none()
                        {
                            return Ok(false);
                        }
                    }
                }
                !self.searcher.segment_readers().is_empty()
            }
            TextQuery::Pattern(_) | TextQuery::All => true,
            TextQuery::Bool { must, should, .. } => {
                if !must.is_empty() {
                    for m in must {
                        if !self.may(m)? {
                            return Ok(false);
                        }
                    }
                    true
                } else if !should.is_empty() {
                    for s in should {
                        if self.may(s)? {
                            return Ok(true);
                        }
                    }
                    false
                } else {
                    true
                }
            }
        })
    }

    /// Distinct words in the index (at least 1).
    fn num_terms(&self) -> Result<u32> {
        let mut n = 1usize;
        for seg in self.searcher.segment_readers() {
            let inv = seg
                .inverted_index(self.field)
                .map_err(|e| tantivy_err("search", e))?;
            n = n.max(inv.terms().num_terms());
        }
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    fn all(&self) -> RoaringBitmap {
        let mut b = RoaringBitmap::new();
        let n: u32 = self
            .searcher
            .segment_readers()
            .iter()
            .map(|s| s.max_doc())
            .sum();
        b.insert_range(0..n);
        b
    }

    fn eval(&self, q: &TextQuery) -> Result<RoaringBitmap> {
        let term = |t: &str| Term::from_field_text(self.field, t);
        Ok(match q {
            TextQuery::All => self.all(),
            TextQuery::Phrase {
                terms,
                prefix: false,
            } if terms.len() == 1 => {
                self.docs(&TermQuery::new(term(&terms[0].1), IndexRecordOption::Basic))?
            }
            TextQuery::Phrase {
                terms,
                prefix: false,
            } => self.docs(&PhraseQuery::new_with_offset(
                terms.iter().map(|(o, t)| (*o, term(t))).collect(),
            ))?,
            TextQuery::Phrase {
                terms,
                prefix: true,
            } => {
                let mut pq = PhrasePrefixQuery::new_with_offset(
                    terms.iter().map(|(o, t)| (*o, term(t))).collect(),
                );
                // Every word of the dictionary may follow (tantivy's default stops at 50;
                // it also reserves room for this many, so not u32::MAX).
                pq.set_max_expansions(self.num_terms()?);
                self.docs(&pq)?
            }
            TextQuery::Pattern(p) => {
                self.docs(&RegexQuery::from_regex(p.fst.clone(), self.field))?
            }
            TextQuery::Bool {
                must,
                should,
                must_not,
            } => {
                let mut acc = if !must.is_empty() {
                    let mut acc: Option<RoaringBitmap> = None;
                    for m in must {
                        let d = self.eval(m)?;
                        acc = Some(match acc {
                            Some(a) => a & d,
                            None => d,
                        });
                        if acc.as_ref().is_some_and(RoaringBitmap::is_empty) {
                            return Ok(RoaringBitmap::new());
                        }
                    }
                    acc.unwrap_or_default()
                } else if !should.is_empty() {
                    let mut acc = RoaringBitmap::new();
                    for s in should {
                        acc |= self.eval(s)?;
                    }
                    acc
                } else {
                    self.all()
                };
                for n in must_not {
                    if acc.is_empty() {
                        break;
                    }
                    acc -= self.eval(n)?;
                }
                acc
            }
        })
    }

    fn docs(&self, q: &dyn Query) -> Result<RoaringBitmap> {
        let weight = q
            .weight(EnableScoring::disabled_from_searcher(&self.searcher))
            .map_err(|e| tantivy_err("search", e))?;
        let mut out = RoaringBitmap::new();
        // tantivy's automaton scorers index past an empty doc bitset.
        for seg in self
            .searcher
            .segment_readers()
            .iter()
            .filter(|s| s.max_doc() > 0)
        {
            weight
                .for_each_no_score(seg, &mut |docs| {
                    out.extend(docs.iter().copied());
                })
                .map_err(|e| tantivy_err("search", e))?;
        }
        Ok(out)
    }
}

/// Files in memory, listed by name: what tantivy writes while building (to be laid out in
/// the section) and what it reads when opening one.
#[derive(Debug, Clone, Default)]
struct Files(Arc<Mutex<BTreeMap<PathBuf, OwnedBytes>>>);

impl Files {
    fn get(&self, path: &Path) -> Option<OwnedBytes> {
        self.0.lock().ok()?.get(path).cloned()
    }

    fn put(&self, path: &Path, data: Vec<u8>) -> io::Result<()> {
        self.0
            .lock()
            .map_err(|_| io::Error::other("text index files lock"))?
            .insert(path.to_path_buf(), OwnedBytes::new(data));
        Ok(())
    }
}

/// A file being written: kept when tantivy terminates it.
struct Sink {
    files: Files,
    path: PathBuf,
    buf: Vec<u8>,
}

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TerminatingWrite for Sink {
    fn terminate_ref(&mut self, _: AntiCallToken) -> io::Result<()> {
        self.files.put(&self.path, std::mem::take(&mut self.buf))
    }
}

impl Directory for Files {
    fn get_file_handle(&self, path: &Path) -> Result<Arc<dyn FileHandle>, OpenReadError> {
        self.get(path)
            .map(|b| Arc::new(b) as Arc<dyn FileHandle>)
            .ok_or_else(|| OpenReadError::FileDoesNotExist(path.to_path_buf()))
    }

    fn delete(&self, path: &Path) -> Result<(), DeleteError> {
        if let Ok(mut f) = self.0.lock() {
            f.remove(path);
        }
        Ok(())
    }

    fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
        Ok(self.get(path).is_some())
    }

    fn open_write(&self, path: &Path) -> Result<WritePtr, OpenWriteError> {
        Ok(io::BufWriter::new(Box::new(Sink {
            files: self.clone(),
            path: path.to_path_buf(),
            buf: Vec::new(),
        })))
    }

    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
        self.get(path)
            .map(|b| b.as_slice().to_vec())
            .ok_or_else(|| OpenReadError::FileDoesNotExist(path.to_path_buf()))
    }

    fn atomic_write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.put(path, data.to_vec())
    }

    fn sync_directory(&self) -> io::Result<()> {
        Ok(())
    }

    fn watch(&self, _: WatchCallback) -> tantivy::Result<WatchHandle> {
        Ok(WatchHandle::empty())
    }
}
