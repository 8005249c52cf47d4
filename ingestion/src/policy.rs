//! The operator's limits on what a table spec may ask of the server. In: the server config
//! (`[tables]`, `[storage]`) and a spec a client posted. Out: the spec accepted, or a
//! [`IngestError::Spec`] naming the field that goes beyond a limit.
//!
//! A spec is a client's request, so it is hostile until checked: its `deep_store` must lie
//! under a root the operator allows (otherwise a client could attach another team's table
//! and drop it, deleting that store's objects), its width and its partition count are
//! bounded, and secrets it references must come from variables the operator set aside.

use std::path::{Component, Path};

use crate::error::{IngestError, Result};
use crate::spec::TableSpec;

/// Limits the operator sets on table specs.
#[derive(Debug, Clone)]
pub struct TablePolicy {
    /// Columns a table may have (default 1,000).
    pub max_columns: usize,
    /// Partitions a table may consume or generate (default 1,024); a Kafka topic with more
    /// is refused by its ingester.
    pub max_partitions: usize,
    /// Deep stores a spec's `deep_store` may name, as URL roots (`s3://bucket/prefix`,
    /// `file:///abs/dir`). Empty: the server's own deep store and data dir.
    pub allowed_roots: Vec<String>,
    /// `${env:NAME}` references (Kafka properties, a REST catalog's credential) may only
    /// name variables with this prefix (default `BASALT_SECRET_`).
    pub secret_env_prefix: String,
    /// Iceberg REST catalog URIs a spec's `warehouse` may name, as prefixes. Empty: none.
    pub allowed_catalog_uris: Vec<String>,
}

impl Default for TablePolicy {
    fn default() -> Self {
        TablePolicy {
            max_columns: 1000,
            max_partitions: 1024,
            allowed_roots: Vec::new(),
            secret_env_prefix: "BASALT_SECRET_".into(),
            allowed_catalog_uris: Vec::new(),
        }
    }
}

fn spec_err(msg: impl Into<String>) -> IngestError {
    IngestError::Spec(msg.into())
}

/// A deep store URL split into what a root comparison needs.
#[derive(Debug, PartialEq, Eq)]
enum Location {
    S3 { bucket: String, path: Vec<String> },
    File(Vec<String>),
}

/// Why a deep-store URL cannot be compared with the allowed roots.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    #[error("{0:?} may not contain \".\" or \"..\" segments")]
    DotSegment(String),
    #[error("{0:?} names no bucket")]
    NoBucket(String),
    #[error("{0:?} must be an absolute path (file:///dir)")]
    Relative(String),
    #[error("{0:?} must be an s3:// or file:// URL")]
    Scheme(String),
}

/// Refuses `url` (the spec's `field`) unless it lies under one of `roots`.
fn check_under(field: &str, url: &str, roots: &[String]) -> Result<()> {
    let loc = location(url).map_err(|e| spec_err(format!("{field}: {e}")))?;
    let allowed = roots
        .iter()
        .filter_map(|r| location(r).ok())
        .any(|r| under(&loc, &r));
    if !allowed {
        return Err(spec_err(format!(
            "{field}: {url:?} is outside the locations this server allows \
             (storage.allowed_roots: {})",
            roots.join(", ")
        )));
    }
    Ok(())
}

/// Parses `s3://bucket/prefix` or `file:///abs/path`; refuses relative paths and `.`/`..`
/// segments so a lexical comparison means containment.
fn location(url: &str) -> std::result::Result<Location, LocationError> {
    let segments = |p: &str| -> std::result::Result<Vec<String>, LocationError> {
        p.split('/')
            .filter(|s| !s.is_empty())
            .map(|s| match s {
                "." | ".." => Err(LocationError::DotSegment(url.to_string())),
                s => Ok(s.to_string()),
            })
            .collect()
    };
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(LocationError::NoBucket(url.to_string()));
        }
        return Ok(Location::S3 {
            bucket: bucket.to_string(),
            path: segments(path)?,
        });
    }
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(LocationError::Relative(url.to_string()));
        }
        return Ok(Location::File(segments(path)?));
    }
    Err(LocationError::Scheme(url.to_string()))
}

