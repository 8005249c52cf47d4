//! Aggregate functions registered on every session. In: DataFusion's built-ins. Out:
//! `approx_distinct` that also accepts dictionary-encoded strings (the form segments produce
//! string columns in) by unpacking them to their value type before aggregating.

use std::any::Any;
use std::sync::Arc;

use arrow::datatypes::{DataType, FieldRef};
use datafusion::error::Result;
use datafusion::functions_aggregate::approx_distinct::approx_distinct_udaf;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility,
};

#[derive(Debug, PartialEq, Eq, Hash)]
struct DictionaryAwareApproxDistinct {
    signature: Signature,
}

fn inner() -> Arc<AggregateUDF> {
    approx_distinct_udaf()
}

impl AggregateUDFImpl for DictionaryAwareApproxDistinct {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        "approx_distinct"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        Ok(arg_types
            .iter()
            .map(|t| match t {
                DataType::Dictionary(_, v) => v.as_ref().clone(),
                t => t.clone(),
            })
            .collect())
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        inner().inner().return_type(arg_types)
    }

    fn accumulator(&self, acc_args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        inner().inner().accumulator(acc_args)
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        inner().inner().state_fields(args)
    }
}

/// `approx_distinct` over any type, dictionary strings included.
pub fn approx_distinct() -> AggregateUDF {
    AggregateUDF::new_from_impl(DictionaryAwareApproxDistinct {
        signature: Signature::user_defined(Volatility::Immutable),
    })
}
