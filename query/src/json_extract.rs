//! `JSON_EXTRACT_SCALAR(column, '$.path', 'TYPE' [, default])`, Pinot's JSON extraction. In:
//! a JSON column, a constant path without `[*]`, a constant result type (`STRING`, `INT`,
//! `LONG`, `FLOAT`, `DOUBLE`, `BOOLEAN`) and an optional constant default. Out: the value at
//! the path converted to the type; the default (NULL without one) when the path is missing,
//! holds JSON `null`, or does not convert.
//!
//! Conversions: `STRING` gives a string as it is, a number or boolean as JSON writes it, an
//! object or array as its JSON text; `INT` / `LONG` take integral numbers and strings
//! spelling them (fractions truncate toward zero); `FLOAT` / `DOUBLE` take numbers and
//! strings spelling finite numbers; `BOOLEAN` takes booleans and the strings `true` /
//! `false`. A dictionary's values are converted once each. Comparisons of the result a
//! JSON index can answer exactly are pushed to segments as `JSON_MATCH` leaves
//! ([`crate::filter`]).

use std::any::Any;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array,
    StringArray,
};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, Field, FieldRef};
use basalt_segment::json::JsonPath;
use datafusion::common::{internal_err, plan_err, ScalarValue};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use serde_json::Value as Json;

pub const NAME: &str = "json_extract_scalar";

/// The result types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    String,
    Int,
    Long,
    Float,
    Double,
    Boolean,
}

impl Target {
    pub fn parse(name: &str) -> Option<Target> {
        Some(match name.to_ascii_uppercase().as_str() {
            "STRING" => Target::String,
            "INT" => Target::Int,
            "LONG" => Target::Long,
            "FLOAT" => Target::Float,
            "DOUBLE" => Target::Double,
            "BOOLEAN" => Target::Boolean,
            _ => return None,
        })
    }

    pub fn data_type(self) -> DataType {
        match self {
            Target::String => DataType::Utf8,
            Target::Int => DataType::Int32,
            Target::Long => DataType::Int64,
            Target::Float => DataType::Float32,
            Target::Double => DataType::Float64,
            Target::Boolean => DataType::Boolean,
        }
    }
}

/// A finite number read from a string (the rule the JSON index's numeric comparisons use).
pub fn read_number(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|x| x.is_finite())
}

fn integral(v: &Json) -> Option<i64> {
    match v {
        Json::Number(n) => n.as_i64().or_else(|| {
            let x = n.as_f64()?.trunc();
            (x >= i64::MIN as f64 && x < i64::MAX as f64).then_some(x as i64)
        }),
        Json::String(s) => s.parse::<i64>().ok().or_else(|| {
            let x = read_number(s)?.trunc();
            (x >= i64::MIN as f64 && x < i64::MAX as f64).then_some(x as i64)
        }),
        _ => None,
    }
}

fn float(v: &Json) -> Option<f64> {
    match v {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => read_number(s),
        _ => None,
    }
}

fn string(v: &Json) -> Option<String> {
    match v {
        Json::Null => None,
        Json::String(s) => Some(s.clone()),
        other => basalt_segment::json::path::scalar_text(other).or_else(|| Some(other.to_string())),
    }
}

fn boolean(v: &Json) -> Option<bool> {
    match v {
        Json::Bool(b) => Some(*b),
        Json::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Json::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// The node at `path` in `doc`'s text; `None` for text that is not JSON or a missing path.
fn node(doc: &str, path: &JsonPath) -> Option<Json> {
    let mut out = Vec::with_capacity(1);
    basalt_segment::json::path::nodes_at(doc, path.steps(), &mut out);
    out.pop()
}

/// A call's constant arguments, checked.
#[derive(Debug, Clone)]
pub struct Extract {
    pub path: JsonPath,
    pub target: Target,
    pub default: ScalarValue,
}

fn constant_str<'a>(v: Option<&'a ScalarValue>, what: &str) -> Result<&'a str> {
    match v.and_then(ScalarValue::try_as_str) {
        Some(Some(s)) => Ok(s),
        _ => plan_err!("JSON_EXTRACT_SCALAR's {what} must be a constant string"),
    }
}

/// The converted values of `nodes`, `default` where a node is missing or does not convert.
fn converted<T: Clone, A: FromIterator<Option<T>> + Array + 'static>(
    nodes: impl Iterator<Item = Option<Json>>,
    convert: impl Fn(&Json) -> Option<T>,
    default: Option<T>,
) -> ArrayRef {
    let values: A = nodes
        .map(|n| n.as_ref().and_then(&convert).or_else(|| default.clone()))
        .collect();
    Arc::new(values)
}

