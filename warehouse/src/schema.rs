//! A Basalt table's shape as an Iceberg table. In: the table's [`SegmentSchema`]. Out: the
//! Iceberg schema (field ids stable: column `i` of the spec is field `i + 1`, array elements
//! follow the columns), the day partitioning of the time column, and the casts between
//! segment batches and Iceberg's Arrow types (strings plain, timestamps in microseconds).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use basalt_ingest::spec::ColumnSpec;
use basalt_segment::{ColumnType, SegmentSchema};
use iceberg::spec::{
    ListType, Literal, NestedField, PartitionSpec, PrimitiveLiteral, PrimitiveType, Schema,
    Transform, Type, UnboundPartitionSpec,
};

use crate::error::{Result, WarehouseError};

/// How a table is laid out in Iceberg.
#[derive(Debug, Clone)]
pub struct Layout {
    pub schema: Schema,
    pub partition: UnboundPartitionSpec,
    /// Iceberg's Arrow schema (field ids in the fields' metadata), what data files hold.
    pub arrow: SchemaRef,
    /// The time column's position.
    pub time: usize,
    pub time_type: ColumnType,
}

/// Milliseconds in a day: the partition width of a LONG (epoch ms) time column.
pub const DAY_MS: i64 = 86_400_000;

fn primitive(ty: ColumnType) -> PrimitiveType {
    match ty {
        ColumnType::String | ColumnType::Json => PrimitiveType::String,
        ColumnType::Int => PrimitiveType::Int,
        ColumnType::Long => PrimitiveType::Long,
        ColumnType::Float => PrimitiveType::Float,
        ColumnType::Double => PrimitiveType::Double,
        ColumnType::Boolean => PrimitiveType::Boolean,
        ColumnType::Timestamp => PrimitiveType::Timestamp,
        ColumnType::Date => PrimitiveType::Date,
        ColumnType::Decimal { precision, scale } => PrimitiveType::Decimal {
            precision: precision as u32,
            scale: scale as u32,
        },
    }
}

/// The Iceberg layout of `schema`; the table must have a time column.
pub fn layout(schema: &SegmentSchema) -> Result<Layout> {
    let time_name = schema
        .time_column
        .as_deref()
        .ok_or_else(|| WarehouseError::Invalid("the table has no time column".into()))?;
    let time = schema
        .columns
        .iter()
        .position(|c| c.name == time_name)
        .ok_or_else(|| WarehouseError::Invalid(format!("no time column {time_name}")))?;
    let mut next_element = schema.columns.len() as i32 + 1;
    let fields = schema
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let id = i as i32 + 1;
            let ty = match c.multi_value {
                false => Type::Primitive(primitive(c.ty)),
                true => {
                    let element = NestedField::list_element(
                        next_element,
                        Type::Primitive(primitive(c.ty)),
                        false,
                    );
                    next_element += 1;
                    Type::List(ListType::new(Arc::new(element)))
                }
            };
            Arc::new(match c.nullable && i != time {
                true => NestedField::optional(id, &c.name, ty),
                false => NestedField::required(id, &c.name, ty),
            })
        })
        .collect::<Vec<_>>();
    let iceberg_schema = Schema::builder().with_fields(fields).build()?;
    let time_type = schema.columns[time].ty;
    let transform = match time_type {
        ColumnType::Timestamp | ColumnType::Date => Transform::Day,
        ColumnType::Long => Transform::Truncate(DAY_MS as u32),
        other => {
            return Err(WarehouseError::Invalid(format!(
                "a {other} time column cannot be partitioned by day"
            )))
        }
    };
    let partition = UnboundPartitionSpec::builder()
        .with_spec_id(0)
        .add_partition_field(time as i32 + 1, format!("{time_name}_day"), transform)?
        .build();
    let arrow = Arc::new(iceberg::arrow::schema_to_arrow_schema(&iceberg_schema)?);
    Ok(Layout {
        schema: iceberg_schema,
        partition,
        arrow,
        time,
        time_type,
    })
}

