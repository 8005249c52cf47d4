//! Reads Parquet's Thrift compact-protocol structs as the `parquet` crate reads them, without
//! building them. In: a file footer's bytes, a page header's bytes. Out: whether the crate may
//! be handed them (or what in them is wrong), and a cursor the page readers share.
//!
//! The crate reads a field by its id alone: a field it knows is read as the type the Parquet
//! format gives it, whatever type the bytes declare, and it reserves a list's declared length
//! (a schema group's declared children) before reading one entry. A check that followed the
//! declared types would walk other bytes than the crate: the `parquet` fuzz target found a
//! 6.9 KB footer whose field, declared as another type, the crate read as a list and reserved
//! 5.8 GB for. So here:
//! - every field the crate knows must declare the type the crate reads it as (the tables
//!   below follow `parquet.thrift` and the crate's readers);
//! - every list is walked entry by entry, each entry as the crate reads it, so a list holds
//!   the entries it declares (and each takes at least a byte);
//! - fields the crate does not know are skipped as it skips them;
//! - a footer's schema may not declare more children than elements follow, nor nest groups
//!   deeper than [`MAX_SCHEMA_DEPTH`] (the crate builds the schema tree by recursion: a chain
//!   of a million one-child groups, 7 bytes each, overflows the stack and aborts).
//!
//! Every read is bounded by the bytes given: malformed bytes are an error, never a panic or
//! an allocation.

/// Thrift compact-protocol type ids.
const BOOL_TRUE: u8 = 1;
const BOOL_FALSE: u8 = 2;
const BYTE: u8 = 3;
const I16: u8 = 4;
const I32: u8 = 5;
const I64: u8 = 6;
const DOUBLE: u8 = 7;
const BINARY: u8 = 8;
const LIST: u8 = 9;
const SET: u8 = 10;
const MAP: u8 = 11;
const STRUCT: u8 = 12;

/// Nesting deeper than this is refused (a page header nests three levels, a file footer about
/// a dozen: lists of row groups, of column chunks, of page encoding statistics).
const MAX_DEPTH: u32 = 64;

/// Schema groups nested deeper than this are refused.
const MAX_SCHEMA_DEPTH: usize = 64;

/// A type as the `parquet` crate reads a field of it.
#[derive(Clone, Copy)]
enum Ty {
    Bool,
    I8,
    I16,
    I32,
    I64,
    Double,
    /// A string or binary: a length, then the bytes.
    Binary,
    List(&'static Ty),
    /// A struct (or a union, which the crate reads as a struct with one field): its name for
    /// errors, and the fields the crate reads by id.
    Struct(&'static str, &'static [(i16, Ty)]),
}

impl Ty {
    /// Whether a field (or list element) declared as `wire` is read by the crate as `self`.
    fn declared_as(self, wire: u8) -> bool {
        match self {
            Ty::Bool => matches!(wire, BOOL_TRUE | BOOL_FALSE),
            Ty::I8 => wire == BYTE,
            Ty::I16 => wire == I16,
            Ty::I32 => wire == I32,
            Ty::I64 => wire == I64,
            Ty::Double => wire == DOUBLE,
            Ty::Binary => wire == BINARY,
            Ty::List(_) => wire == LIST,
            Ty::Struct(..) => wire == STRUCT,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Ty::Bool => "a bool",
            Ty::I8 => "a byte",
            Ty::I16 => "an i16",
            Ty::I32 => "an i32",
            Ty::I64 => "an i64",
            Ty::Double => "a double",
            Ty::Binary => "a binary",
            Ty::List(_) => "a list",
            Ty::Struct(name, _) => name,
        }
    }
}

fn wire_name(wire: u8) -> &'static str {
    match wire {
        BOOL_TRUE | BOOL_FALSE => "a bool",
        BYTE => "a byte",
        I16 => "an i16",
        I32 => "an i32",
        I64 => "an i64",
        DOUBLE => "a double",
        BINARY => "a binary",
        LIST => "a list",
        SET => "a set",
        MAP => "a map",
        STRUCT => "a struct",
        _ => "an unknown type",
    }
}