impl Extract {
    /// From the path, type and default arguments (`None` where not constant).
    pub fn from_args(args: &[Option<&ScalarValue>]) -> Result<Extract> {
        if !(3..=4).contains(&args.len()) {
            return plan_err!(
                "JSON_EXTRACT_SCALAR(column, '$.path', 'TYPE' [, default]) takes 3 or 4 arguments, not {}",
                args.len()
            );
        }
        let path_text = constant_str(args[1], "path")?;
        let path = JsonPath::parse(path_text).map_err(DataFusionError::Plan)?;
        if path.has_wildcard() {
            return plan_err!(
                "JSON_EXTRACT_SCALAR's path {path_text:?} has `[*]`, which names many values; use JSON_MATCH to filter on array elements"
            );
        }
        let type_text = constant_str(args[2], "type")?;
        let Some(target) = Target::parse(type_text) else {
            return plan_err!(
                "JSON_EXTRACT_SCALAR's type {type_text:?} is not one of STRING, INT, LONG, FLOAT, DOUBLE, BOOLEAN"
            );
        };
        let default = match args.get(3) {
            None => ScalarValue::try_from(target.data_type())?,
            Some(None) => return plan_err!("JSON_EXTRACT_SCALAR's default must be a constant"),
            Some(Some(v)) => v.cast_to(&target.data_type()).map_err(|e| {
                DataFusionError::Plan(format!(
                    "JSON_EXTRACT_SCALAR's default {v} is not a {type_text}: {e}"
                ))
            })?,
        };
        Ok(Extract {
            path,
            target,
            default,
        })
    }

    /// The values of `docs` (strings, NULL for NULL) converted; the default where none.
    fn extract(&self, docs: &StringArray) -> Result<ArrayRef> {
        let nodes = docs.iter().map(|d| d.and_then(|d| node(d, &self.path)));
        // `from_args` cast the default to the target's type.
        Ok(match (self.target, &self.default) {
            (Target::String, ScalarValue::Utf8(d)) => {
                converted::<_, StringArray>(nodes, string, d.clone())
            }
            (Target::Int, ScalarValue::Int32(d)) => converted::<_, Int32Array>(
                nodes,
                |v| integral(v).and_then(|x| i32::try_from(x).ok()),
                *d,
            ),
            (Target::Long, ScalarValue::Int64(d)) => {
                converted::<_, Int64Array>(nodes, integral, *d)
            }
            (Target::Float, ScalarValue::Float32(d)) => {
                converted::<_, Float32Array>(nodes, |v| float(v).map(|x| x as f32), *d)
            }
            (Target::Double, ScalarValue::Float64(d)) => {
                converted::<_, Float64Array>(nodes, float, *d)
            }
            (Target::Boolean, ScalarValue::Boolean(d)) => {
                converted::<_, BooleanArray>(nodes, boolean, *d)
            }
            (target, d) => {
                return internal_err!("JSON_EXTRACT_SCALAR's default {d} is not a {target:?}")
            }
        })
    }

    /// `a`'s values converted; a dictionary's values once each (row by row when a NULL
    /// value is to give a default).
    fn extract_any(&self, a: &ArrayRef) -> Result<ArrayRef> {
        match a.data_type() {
            // A NULL value gives the default, which `take` of a null key would not.
            DataType::Dictionary(_, _)
                if self.default.is_null() || a.as_any_dictionary().keys().null_count() == 0 =>
            {
                let d = a.as_any_dictionary();
                let values = self.extract_any(d.values())?;
                Ok(take(&values, d.keys(), None)?)
            }
            DataType::Utf8 => self.extract(a.as_string::<i32>()),
            _ => {
                let c = cast(a, &DataType::Utf8)?;
                self.extract(c.as_string::<i32>())
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonExtractScalar {
    signature: Signature,
}

/// The function, to register on every session.
pub fn udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(JsonExtractScalar {
        signature: Signature::variadic_any(Volatility::Immutable),
    })
}

impl ScalarUDFImpl for JsonExtractScalar {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        plan_err!("JSON_EXTRACT_SCALAR's type comes from its arguments")
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        if let Some(f) = args.arg_fields.first() {
            if !crate::search_fn::is_string(f.data_type()) {
                return plan_err!(
                    "JSON_EXTRACT_SCALAR takes a JSON (string) column, not {}",
                    f.data_type()
                );
            }
        }
        let e = Extract::from_args(args.scalar_arguments)?;
        Ok(Arc::new(Field::new(NAME, e.target.data_type(), true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let consts: Vec<Option<&ScalarValue>> = args
            .args
            .iter()
            .map(|a| match a {
                ColumnarValue::Scalar(s) => Some(s),
                ColumnarValue::Array(_) => None,
            })
            .collect();
        let e = Extract::from_args(&consts)?;
        Ok(match &args.args[0] {
            ColumnarValue::Scalar(v) => {
                let a = v.to_array_of_size(1)?;
                ColumnarValue::Scalar(ScalarValue::try_from_array(&e.extract_any(&a)?, 0)?)
            }
            ColumnarValue::Array(a) => ColumnarValue::Array(e.extract_any(a)?),
        })
    }
}
