//! What every query's session starts from, built once per process. In: DataFusion's default
//! functions, planners, table factories and file formats, Basalt's `approx_distinct`, and
//! Pinot's `text_match`, `json_match` and `json_extract_scalar`. Out:
//! [`with_defaults`], a session builder given them — the same as DataFusion's
//! `with_default_features` plus Basalt's functions, without building DataFusion's defaults
//! again for every query — with the functions that reserve memory bound to the query's pool
//! and a PostgreSQL session's system functions added, so all of them are registered in the
//! one pass `SessionStateBuilder::build` makes (no `SessionContext::state()` copy of the
//! whole state to find the functions to wrap).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use basalt_segment::search::SearchFunction;
use datafusion::catalog::{TableFunction, TableProviderFactory};
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::SessionStateDefaults;
use datafusion::logical_expr::planner::ExprPlanner;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF, WindowUDF};

/// DataFusion's defaults and Basalt's own, as `with_default_features` would build them.
struct Defaults {
    scalar: Vec<Arc<ScalarUDF>>,
    /// `scalar` by name, for the functions [`crate::bounded`] wraps.
    scalar_by_name: HashMap<String, Arc<ScalarUDF>>,
    aggregate: Vec<Arc<AggregateUDF>>,
    window: Vec<Arc<WindowUDF>>,
    table_functions: HashMap<String, Arc<TableFunction>>,
    table_factories: HashMap<String, Arc<dyn TableProviderFactory>>,
    expr_planners: Vec<Arc<dyn ExprPlanner>>,
    file_formats: Vec<Arc<dyn FileFormatFactory>>,
}

/// The scalar functions Basalt adds to DataFusion's: Pinot's `TEXT_MATCH`, `JSON_MATCH` and
/// `JSON_EXTRACT_SCALAR`.
fn basalt_scalar_functions() -> Vec<ScalarUDF> {
    let mut out: Vec<ScalarUDF> = SearchFunction::ALL
        .into_iter()
        .map(crate::search_fn::udf)
        .collect();
    out.push(crate::json_extract::udf());
    out
}

fn defaults() -> &'static Defaults {
    static DEFAULTS: OnceLock<Defaults> = OnceLock::new();
    DEFAULTS.get_or_init(|| {
        let mut scalar = SessionStateDefaults::default_scalar_functions();
        scalar.extend(basalt_scalar_functions().into_iter().map(Arc::new));
        let scalar_by_name = scalar
            .iter()
            .map(|f| (f.name().to_string(), f.clone()))
            .collect();
        let mut aggregate = SessionStateDefaults::default_aggregate_functions();
        // After the default one of the same name, so it replaces it.
        aggregate.push(Arc::new(crate::functions::approx_distinct()));
        Defaults {
            scalar,
            scalar_by_name,
            aggregate,
            window: SessionStateDefaults::default_window_functions(),
            table_functions: SessionStateDefaults::default_table_functions()
                .into_iter()
                .map(|f| (f.name().to_string(), f))
                .collect(),
            table_factories: SessionStateDefaults::default_table_factories(),
            expr_planners: SessionStateDefaults::default_expr_planners(),
            file_formats: SessionStateDefaults::default_file_formats(),
        }
    })
}

/// `builder` with DataFusion's default features and Basalt's functions: the memory-bound
/// wrappers reserving from `pool`, then `extra` (a PostgreSQL session's system functions),
/// each replacing a default of the same name.
pub(super) fn with_defaults(
    builder: SessionStateBuilder,
    pool: &Arc<dyn MemoryPool>,
    extra: Vec<ScalarUDF>,
) -> SessionStateBuilder {
    let d = defaults();
    let wrapped = crate::bounded::wrappers(&d.scalar_by_name, pool);
    let mut scalar = Vec::with_capacity(d.scalar.len() + wrapped.len() + extra.len());
    scalar.extend(d.scalar.iter().cloned());
    scalar.extend(wrapped.into_iter().chain(extra).map(Arc::new));
    builder
        .with_table_factories(d.table_factories.clone())
        .with_file_formats(d.file_formats.clone())
        .with_expr_planners(d.expr_planners.clone())
        .with_scalar_functions(scalar)
        .with_aggregate_functions(d.aggregate.clone())
        .with_window_functions(d.window.clone())
        .with_table_functions(d.table_functions.clone())
}

/// The memory-bound wrappers of DataFusion's amplifying functions, reserving from `pool`:
/// a query's own, registered over its copy of a session template.
pub(super) fn bounded(pool: &Arc<dyn MemoryPool>) -> Vec<ScalarUDF> {
    crate::bounded::wrappers(&defaults().scalar_by_name, pool)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::memory_pool::UnboundedMemoryPool;

    /// The same functions, planners and formats as DataFusion's `with_default_features`,
    /// with Basalt's replacing the defaults of the same names, plus Pinot's functions.
    #[test]
    fn sessions_get_what_default_features_gives() {
        let pool: Arc<dyn MemoryPool> = Arc::new(UnboundedMemoryPool::default());
        let ours = with_defaults(SessionStateBuilder::new(), &pool, Vec::new()).build();
        let theirs = SessionStateBuilder::new().with_default_features().build();
        fn names<V>(m: &HashMap<String, V>) -> Vec<&String> {
            let mut v: Vec<&String> = m.keys().collect();
            v.sort();
            v
        }
        // Basalt adds Pinot's functions to DataFusion's scalar functions.
        let mut want = names(theirs.scalar_functions());
        let added: Vec<String> = basalt_scalar_functions()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        assert_eq!(added, ["text_match", "json_match", "json_extract_scalar"]);
        want.extend(&added);
        want.sort();
        assert_eq!(names(ours.scalar_functions()), want);
        assert_eq!(
            names(ours.aggregate_functions()),
            names(theirs.aggregate_functions())
        );
        assert_eq!(
            names(ours.window_functions()),
            names(theirs.window_functions())
        );
        assert_eq!(
            names(ours.table_functions()),
            names(theirs.table_functions())
        );
        assert_eq!(
            names(ours.table_factories()),
            names(theirs.table_factories())
        );
        assert_eq!(ours.expr_planners().len(), theirs.expr_planners().len());
        for ext in ["parquet", "csv", "json", "arrow"] {
            assert_eq!(
                ours.get_file_format_factory(ext).is_some(),
                theirs.get_file_format_factory(ext).is_some(),
                "{ext}"
            );
        }
        // Basalt's functions won over the defaults of the same name.
        let wrapped = crate::bounded::wrappers(ours.scalar_functions(), &pool);
        assert!(!wrapped.is_empty());
        for w in wrapped {
            let f = &ours.scalar_functions()[w.name()];
            assert!(
                f.inner().as_any().is::<crate::bounded::Bounded>(),
                "{} is not bounded",
                w.name()
            );
        }
        let approx = &ours.aggregate_functions()["approx_distinct"];
        assert_eq!(
            approx.inner().as_any().type_id(),
            crate::functions::approx_distinct()
                .inner()
                .as_any()
                .type_id()
        );
    }
}