// The structs of `parquet.thrift` the crate reads (with the `encryption` feature), each with
// the fields it reads by id. Unions are structs of their variants; empty variants are empty
// structs.
use Ty::{Binary, Bool, Double, List, Struct, I16 as Short, I32 as Int, I64 as Long, I8 as Byte};

const EMPTY: Ty = Struct("an empty struct", &[]);
const KEY_VALUE: Ty = Struct("KeyValue", &[(1, Binary), (2, Binary)]);
const TIME_UNIT: Ty = Struct("TimeUnit", &[(1, EMPTY), (2, EMPTY), (3, EMPTY)]);
const TIMESTAMP: Ty = Struct("TimestampType", &[(1, Bool), (2, TIME_UNIT)]);
const LOGICAL_TYPE: Ty = Struct(
    "LogicalType",
    &[
        (1, EMPTY),
        (2, EMPTY),
        (3, EMPTY),
        (4, EMPTY),
        (5, Struct("DecimalType", &[(1, Int), (2, Int)])),
        (6, EMPTY),
        (7, TIMESTAMP),
        (8, TIMESTAMP),
        (10, Struct("IntType", &[(1, Byte), (2, Bool)])),
        (11, EMPTY),
        (12, EMPTY),
        (13, EMPTY),
        (14, EMPTY),
        (15, EMPTY),
        (16, Struct("VariantType", &[(1, Byte)])),
        (17, Struct("GeometryType", &[(1, Binary)])),
        (18, Struct("GeographyType", &[(1, Binary), (2, Int)])),
    ],
);
const SCHEMA_ELEMENT: &str = "SchemaElement";
const SCHEMA_ELEMENT_TY: Ty = Struct(
    SCHEMA_ELEMENT,
    &[
        (1, Int),
        (2, Int),
        (3, Int),
        (4, Binary),
        (5, Int),
        (6, Int),
        (7, Int),
        (8, Int),
        (9, Int),
        (10, LOGICAL_TYPE),
    ],
);
/// `SchemaElement.num_children`.
const NUM_CHILDREN: i16 = 5;
const STATISTICS: Ty = Struct(
    "Statistics",
    &[
        (1, Binary),
        (2, Binary),
        (3, Long),
        (4, Long),
        (5, Binary),
        (6, Binary),
        (7, Bool),
        (8, Bool),
    ],
);
const SIZE_STATISTICS: Ty = Struct(
    "SizeStatistics",
    &[(1, Long), (2, List(&Long)), (3, List(&Long))],
);
const GEOSPATIAL_STATISTICS: Ty = Struct(
    "GeospatialStatistics",
    &[
        (
            1,
            Struct(
                "BoundingBox",
                &[
                    (1, Double),
                    (2, Double),
                    (3, Double),
                    (4, Double),
                    (5, Double),
                    (6, Double),
                    (7, Double),
                    (8, Double),
                ],
            ),
        ),
        (2, List(&Int)),
    ],
);
const PAGE_ENCODING_STATS: Ty = Struct("PageEncodingStats", &[(1, Int), (2, Int), (3, Int)]);
const COLUMN_META_DATA: Ty = Struct(
    "ColumnMetaData",
    &[
        (1, Int),
        (2, List(&Int)),
        (3, List(&Binary)),
        (4, Int),
        (5, Long),
        (6, Long),
        (7, Long),
        (8, List(&KEY_VALUE)),
        (9, Long),
        (10, Long),
        (11, Long),
        (12, STATISTICS),
        (13, List(&PAGE_ENCODING_STATS)),
        (14, Long),
        (15, Int),
        (16, SIZE_STATISTICS),
        (17, GEOSPATIAL_STATISTICS),
    ],
);
const COLUMN_CRYPTO_META_DATA: Ty = Struct(
    "ColumnCryptoMetaData",
    &[
        (1, EMPTY),
        (
            2,
            Struct(
                "EncryptionWithColumnKey",
                &[(1, List(&Binary)), (2, Binary)],
            ),
        ),
    ],
);
const COLUMN_CHUNK: Ty = Struct(
    "ColumnChunk",
    &[
        (1, Binary),
        (2, Long),
        (3, COLUMN_META_DATA),
        (4, Long),
        (5, Int),
        (6, Long),
        (7, Int),
        (8, COLUMN_CRYPTO_META_DATA),
        (9, Binary),
    ],
);
const SORTING_COLUMN: Ty = Struct("SortingColumn", &[(1, Int), (2, Bool), (3, Bool)]);
const ROW_GROUP: Ty = Struct(
    "RowGroup",
    &[
        (1, List(&COLUMN_CHUNK)),
        (2, Long),
        (3, Long),
        (4, List(&SORTING_COLUMN)),
        (5, Long),
        (6, Long),
        (7, Short),
    ],
);
const AES_GCM: Ty = Struct("AesGcmV1", &[(1, Binary), (2, Binary), (3, Bool)]);
const FILE_META_DATA: Ty = Struct(
    "FileMetaData",
    &[
        (1, Int),
        (2, List(&SCHEMA_ELEMENT_TY)),
        (3, Long),
        (4, List(&ROW_GROUP)),
        (5, List(&KEY_VALUE)),
        (6, Binary),
        (7, List(&Struct("ColumnOrder", &[(1, EMPTY)]))),
        (
            8,
            Struct("EncryptionAlgorithm", &[(1, AES_GCM), (2, AES_GCM)]),
        ),
        (9, Binary),
    ],
);
/// The page-header structs' names, as [`Event`]s give them.
pub(super) const PAGE_HEADER_STRUCT: &str = "PageHeader";
pub(super) const DATA_PAGE_HEADER: &str = "DataPageHeader";
pub(super) const DICTIONARY_PAGE_HEADER: &str = "DictionaryPageHeader";
pub(super) const DATA_PAGE_HEADER_V2: &str = "DataPageHeaderV2";
const PAGE_HEADER: Ty = Struct(
    PAGE_HEADER_STRUCT,
    &[
        (1, Int),
        (2, Int),
        (3, Int),
        (4, Int),
        (
            5,
            Struct(
                DATA_PAGE_HEADER,
                &[(1, Int), (2, Int), (3, Int), (4, Int), (5, STATISTICS)],
            ),
        ),
        (6, Struct("IndexPageHeader", &[])),
        (
            7,
            Struct(DICTIONARY_PAGE_HEADER, &[(1, Int), (2, Int), (3, Bool)]),
        ),
        (
            8,
            Struct(
                DATA_PAGE_HEADER_V2,
                &[
                    (1, Int),
                    (2, Int),
                    (3, Int),
                    (4, Int),
                    (5, Int),
                    (6, Int),
                    (7, Bool),
                    (8, STATISTICS),
                ],
            ),
        ),
    ],
);

