//! A table's warehouse tier as the spec declares it and as the metastore records it. In: the
//! spec's `warehouse` block (JSON). Out: a validated [`WarehouseSpec`]; the
//! [`WarehouseState`] a tiering commit writes into the table's state (the time boundary and
//! the Iceberg snapshot that holds everything below it).
//!
//! Nothing here talks to Iceberg: `basalt-warehouse` does, from these values.

use serde::{Deserialize, Serialize};

use crate::error::{IngestError, Result};

/// `"warehouse": {"iceberg": {...}, "tier_after": "7d"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WarehouseSpec {
    pub iceberg: IcebergTableRef,
    /// Sealed segments whose whole time range is older than this (`7d`, `12h`; units ms, s,
    /// m, h, d) move to the Iceberg table.
    pub tier_after: String,
}

/// An Iceberg table: where its catalog is and its name there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IcebergTableRef {
    pub catalog: CatalogSpec,
    /// The namespace (dots separate levels: `analytics.raw`).
    pub namespace: String,
    pub table: String,
}

/// An Iceberg catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CatalogSpec {
    /// `sql` (a SQLite database in the layout of pyiceberg's SqlCatalog and Iceberg's JDBC
    /// catalog) or `rest` (the Iceberg REST catalog protocol).
    #[serde(rename = "type")]
    pub kind: String,
    /// `sqlite:///abs/path.db` for `sql`; `http(s)://host:port/...` for `rest`.
    pub uri: String,
    /// Where new tables' files go: `s3://bucket/prefix` or `file:///abs/dir`. Required for
    /// `sql`; a REST catalog may supply its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warehouse: Option<String>,
    /// A `rest` catalog's OAuth2 client credential (`client_id:client_secret`, exchanged at
    /// the catalog's `/v1/oauth/tokens` for a bearer token), as a reference to a server
    /// variable: `${env:BASALT_SECRET_ICEBERG}`. Only variables with the operator's secret
    /// prefix (`tables.secret_env_prefix`) may be named; a literal secret is refused, so
    /// specs (which `GET /tables` shows) never hold one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The catalog kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogKind {
    Sql,
    Rest,
}

impl CatalogSpec {
    pub fn kind(&self) -> Option<CatalogKind> {
        match self.kind.as_str() {
            "sql" => Some(CatalogKind::Sql),
            "rest" => Some(CatalogKind::Rest),
            _ => None,
        }
    }

    /// The variable `credential` names (`${env:NAME}` → `NAME`).
    pub fn credential_env(&self) -> Option<&str> {
        self.credential
            .as_deref()
            .and_then(crate::realtime::kafka_config::env_reference)
    }

    /// The SQLite file of a `sql` catalog (`sqlite:///abs/path.db` → `/abs/path.db`).
    pub fn sqlite_path(&self) -> Option<&str> {
        self.uri
            .strip_prefix("sqlite://")
            .filter(|p| p.starts_with('/'))
    }
}

fn spec_err(msg: impl Into<String>) -> IngestError {
    IngestError::Spec(msg.into())
}

/// Letters, digits and underscores (Iceberg allows more; these names also become paths and
/// SQL identifiers).
fn plain_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl IcebergTableRef {
    /// `field` is where the reference sits in the spec (`warehouse.iceberg`).
    pub fn validate(&self, field: &str) -> Result<()> {
        match self.catalog.kind() {
            Some(CatalogKind::Sql) => {
                if self.catalog.sqlite_path().is_none() {
                    return Err(spec_err(format!(
                        "{field}.catalog.uri: {:?} must be a sqlite:/// URI with an absolute path",
                        self.catalog.uri
                    )));
                }
                if self.catalog.warehouse.is_none() {
                    return Err(spec_err(format!(
                        "{field}.catalog.warehouse: a sql catalog needs the warehouse location \
                         (s3://bucket/prefix or file:///dir)"
                    )));
                }
            }
            Some(CatalogKind::Rest) => {
                if !(self.catalog.uri.starts_with("http://")
                    || self.catalog.uri.starts_with("https://"))
                {
                    return Err(spec_err(format!(
                        "{field}.catalog.uri: {:?} must be an http:// or https:// URL",
                        self.catalog.uri
                    )));
                }
            }
            None => {
                return Err(spec_err(format!(
                    "{field}.catalog.type: {:?} is not \"sql\" or \"rest\"",
                    self.catalog.kind
                )))
            }
        }
        if let Some(c) = &self.catalog.credential {
            if self.catalog.kind() != Some(CatalogKind::Rest) {
                return Err(spec_err(format!(
                    "{field}.catalog.credential: only a rest catalog takes a credential"
                )));
            }
            match self.catalog.credential_env() {
                Some(name) if crate::realtime::kafka_config::env_name_ok(name) => {}
                // The value is not echoed: it may be a secret pasted by mistake.
                _ => {
                    return Err(spec_err(format!(
                        "{field}.catalog.credential: must be a reference to a server \
                         variable, written ${{env:NAME}} (upper-case letters, digits and _); \
                         a literal secret is not accepted ({} characters given)",
                        c.len()
                    )))
                }
            }
        }
        if let Some(w) = &self.catalog.warehouse {
            if !(w.starts_with("s3://") || w.starts_with("file:///")) {
                return Err(spec_err(format!(
                    "{field}.catalog.warehouse: {w:?} must be an s3:// or file:/// URL"
                )));
            }
        }
        if !self.namespace.split('.').all(plain_name) {
            return Err(spec_err(format!(
                "{field}.namespace: {:?} must be names of letters, digits and underscores \
                 separated by dots",
                self.namespace
            )));
        }
        if !plain_name(&self.table) {
            return Err(spec_err(format!(
                "{field}.table: {:?} must be 1-128 letters, digits or underscores",
                self.table
            )));
        }
        Ok(())
    }

    /// The namespace's levels.
    pub fn namespace_levels(&self) -> Vec<String> {
        self.namespace.split('.').map(str::to_string).collect()
    }
}