/// The `file://` URL of a local directory (for default roots).
pub fn file_url(dir: &Path) -> String {
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut clean = std::path::PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                clean.pop();
            }
            Component::CurDir => {}
            c => clean.push(c),
        }
    }
    format!("file://{}", clean.display())
}

fn under(loc: &Location, root: &Location) -> bool {
    match (loc, root) {
        (
            Location::S3 { bucket, path },
            Location::S3 {
                bucket: rb,
                path: rp,
            },
        ) => bucket == rb && path.starts_with(rp),
        (Location::File(p), Location::File(rp)) => p.starts_with(rp),
        _ => false,
    }
}

impl TablePolicy {
    /// Checks `spec` against the limits; `roots` are the allowed deep-store roots in effect
    /// (the configured ones, or the server's defaults).
    pub fn check(&self, spec: &TableSpec, roots: &[String]) -> Result<()> {
        if spec.columns.len() > self.max_columns {
            return Err(spec_err(format!(
                "columns: {} columns is more than this server allows ({}, tables.max_columns)",
                spec.columns.len(),
                self.max_columns
            )));
        }
        if let Some(src) = &spec.source {
            let declared = src
                .generator
                .as_ref()
                .map(|g| ("source.generator.partitions", g.partitions))
                .or(src
                    .memory
                    .as_ref()
                    .map(|m| ("source.memory.partitions", m.partitions)));
            if let Some((field, n)) = declared {
                if n as usize > self.max_partitions {
                    return Err(spec_err(format!(
                        "{field}: {n} partitions is more than this server allows ({}, tables.max_partitions)",
                        self.max_partitions
                    )));
                }
            }
        }
        if let Some(d) = &spec.deep_store {
            check_under("deep_store", d, roots)?;
        }
        let iceberg = spec
            .warehouse
            .as_ref()
            .map(|w| ("warehouse.iceberg", &w.iceberg))
            .into_iter()
            .chain(spec.iceberg_source().map(|r| ("source.iceberg", r)));
        for (field, r) in iceberg {
            self.check_catalog(field, &r.catalog, roots)?;
        }
        Ok(())
    }

    /// A catalog a spec names at `field`: its SQLite file and warehouse under the allowed
    /// roots, a REST URI among the allowed catalogs, a credential from a variable the
    /// operator set aside for secrets.
    fn check_catalog(
        &self,
        field: &str,
        c: &crate::warehouse::CatalogSpec,
        roots: &[String],
    ) -> Result<()> {
        if let Some(name) = c.credential_env() {
            if !name.starts_with(&self.secret_env_prefix) {
                return Err(spec_err(format!(
                    "{field}.catalog.credential: ${{env:{name}}}: only variables named {}* \
                     can be referenced (tables.secret_env_prefix)",
                    self.secret_env_prefix
                )));
            }
        }
        if let Some(wh) = &c.warehouse {
            check_under(&format!("{field}.catalog.warehouse"), wh, roots)?;
        }
        match c.sqlite_path() {
            Some(path) => check_under(
                &format!("{field}.catalog.uri"),
                &format!("file://{path}"),
                roots,
            ),
            None => {
                let allowed = self
                    .allowed_catalog_uris
                    .iter()
                    .any(|p| !p.is_empty() && c.uri.starts_with(p.as_str()));
                match allowed {
                    true => Ok(()),
                    false => Err(spec_err(format!(
                        "{field}.catalog.uri: {:?} is not a catalog this server allows \
                         (tables.allowed_catalog_uris)",
                        c.uri
                    ))),
                }
            }
        }
    }