/// Checks a file footer (a `FileMetaData` struct) as the crate will read it, and the schema
/// tree it declares. The error says what is wrong.
pub(super) fn check_footer(bytes: &[u8]) -> Result<(), String> {
    let mut c = Compact { buf: bytes, pos: 0 };
    // Each schema list's `num_children`, element by element (`None` where not set).
    let mut schema: Vec<Option<i32>> = Vec::new();
    c.typed(FILE_META_DATA, 0, &mut |event| {
        match event {
            Event::Start(SCHEMA_ELEMENT) => schema.push(None),
            Event::Int(SCHEMA_ELEMENT, NUM_CHILDREN, n) => {
                if let Some(last) = schema.last_mut() {
                    *last = Some(i32::try_from(n).unwrap_or(-1));
                }
            }
            Event::ListEnd(SCHEMA_ELEMENT) => {
                return check_schema_tree(&std::mem::take(&mut schema))
            }
            _ => {}
        }
        Ok(())
    })
}

/// Reads the page header at the start of `bytes` as the crate will read it, handing each of
/// its integer and boolean fields to `on`; its length.
pub(super) fn read_page_header(
    bytes: &[u8],
    on: &mut dyn FnMut(Event) -> Result<(), String>,
) -> Result<usize, String> {
    let mut c = Compact { buf: bytes, pos: 0 };
    c.typed(PAGE_HEADER, 0, on)?;
    Ok(c.pos)
}