impl WarehouseSpec {
    pub fn validate(&self) -> Result<()> {
        self.iceberg.validate("warehouse.iceberg")?;
        self.tier_after()?;
        Ok(())
    }

    /// How old a segment's newest row must be before it is tiered.
    pub fn tier_after(&self) -> Result<std::time::Duration> {
        crate::spec::parse_duration(&self.tier_after)
            .map_err(|e| spec_err(format!("warehouse.tier_after: {e}")))
    }
}

/// What the metastore records about a table's warehouse tier, committed with the removal of
/// the segments a tiering run moved.
///
/// Every row the Iceberg table holds at `snapshot_id` is older than `boundary`; rows at or
/// after it are only in segments. Queries read the Iceberg table at `snapshot_id` (never a
/// later one), so an Iceberg commit whose metastore commit did not happen yet is invisible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WarehouseState {
    /// Exclusive upper bound of the tiered rows' time, as the time column's stored value
    /// (epoch milliseconds for TIMESTAMP and LONG, days for DATE).
    pub boundary: i64,
    /// The Iceberg snapshot queries read.
    pub snapshot_id: i64,
    /// Segments moved so far, and their rows and bytes (as segments).
    pub segments: u64,
    pub rows: u64,
    pub segment_bytes: u64,
    /// Parquet data files written and their bytes.
    pub data_files: u64,
    pub data_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> std::result::Result<WarehouseSpec, String> {
        let w: WarehouseSpec = serde_json::from_value(v).map_err(|e| e.to_string())?;
        w.validate().map_err(|e| e.to_string())?;
        Ok(w)
    }

    #[test]
    fn the_issue_block_is_accepted_and_errors_name_the_field() {
        let ok = serde_json::json!({
            "iceberg": {"catalog": {"type": "sql", "uri": "sqlite:///var/lib/basalt/iceberg.db",
                                    "warehouse": "s3://basalt/warehouse"},
                        "namespace": "analytics", "table": "events"},
            "tier_after": "7d"
        });
        let w = spec(ok.clone()).unwrap();
        assert_eq!(w.tier_after().unwrap().as_secs(), 7 * 86400);
        assert_eq!(
            w.iceberg.catalog.sqlite_path(),
            Some("/var/lib/basalt/iceberg.db")
        );
        let bad = |path: &[&str], value: serde_json::Value, field: &str| {
            let mut v = ok.clone();
            let mut cur = &mut v;
            for p in &path[..path.len() - 1] {
                cur = &mut cur[*p];
            }
            cur[path[path.len() - 1]] = value;
            let e = spec(v).unwrap_err();
            assert!(e.contains(field), "{e} should name {field}");
        };
        bad(&["tier_after"], "7 days".into(), "warehouse.tier_after");
        bad(
            &["iceberg", "catalog", "type"],
            "hive".into(),
            "warehouse.iceberg.catalog.type",
        );
        bad(
            &["iceberg", "catalog", "uri"],
            "sqlite://rel.db".into(),
            "warehouse.iceberg.catalog.uri",
        );
        bad(
            &["iceberg", "catalog", "warehouse"],
            "/tmp/w".into(),
            "warehouse.iceberg.catalog.warehouse",
        );
        bad(
            &["iceberg", "namespace"],
            "a/../b".into(),
            "warehouse.iceberg.namespace",
        );
        bad(&["iceberg", "table"], "".into(), "warehouse.iceberg.table");
        let mut unknown = ok.clone();
        unknown["iceberg"]["catalog"]["secret"] = "x".into();
        assert!(spec(unknown).unwrap_err().contains("secret"));
    }

    #[test]
    fn a_rest_credential_is_a_variable_reference_never_a_literal() {
        let rest = |credential: serde_json::Value| {
            spec(serde_json::json!({
                "iceberg": {"catalog": {"type": "rest", "uri": "http://127.0.0.1:8181",
                                        "warehouse": "s3://warehouse",
                                        "credential": credential},
                            "namespace": "analytics", "table": "events"},
                "tier_after": "7d"
            }))
        };
        let w = rest("${env:BASALT_SECRET_ICEBERG}".into()).unwrap();
        assert_eq!(
            w.iceberg.catalog.credential_env(),
            Some("BASALT_SECRET_ICEBERG")
        );
        for bad in ["basalt:hunter2", "${env:lower}", "x${env:BASALT_SECRET_X}"] {
            let e = rest(bad.into()).unwrap_err();
            assert!(e.contains("warehouse.iceberg.catalog.credential"), "{e}");
            assert!(!e.contains("hunter2"), "the value is not echoed: {e}");
        }
        let sql = spec(serde_json::json!({
            "iceberg": {"catalog": {"type": "sql", "uri": "sqlite:///tmp/i.db",
                                    "warehouse": "file:///tmp/w",
                                    "credential": "${env:BASALT_SECRET_ICEBERG}"},
                        "namespace": "analytics", "table": "events"},
            "tier_after": "7d"
        }))
        .unwrap_err();
        assert!(sql.contains("only a rest catalog"), "{sql}");
    }
}