impl Layout {
    /// The day a stored time value falls in (days since the epoch).
    pub fn day_of(&self, value: i64) -> i64 {
        match self.time_type {
            ColumnType::Date => value,
            _ => value.div_euclid(DAY_MS),
        }
    }

    /// The partition value of a day, as Iceberg stores it for the transform.
    pub fn partition_value(&self, day: i64) -> iceberg::spec::Literal {
        match self.time_type {
            ColumnType::Long => iceberg::spec::Literal::long(day * DAY_MS),
            _ => iceberg::spec::Literal::int(day as i32),
        }
    }

    /// The stored time values `[lo, hi]` of the day a partition value names (the inverse of
    /// [`Layout::partition_value`]); `None` for a value of another shape.
    pub fn day_range(&self, value: &Literal) -> Option<(i64, i64)> {
        match (self.time_type, value) {
            (ColumnType::Date, Literal::Primitive(PrimitiveLiteral::Int(d))) => {
                Some((*d as i64, *d as i64))
            }
            (ColumnType::Timestamp, Literal::Primitive(PrimitiveLiteral::Int(d))) => {
                let lo = (*d as i64).checked_mul(DAY_MS)?;
                Some((lo, lo.checked_add(DAY_MS - 1)?))
            }
            (ColumnType::Long, Literal::Primitive(PrimitiveLiteral::Long(v))) => {
                Some((*v, v.checked_add(DAY_MS - 1)?))
            }
            _ => None,
        }
    }

    /// Whether `spec` partitions as this layout does: one field, the day of the time column.
    pub fn is_partitioning(&self, spec: &PartitionSpec) -> bool {
        match (spec.fields(), self.partition.fields()) {
            ([got], [want]) => got.source_id == want.source_id && got.transform == want.transform,
            _ => false,
        }
    }
}

/// The columns of a Basalt table over an Iceberg table of schema `schema` (each nullable
/// unless required); a type Basalt has no column type for is an error naming the column.
pub fn columns_of(schema: &Schema) -> Result<Vec<ColumnSpec>> {
    let prim = |p: &PrimitiveType| -> Option<String> {
        Some(match p {
            PrimitiveType::Boolean => "BOOLEAN".into(),
            PrimitiveType::Int => "INT".into(),
            PrimitiveType::Long => "LONG".into(),
            PrimitiveType::Float => "FLOAT".into(),
            PrimitiveType::Double => "DOUBLE".into(),
            PrimitiveType::Date => "DATE".into(),
            PrimitiveType::Timestamp
            | PrimitiveType::Timestamptz
            | PrimitiveType::TimestampNs
            | PrimitiveType::TimestamptzNs => "TIMESTAMP".into(),
            PrimitiveType::String => "STRING".into(),
            PrimitiveType::Decimal { precision, scale } if *precision <= 18 => {
                format!("DECIMAL({precision}, {scale})")
            }
            _ => return None,
        })
    };
    schema
        .as_struct()
        .fields()
        .iter()
        .map(|f| {
            let ty = match f.field_type.as_ref() {
                Type::Primitive(p) => prim(p),
                Type::List(l) => match l.element_field.field_type.as_ref() {
                    Type::Primitive(PrimitiveType::String) => Some("STRING_ARRAY".into()),
                    Type::Primitive(PrimitiveType::Long) => Some("LONG_ARRAY".into()),
                    _ => None,
                },
                _ => None,
            };
            let ty = ty.ok_or_else(|| {
                WarehouseError::Invalid(format!(
                    "source.iceberg: column {:?} has type {}, which Basalt cannot read yet",
                    f.name, f.field_type
                ))
            })?;
            Ok(ColumnSpec {
                name: f.name.clone(),
                ty,
                index: Vec::new(),
                nullable: Some(!f.required),
            })
        })
        .collect()
}