    /// Checks the configured roots parse.
    pub fn validate_roots(roots: &[String]) -> std::result::Result<(), LocationError> {
        for r in roots {
            location(r)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(deep_store: Option<&str>, columns: usize) -> TableSpec {
        let mut cols = vec![serde_json::json!({"name": "ts", "type": "TIMESTAMP"})];
        for i in 1..columns {
            cols.push(serde_json::json!({"name": format!("c{i}"), "type": "LONG"}));
        }
        let mut v = serde_json::json!({"name": "t", "time_column": "ts", "columns": cols});
        if let Some(d) = deep_store {
            v["deep_store"] = d.into();
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn deep_stores_must_lie_under_a_root() {
        let p = TablePolicy::default();
        let roots = vec![
            "s3://team-a/basalt".to_string(),
            "file:///srv/basalt/data".to_string(),
        ];
        for ok in [
            None,
            Some("s3://team-a/basalt"),
            Some("s3://team-a/basalt/events/"),
            Some("file:///srv/basalt/data/x"),
        ] {
            p.check(&spec(ok, 2), &roots).unwrap();
        }
        for (bad, says) in [
            ("s3://team-b/basalt", "outside"),
            ("s3://team-a/basalt2", "outside"),
            ("s3://team-a", "outside"),
            ("file:///srv/basalt/data/../../etc", "\"..\""),
            ("file:///srv/basalt/database", "outside"),
            ("file://relative/dir", "absolute"),
            ("s3:///nobucket", "no bucket"),
        ] {
            let e = p
                .check(&spec(Some(bad), 2), &roots)
                .unwrap_err()
                .to_string();
            assert!(e.contains("deep_store") && e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn width_and_partitions_are_bounded() {
        let p = TablePolicy {
            max_columns: 10,
            max_partitions: 4,
            ..Default::default()
        };
        p.check(&spec(None, 10), &[]).unwrap();
        let e = p.check(&spec(None, 11), &[]).unwrap_err().to_string();
        assert!(e.contains("tables.max_columns"), "{e}");
        let mut s = spec(None, 2);
        s.source = Some(
            serde_json::from_value(serde_json::json!({"generator": {"partitions": 5}})).unwrap(),
        );
        let e = p.check(&s, &[]).unwrap_err().to_string();
        assert!(e.contains("source.generator.partitions"), "{e}");
    }

    #[test]
    fn warehouse_locations_and_catalogs_must_be_allowed() {
        let roots = vec!["file:///srv/basalt".to_string(), "s3://lake/w".to_string()];
        let with = |catalog: serde_json::Value| {
            let mut s = spec(None, 2);
            s.warehouse = Some(
                serde_json::from_value(serde_json::json!({
                    "iceberg": {"catalog": catalog, "namespace": "a", "table": "t"},
                    "tier_after": "7d"
                }))
                .unwrap(),
            );
            s
        };
        let p = TablePolicy::default();
        let sql = |uri: &str, wh: &str| {
            with(serde_json::json!({"type": "sql", "uri": uri, "warehouse": wh}))
        };
        p.check(&sql("sqlite:///srv/basalt/ice.db", "s3://lake/w/x"), &roots)
            .unwrap();
        for (s, field) in [
            (sql("sqlite:///etc/ice.db", "s3://lake/w"), "catalog.uri"),
            (
                sql("sqlite:///srv/basalt/i.db", "s3://other/w"),
                "catalog.warehouse",
            ),
            (
                sql("sqlite:///srv/basalt/i.db", "file:///srv/basalt/../x"),
                "catalog.warehouse",
            ),
        ] {
            let e = p.check(&s, &roots).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
        let rest = with(serde_json::json!({"type": "rest", "uri": "http://169.254.169.254/"}));
        let e = p.check(&rest, &roots).unwrap_err().to_string();
        assert!(e.contains("tables.allowed_catalog_uris"), "{e}");
        let open = TablePolicy {
            allowed_catalog_uris: vec!["http://169.254.169.254/".into()],
            ..Default::default()
        };
        open.check(&rest, &roots).unwrap();
        let secret = |name: &str| {
            with(
                serde_json::json!({"type": "rest", "uri": "http://169.254.169.254/",
                                    "credential": format!("${{env:{name}}}")}),
            )
        };
        open.check(&secret("BASALT_SECRET_ICEBERG"), &roots)
            .unwrap();
        let e = open
            .check(&secret("AWS_SECRET_ACCESS_KEY"), &roots)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("catalog.credential") && e.contains("BASALT_SECRET_"),
            "{e}"
        );
    }

    #[test]
    fn file_urls_are_absolute_and_clean() {
        let u = file_url(Path::new("/a/b/../c/./d"));
        assert_eq!(u, "file:///a/c/d");
        assert!(location(&u).is_ok());
    }
}
