//! Runs the `.slt` files in tests/slt against a live server over HTTP: the SQL surface as a
//! Pinot client sees it. Each file's data is loaded by the harness from `<file>.ndjson`.

use std::path::PathBuf;

use async_trait::async_trait;
use sqllogictest::{DBOutput, DefaultColumnType};

use crate::harness::Server;

struct Http {
    client: reqwest::Client,
    url: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SqlError(String);

#[async_trait]
impl sqllogictest::AsyncDB for Http {
    type Error = SqlError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SqlError> {
        let v: serde_json::Value = self
            .client
            .post(&self.url)
            .json(&serde_json::json!({ "sql": sql }))
            .send()
            .await
            .map_err(|e| SqlError(e.to_string()))?
            .json()
            .await
            .map_err(|e| SqlError(e.to_string()))?;
        if let Some(e) = v["exceptions"].as_array().and_then(|e| e.first()) {
            return Err(SqlError(e["message"].as_str().unwrap_or("").to_string()));
        }
        let types = v["resultTable"]["dataSchema"]["columnDataTypes"]
            .as_array()
            .map(|t| {
                t.iter()
                    .map(|t| match t.as_str().unwrap_or("") {
                        "INT" | "LONG" => DefaultColumnType::Integer,
                        "FLOAT" | "DOUBLE" => DefaultColumnType::FloatingPoint,
                        "STRING" | "TIMESTAMP" | "BOOLEAN" => DefaultColumnType::Text,
                        _ => DefaultColumnType::Any,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let rows = v["resultTable"]["rows"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        r.as_array()
                            .into_iter()
                            .flatten()
                            .map(|c| match c {
                                serde_json::Value::Null => "NULL".to_string(),
                                serde_json::Value::String(s) if s.is_empty() => {
                                    "(empty)".to_string()
                                }
                                serde_json::Value::String(s) => s.clone(),
                                other => other.to_string(),
                            })
                            .collect()
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "basalt"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqllogictest_files() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), None);
    run_all(&s, None).await;
}

/// Creates each `.slt` file's table on `s` (with `replication`, if given), loads its rows
/// and runs the file.
pub async fn run_all(s: &Server, replication: Option<u32>) {
    let client = reqwest::Client::new();
    let root = crate::harness::repo_path("tests/slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", root.display());
    for f in &files {
        // Each file names its table after itself and brings a spec and rows.
        let stem = f.file_stem().unwrap().to_str().unwrap().to_string();
        let spec = std::fs::read_to_string(root.join(format!("{stem}.spec.json"))).unwrap();
        let spec = match replication {
            Some(r) => {
                let mut v: serde_json::Value = serde_json::from_str(&spec).unwrap();
                v["replication"] = r.into();
                v.to_string()
            }
            None => spec,
        };
        let r = client
            .post(s.url("/tables"))
            .header("content-type", "application/json")
            .body(spec)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
        let rows = std::fs::read(root.join(format!("{stem}.ndjson"))).unwrap();
        crate::harness::ingest_ndjson(&client, s, &stem, rows).await;
        let url = s.url("/query/sql");
        let mut runner = sqllogictest::Runner::new(|| {
            let (client, url) = (client.clone(), url.clone());
            async move { Ok::<_, SqlError>(Http { client, url }) }
        });
        if let Err(e) = runner.run_file_async(f).await {
            panic!("{}: {e}", f.display());
        }
    }
}