/// Checks a schema's elements (each one's `num_children`) as the crate builds its tree: it
/// reserves a group's declared children, then recurses into each.
fn check_schema_tree(children: &[Option<i32>]) -> Result<(), String> {
    // For each open group, the children still to come.
    let mut open: Vec<i32> = Vec::new();
    for (i, n) in children.iter().enumerate() {
        if let Some(left) = open.last_mut() {
            *left -= 1;
        }
        let n = n.unwrap_or(0);
        let after = children.len() - i - 1;
        if n < 0 || n as usize > after {
            return Err(format!(
                "schema element {i} declares {n} children, but {after} elements follow it"
            ));
        }
        if n > 0 {
            open.push(n);
            if open.len() > MAX_SCHEMA_DEPTH {
                return Err(format!(
                    "the schema nests groups deeper than {MAX_SCHEMA_DEPTH} (at element {i})"
                ));
            }
        }
        while open.last() == Some(&0) {
            open.pop();
        }
    }
    Ok(())
}

/// What the typed walk reports to its caller.
pub(super) enum Event {
    /// A struct of this name starts.
    Start(&'static str),
    /// An integer field (struct name, field id, value).
    Int(&'static str, i16, i64),
    /// A boolean field (struct name, field id, value).
    Bool(&'static str, i16, bool),
    /// A list of structs of this name ended.
    ListEnd(&'static str),
}

const ENDED: &str = "it ends inside a value, or a value in it is malformed";

/// A cursor over compact-protocol bytes.
#[derive(Clone)]
pub(super) struct Compact<'a> {
    pub(super) buf: &'a [u8],
    pub(super) pos: usize,
}

impl Compact<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    pub(super) fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn zigzag(&mut self) -> Option<i64> {
        let v = self.varint()?;
        Some((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn i32(&mut self) -> Option<i32> {
        i32::try_from(self.zigzag()?).ok()
    }

    pub(super) fn take(&mut self, n: u64) -> Option<()> {
        let end = self.pos.checked_add(usize::try_from(n).ok()?)?;
        (end <= self.buf.len()).then(|| self.pos = end)
    }

    /// Reads a struct's field header: its id and wire type, or `None` at its stop byte.
    fn field(&mut self, last: i16) -> Result<Option<(i16, u8)>, String> {
        let b = self.byte().ok_or(ENDED)?;
        if b == 0 {
            return Ok(None);
        }
        let id = match b >> 4 {
            0 => self.i32().and_then(|id| i16::try_from(id).ok()),
            delta => last.checked_add(i16::from(delta)),
        };
        Ok(Some((id.ok_or(ENDED)?, b & 0x0f)))
    }

    /// Reads a value of `ty` (a struct field's, or a list element's) as the crate reads it.
    fn typed(
        &mut self,
        ty: Ty,
        depth: u32,
        on: &mut dyn FnMut(Event) -> Result<(), String>,
    ) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("its structs nest deeper than {MAX_DEPTH}"));
        }
        let done = match ty {
            Ty::Bool | Ty::I8 => self.take(1),
            Ty::I16 | Ty::I32 | Ty::I64 => self.varint().map(drop),
            Ty::Double => self.take(8),
            Ty::Binary => self.varint().and_then(|n| self.take(n)),
            Ty::List(element) => return self.list(*element, depth, on),
            Ty::Struct(name, fields) => return self.fields_of(name, fields, depth, on),
        };
        done.ok_or_else(|| ENDED.to_string())
    }

    fn list(
        &mut self,
        element: Ty,
        depth: u32,
        on: &mut dyn FnMut(Event) -> Result<(), String>,
    ) -> Result<(), String> {
        let head = self.byte().ok_or(ENDED)?;
        let n = match head >> 4 {
            15 => self.varint().ok_or(ENDED)?,
            n => u64::from(n),
        };
        let left = (self.buf.len() - self.pos) as u64;
        if n > left || n > i32::MAX as u64 {
            return Err(format!(
                "a list of {} declares {n} entries, more than the {left} bytes after it hold",
                element.name()
            ));
        }
        // An empty list may declare any element type (some writers put 0).
        if n > 0 && !element.declared_as(head & 0x0f) {
            return Err(format!(
                "a list of {} declares its entries as {}",
                element.name(),
                wire_name(head & 0x0f)
            ));
        }
        for _ in 0..n {
            self.typed(element, depth + 1, on)?;
        }
        match element {
            Ty::Struct(name, _) => on(Event::ListEnd(name)),
            _ => Ok(()),
        }
    }

    fn fields_of(
        &mut self,
        name: &'static str,
        fields: &'static [(i16, Ty)],
        depth: u32,
        on: &mut dyn FnMut(Event) -> Result<(), String>,
    ) -> Result<(), String> {
        on(Event::Start(name))?;
        let mut last = 0i16;
        while let Some((id, wire)) = self.field(last)? {
            last = id;
            let Some(&(_, ty)) = fields.iter().find(|(f, _)| *f == id) else {
                self.skip(wire, depth + 1, false).ok_or(ENDED)?;
                continue;
            };
            if !ty.declared_as(wire) {
                return Err(format!(
                    "field {id} of {name} is declared as {}, but it is {}",
                    wire_name(wire),
                    ty.name()
                ));
            }
            match ty {
                // A boolean field keeps its value in its type id.
                Ty::Bool => on(Event::Bool(name, id, wire == BOOL_TRUE))?,
                Ty::I16 | Ty::I32 | Ty::I64 => {
                    let v = self.zigzag().ok_or(ENDED)?;
                    on(Event::Int(name, id, v))?;
                }
                _ => self.typed(ty, depth + 1, on)?,
            }
        }
        Ok(())
    }

    /// Skips a value of wire type `ty`, as the crate skips a field it does not read. A
    /// boolean field keeps its value in its type id; a boolean element of a list takes a byte.
    fn skip(&mut self, ty: u8, depth: u32, element: bool) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match ty {
            BOOL_TRUE | BOOL_FALSE if !element => Some(()),
            BOOL_TRUE | BOOL_FALSE | BYTE => self.take(1),
            I16..=I64 => self.varint().map(|_| ()),
            DOUBLE => self.take(8),
            BINARY => {
                let n = self.varint()?;
                self.take(n)
            }
            LIST | SET => {
                let head = self.byte()?;
                let n = match head >> 4 {
                    15 => self.varint()?,
                    n => u64::from(n),
                };
                self.elements(n, &[head & 0x0f], depth)
            }
            MAP => {
                let n = self.varint()?;
                if n == 0 {
                    return Some(());
                }
                let kv = self.byte()?;
                self.elements(n, &[kv >> 4, kv & 0x0f], depth)
            }
            STRUCT if depth < MAX_DEPTH => {
                let mut last = 0i16;
                while let Some((id, ty)) = self.field(last).ok()? {
                    last = id;
                    self.skip(ty, depth + 1, false)?;
                }
                Some(())
            }
            _ => None,
        }
    }

    /// Skips `n` elements of the given types in turn. Every element takes at least a byte, so
    /// a count beyond the bytes left is malformed (and never loops long).
    fn elements(&mut self, n: u64, types: &[u8], depth: u32) -> Option<()> {
        if n > (self.buf.len() - self.pos) as u64 {
            return None;
        }
        for _ in 0..n {
            for &ty in types {
                self.skip(ty, depth + 1, true)?;
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_page_header(bytes: &[u8]) -> Result<usize, String> {
        read_page_header(bytes, &mut |_| Ok(()))
    }

    /// Writes Thrift compact structs field by field (long-form field headers), for footers and
    /// page headers no writer would produce.
    #[derive(Default)]
    struct Thrift(Vec<u8>);

    impl Thrift {
        fn varint(&mut self, mut v: u64) -> &mut Self {
            while v >= 0x80 {
                self.0.push(v as u8 | 0x80);
                v >>= 7;
            }
            self.0.push(v as u8);
            self
        }
        fn field(&mut self, id: i16, wire: u8) -> &mut Self {
            self.0.push(wire);
            self.varint(((i64::from(id) << 1) ^ (i64::from(id) >> 63)) as u64)
        }
        fn int(&mut self, id: i16, wire: u8, v: i64) -> &mut Self {
            self.field(id, wire).varint(((v << 1) ^ (v >> 63)) as u64)
        }
        fn binary(&mut self, id: i16, bytes: &[u8]) -> &mut Self {
            self.field(id, BINARY).varint(bytes.len() as u64);
            self.0.extend_from_slice(bytes);
            self
        }
        fn list(&mut self, id: i16, element: u8, n: u64) -> &mut Self {
            self.field(id, LIST);
            if n < 15 {
                self.0.push((n as u8) << 4 | element);
                self
            } else {
                self.0.push(0xf0 | element);
                self.varint(n)
            }
        }
        fn stop(&mut self) -> &mut Self {
            self.0.push(0);
            self
        }
    }

    /// A footer of `version`, the given schema elements (each a name and maybe a
    /// `num_children`), no rows and no row groups.
    fn footer(schema: &[Option<i64>]) -> Vec<u8> {
        let mut t = Thrift::default();
        t.int(1, I32, 1).list(2, STRUCT, schema.len() as u64);
        for (i, children) in schema.iter().enumerate() {
            if let Some(n) = children {
                t.int(5, I32, *n);
            } else {
                t.int(1, I32, 1);
            }
            if i > 0 {
                t.int(3, I32, 0);
            }
            t.binary(4, b"c").stop();
        }
        t.int(3, I64, 0).list(4, STRUCT, 0).stop();
        t.0
    }

    fn parquet_file(footer: &[u8]) -> Vec<u8> {
        let mut file = b"PAR1".to_vec();
        file.extend_from_slice(footer);
        file.extend_from_slice(&(footer.len() as u32).to_le_bytes());
        file.extend_from_slice(b"PAR1");
        file
    }

    /// What the crate says of a footer (it must not abort).
    fn crate_reads(footer: &[u8]) -> Result<(), String> {
        let file = bytes::Bytes::from(parquet_file(footer));
        parquet::file::metadata::ParquetMetaDataReader::new()
            .parse_and_finish(&file)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_well_formed_footer_passes_and_the_crate_reads_it() {
        let f = footer(&[Some(2), None, None]);
        assert_eq!(check_footer(&f), Ok(()));
        crate_reads(&f).unwrap();
    }

    /// A chain of one-child groups: the crate builds the tree by recursion, so a deep enough
    /// chain overflows the stack (a million levels abort the process, checked by running the
    /// crate on it once without this check). Refused past the depth bound; the bound itself is
    /// read by the crate.
    #[test]
    fn a_schema_nested_too_deep_is_refused() {
        let chain = |depth: usize| {
            let mut s = vec![Some(1); depth];
            s.push(None);
            footer(&s)
        };
        let e = check_footer(&chain(1_000_000)).unwrap_err();
        assert!(e.contains("deeper than 64"), "{e}");
        assert_eq!(check_footer(&chain(MAX_SCHEMA_DEPTH)), Ok(()));
        crate_reads(&chain(MAX_SCHEMA_DEPTH)).unwrap();
        assert!(check_footer(&chain(MAX_SCHEMA_DEPTH + 1)).is_err());
    }

    /// The crate reserves a group's declared children before reading one: 2^31 children
    /// asked for 16 GB.
    #[test]
    fn a_group_declaring_more_children_than_follow_is_refused() {
        for n in [i64::from(i32::MAX), 3, -1] {
            let e = check_footer(&footer(&[Some(n), None, None])).unwrap_err();
            assert!(e.contains(&format!("declares {n} children")), "{e}");
        }
    }

    /// The crate reads field 4 of `FileMetaData` (the row groups) as a list whatever type it
    /// declares; declared as a binary, a walk by the declared types skips the list header the
    /// crate reads.
    #[test]
    fn a_known_field_declared_as_another_type_is_refused() {
        let mut t = Thrift::default();
        t.int(1, I32, 1).list(2, STRUCT, 1).int(5, I32, 0);
        t.binary(4, b"c").stop();
        t.int(3, I64, 0);
        // Field 4 declared as a binary of 6 bytes: a list header of 2^31-1 row groups.
        t.field(4, BINARY).varint(6);
        t.0.extend_from_slice(&[0xfc, 0xff, 0xff, 0xff, 0xff, 0x07]);
        t.stop();
        let e = check_footer(&t.0).unwrap_err();
        assert!(
            e.contains("field 4 of FileMetaData is declared as a binary"),
            "{e}"
        );
        // Declared as the list it is, its count is checked.
        let mut t = Thrift::default();
        t.int(1, I32, 1).list(2, STRUCT, 1).int(5, I32, 0);
        t.binary(4, b"c").stop();
        t.int(3, I64, 0).list(4, STRUCT, i32::MAX as u64).stop();
        let e = check_footer(&t.0).unwrap_err();
        assert!(e.contains("declares 2147483647 entries"), "{e}");
    }

    #[test]
    fn a_page_header_field_declared_as_another_type_is_refused() {
        // A dictionary page header whose uncompressed size is declared again as a binary: the
        // crate reads the binary's length as the size.
        let mut t = Thrift::default();
        t.int(1, I32, 2).int(2, I32, 10).int(3, I32, 10);
        t.field(7, STRUCT).int(1, I32, 1).int(2, I32, 0).stop();
        let good = t.0.clone();
        t.field(2, BINARY).varint(0x7fff_ffff);
        t.stop();
        let e = check_page_header(&t.0).unwrap_err();
        assert!(
            e.contains("field 2 of PageHeader is declared as a binary"),
            "{e}"
        );
        let mut good = Thrift(good);
        good.stop();
        assert_eq!(check_page_header(&good.0), Ok(good.0.len()));
    }

    /// The checks are strict (a field of another type than the crate reads is refused), so
    /// files of other writers, with the format's optional parts, must pass them: every
    /// footer and every page header (`fixtures/writers/make.py` wrote them).
    #[test]
    fn other_writers_files_pass() {
        let files: [(&str, &[u8]); 7] = [
            (
                "pyarrow v1 gzip",
                include_bytes!("fixtures/writers/pyarrow_v1_gzip.parquet"),
            ),
            (
                "pyarrow v2 page index",
                include_bytes!("fixtures/writers/pyarrow_v2_page_index.parquet"),
            ),
            (
                "pyarrow delta lz4",
                include_bytes!("fixtures/writers/pyarrow_delta_lz4.parquet"),
            ),
            (
                "pyarrow brotli",
                include_bytes!("fixtures/writers/pyarrow_brotli.parquet"),
            ),
            (
                "duckdb v2",
                include_bytes!("fixtures/writers/duckdb_v2.parquet"),
            ),
            (
                "duckdb types",
                include_bytes!("fixtures/writers/duckdb_types.parquet"),
            ),
            ("chdb", include_bytes!("fixtures/writers/chdb.parquet")),
        ];
        for (name, file) in files {
            let n = file.len();
            let len = u32::from_le_bytes(file[n - 8..n - 4].try_into().unwrap()) as usize;
            assert_eq!(check_footer(&file[n - 8 - len..n - 8]), Ok(()), "{name}");
            let bytes = bytes::Bytes::copy_from_slice(file);
            let meta = parquet::file::metadata::ParquetMetaDataReader::new()
                .parse_and_finish(&bytes)
                .unwrap();
            let mut pages = 0;
            for column in meta.row_groups().iter().flat_map(|rg| rg.columns()) {
                let (start, len) = column.byte_range();
                let (mut at, end) = (start as usize, (start + len) as usize);
                while at < end {
                    let header = check_page_header(&file[at..end]);
                    assert!(header.is_ok(), "{name}: page at {at}: {header:?}");
                    let (h, len) =
                        super::super::parquet_pages::page_header(&file[at..end]).unwrap();
                    at += len + h.compressed as usize;
                    pages += 1;
                }
            }
            assert!(pages >= meta.num_row_groups(), "{name}: {pages} pages");
        }
    }

    proptest::proptest! {
        /// Any bytes: an answer, never a panic.
        #[test]
        fn any_bytes_are_an_answer(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = check_footer(&bytes);
            let _ = check_page_header(&bytes);
        }
    }
}