/// `batch` (a segment's Arrow types) cast to `target`'s types and field metadata.
pub fn cast_batch(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .zip(target.fields())
        .map(|(c, f)| match c.data_type() == f.data_type() {
            true => Ok(c.clone()),
            false => arrow::compute::cast(c, f.data_type()),
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(target.clone(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_segment::ColumnDef;

    fn col(name: &str, ty: ColumnType) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            ty,
            nullable: true,
            indexes: vec![],
            multi_value: false,
        }
    }

    #[test]
    fn field_ids_follow_the_spec_and_time_partitions_by_day() {
        let mut tags = col("tags", ColumnType::String);
        tags.multi_value = true;
        let schema = SegmentSchema {
            columns: vec![
                col("ts", ColumnType::Timestamp),
                col("country", ColumnType::String),
                tags,
                col(
                    "revenue",
                    ColumnType::Decimal {
                        precision: 12,
                        scale: 2,
                    },
                ),
            ],
            time_column: Some("ts".into()),
            star_trees: Vec::new(),
        };
        let l = layout(&schema).unwrap();
        assert_eq!(l.schema.field_by_name("country").unwrap().id, 2);
        assert_eq!(l.schema.field_by_name("revenue").unwrap().id, 4);
        assert!(l.schema.field_by_name("ts").unwrap().required);
        assert_eq!(l.schema.field_by_id(5).unwrap().name, "element");
        assert_eq!(l.partition.fields()[0].transform, Transform::Day);
        assert_eq!(l.day_of(DAY_MS * 3 + 5), 3);
        assert_eq!(l.day_of(-1), -1);
    }

    #[test]
    fn a_partition_value_names_its_day_for_every_time_type() {
        for ty in [ColumnType::Timestamp, ColumnType::Date, ColumnType::Long] {
            let schema = SegmentSchema {
                columns: vec![col("x", ColumnType::Long), col("t", ty)],
                time_column: Some("t".into()),
                star_trees: Vec::new(),
            };
            let l = layout(&schema).unwrap();
            for day in [-3i64, 0, 20_000] {
                let (lo, hi) = l.day_range(&l.partition_value(day)).unwrap();
                // The range is exactly the stored values whose day is `day`.
                assert_eq!((l.day_of(lo), l.day_of(hi)), (day, day), "{ty:?}");
                assert_eq!(l.day_of(lo - 1), day - 1, "{ty:?}");
                assert_eq!(l.day_of(hi + 1), day + 1, "{ty:?}");
            }
            assert_eq!(l.day_range(&Literal::string("1")), None);
            let bound = |source: i32, transform| {
                UnboundPartitionSpec::builder()
                    .add_partition_field(source, "p", transform)
                    .unwrap()
                    .build()
                    .bind(l.schema.clone())
                    .unwrap()
            };
            let ours = l.partition.clone().bind(l.schema.clone()).unwrap();
            assert!(l.is_partitioning(&ours));
            assert!(!l.is_partitioning(&bound(1, Transform::Identity)));
            assert!(!l.is_partitioning(&PartitionSpec::unpartition_spec()));
        }
    }

    #[test]
    fn iceberg_schemas_map_to_columns_and_unreadable_types_are_named() {
        let schema = SegmentSchema {
            columns: vec![
                col("ts", ColumnType::Timestamp),
                col(
                    "amount",
                    ColumnType::Decimal {
                        precision: 9,
                        scale: 3,
                    },
                ),
                col("day", ColumnType::Date),
            ],
            time_column: Some("ts".into()),
            star_trees: Vec::new(),
        };
        // Basalt's own layout maps back to the same column types.
        let cols = columns_of(&layout(&schema).unwrap().schema).unwrap();
        let types: Vec<&str> = cols.iter().map(|c| c.ty.as_str()).collect();
        assert_eq!(types, ["TIMESTAMP", "DECIMAL(9, 3)", "DATE"]);
        assert_eq!(cols[0].nullable, Some(false));
        let odd = Schema::builder()
            .with_fields(vec![Arc::new(NestedField::optional(
                1,
                "blob",
                Type::Primitive(PrimitiveType::Binary),
            ))])
            .build()
            .unwrap();
        let e = columns_of(&odd).unwrap_err().to_string();
        assert!(e.contains("\"blob\"") && e.contains("binary"), "{e}");
    }
}
