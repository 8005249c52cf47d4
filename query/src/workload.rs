//! Query classes. In: the class a request names (Pinot `queryOptions` `workload=analyst`,
//! PostgreSQL `SET basalt.workload = 'analyst'`). Out: which of the server's limits apply.
//!
//! Dashboards and analysts want different things from the same server: a panel that runs
//! every few seconds must fail fast and small (a tight memory limit, no spilling, the short
//! default timeout), while an analyst's join over the largest table needs gigabytes, minutes
//! and disk. As Druid's query laning and Pinot's workload configs do, each request names its
//! class; the default is `dashboard`.

use std::str::FromStr;

/// The class of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Workload {
    /// `[query]`'s limits (default).
    #[default]
    Dashboard,
    /// `[query] analyst_*` limits, spilling to disk.
    Analyst,
}

/// The name of the PostgreSQL setting that picks the class.
pub const PG_SETTING: &str = "basalt.workload";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("workload {0:?} is not one of: dashboard, analyst")]
pub struct UnknownWorkload(pub String);

impl FromStr for Workload {
    type Err = UnknownWorkload;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "dashboard" | "default" => Ok(Workload::Dashboard),
            "analyst" => Ok(Workload::Analyst),
            _ => Err(UnknownWorkload(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_case_insensitively() {
        assert_eq!("Analyst".parse(), Ok(Workload::Analyst));
        assert_eq!(" dashboard ".parse(), Ok(Workload::Dashboard));
        assert_eq!("default".parse(), Ok(Workload::Dashboard));
        let e = "batch".parse::<Workload>().unwrap_err();
        assert!(e.to_string().contains("dashboard, analyst"), "{e}");
    }
}
