//! Iceberg's file access over Basalt's object stores. In: the absolute locations Iceberg
//! metadata names (`s3://bucket/key`, `file:///abs/path`). Out: reads, ranged reads,
//! streamed writes and deletes through `object_store` — S3 configured from the environment
//! as the deep store is, local files through [`DurableFs`] (every put fsynced) — so the
//! warehouse tier needs no second storage stack.
//!
//! Iceberg serialises storages (`typetag`); only the data directory is kept, stores are
//! opened again on first use.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use basalt_ingest::durable::DurableFs;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use iceberg::io::{
    FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage, StorageConfig,
    StorageFactory,
};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

fn io_err(what: &str, path: &str, e: impl std::fmt::Display) -> iceberg::Error {
    iceberg::Error::new(
        iceberg::ErrorKind::Unexpected,
        format!("{what} {path}: {e}"),
    )
}

/// Builds [`ObjectStorage`]s (one per catalog's file IO).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ObjectStorageFactory;

#[typetag::serde]
impl StorageFactory for ObjectStorageFactory {
    fn build(&self, _config: &StorageConfig) -> iceberg::Result<Arc<dyn Storage>> {
        Ok(Arc::new(ObjectStorage::default()))
    }
}

/// Iceberg's [`Storage`] over `object_store`: one store per S3 bucket, one for the local
/// file system.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ObjectStorage {
    #[serde(skip)]
    stores: Arc<Mutex<HashMap<String, Arc<dyn ObjectStore>>>>,
}

impl ObjectStorage {
    /// The store holding `location` and the object's path in it.
    fn resolve(&self, location: &str) -> iceberg::Result<(Arc<dyn ObjectStore>, ObjPath)> {
        self.locate(location).map(|(_, store, path)| (store, path))
    }

    /// The store holding `location` (with its root: `s3://bucket`, or empty for the local
    /// file system) and the object's path in it.
    pub fn locate(
        &self,
        location: &str,
    ) -> iceberg::Result<(String, Arc<dyn ObjectStore>, ObjPath)> {
        let (root, key) = if let Some(rest) = location
            .strip_prefix("s3://")
            .or_else(|| location.strip_prefix("s3a://"))
        {
            let (bucket, key) = rest
                .split_once('/')
                .ok_or_else(|| io_err("resolve", location, "no object key"))?;
            (format!("s3://{bucket}"), key)
        } else if let Some(p) = location
            .strip_prefix("file://")
            .or_else(|| location.strip_prefix("file:"))
            .or_else(|| location.starts_with('/').then_some(location))
        {
            if !p.starts_with('/') {
                return Err(io_err("resolve", location, "not an absolute path"));
            }
            (String::new(), p.trim_start_matches('/'))
        } else {
            return Err(io_err(
                "resolve",
                location,
                "only s3:// and file:// locations are supported",
            ));
        };
        // `.` or `..` would escape the location the metadata names.
        if key.split('/').any(|s| s == ".." || s == ".") {
            return Err(io_err("resolve", location, "dot segments are not allowed"));
        }
        let path = ObjPath::parse(key).map_err(|e| io_err("resolve", location, e))?;
        let mut stores = self.stores.lock();
        if let Some(s) = stores.get(&root) {
            return Ok((root, s.clone(), path));
        }
        let store: Arc<dyn ObjectStore> = if root.is_empty() {
            Arc::new(DurableFs::new(&PathBuf::from("/")).map_err(|e| io_err("open", "/", e))?)
        } else {
            basalt_ingest::home::open_deep_store(&std::env::temp_dir(), Some(&root))
                .map_err(|e| io_err("open", &root, e))?
                .0
        };
        stores.insert(root.clone(), store.clone());
        Ok((root, store, path))
    }
}

#[async_trait]
#[typetag::serde]
impl Storage for ObjectStorage {
    async fn exists(&self, path: &str) -> iceberg::Result<bool> {
        let (store, p) = self.resolve(path)?;
        match store.head(&p).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(io_err("head", path, e)),
        }
    }

    async fn metadata(&self, path: &str) -> iceberg::Result<FileMetadata> {
        let (store, p) = self.resolve(path)?;
        let meta = store.head(&p).await.map_err(|e| io_err("head", path, e))?;
        Ok(FileMetadata { size: meta.size })
    }

    async fn read(&self, path: &str) -> iceberg::Result<Bytes> {
        let (store, p) = self.resolve(path)?;
        let got = store.get(&p).await.map_err(|e| io_err("get", path, e))?;
        got.bytes().await.map_err(|e| io_err("read", path, e))
    }

    async fn reader(&self, path: &str) -> iceberg::Result<Box<dyn FileRead>> {
        let (store, p) = self.resolve(path)?;
        Ok(Box::new(RangeReader {
            store,
            path: p,
            location: path.to_string(),
        }))
    }

    async fn write(&self, path: &str, bs: Bytes) -> iceberg::Result<()> {
        let (store, p) = self.resolve(path)?;
        store
            .put(&p, bs.into())
            .await
            .map_err(|e| io_err("put", path, e))?;
        Ok(())
    }

    async fn writer(&self, path: &str) -> iceberg::Result<Box<dyn FileWrite>> {
        let (store, p) = self.resolve(path)?;
        Ok(Box::new(StreamWriter {
            inner: object_store::buffered::BufWriter::new(store, p),
            location: path.to_string(),
        }))
    }

    async fn delete(&self, path: &str) -> iceberg::Result<()> {
        let (store, p) = self.resolve(path)?;
        match store.delete(&p).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io_err("delete", path, e)),
        }
    }

    async fn delete_prefix(&self, path: &str) -> iceberg::Result<()> {
        let (store, p) = self.resolve(path.trim_end_matches('/'))?;
        let found: Vec<_> = store
            .list(Some(&p))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| io_err("list", path, e))?;
        for o in found {
            match store.delete(&o).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(io_err("delete", o.as_ref(), e)),
            }
        }
        Ok(())
    }

    async fn delete_stream(&self, mut paths: BoxStream<'static, String>) -> iceberg::Result<()> {
        while let Some(p) = paths.next().await {
            self.delete(&p).await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> iceberg::Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.shared()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> iceberg::Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.shared()), path.to_string()))
    }
}

impl ObjectStorage {
    /// A storage sharing this one's open stores.
    fn shared(&self) -> ObjectStorage {
        ObjectStorage {
            stores: self.stores.clone(),
        }
    }
}

/// Ranged reads of one object.
struct RangeReader {
    store: Arc<dyn ObjectStore>,
    path: ObjPath,
    location: String,
}

#[async_trait]
impl FileRead for RangeReader {
    async fn read(&self, range: Range<u64>) -> iceberg::Result<Bytes> {
        self.store
            .get_range(&self.path, range)
            .await
            .map_err(|e| io_err("read", &self.location, e))
    }
}

/// A streamed upload (multipart on S3), visible only once closed.
struct StreamWriter {
    inner: object_store::buffered::BufWriter,
    location: String,
}

#[async_trait]
impl FileWrite for StreamWriter {
    async fn write(&mut self, bs: Bytes) -> iceberg::Result<()> {
        self.inner
            .put(bs)
            .await
            .map_err(|e| io_err("write", &self.location, e))
    }

    async fn close(&mut self) -> iceberg::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.inner
            .shutdown()
            .await
            .map_err(|e| io_err("close", &self.location, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn files_round_trip_and_escapes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = ObjectStorage::default();
        let loc = format!("file://{}/a/b.bin", dir.path().display());
        s.write(&loc, Bytes::from_static(b"hello world"))
            .await
            .unwrap();
        assert!(s.exists(&loc).await.unwrap());
        assert_eq!(s.metadata(&loc).await.unwrap().size, 11);
        let r = s.reader(&loc).await.unwrap();
        assert_eq!(&r.read(6..11).await.unwrap()[..], b"world");
        let mut w = s.writer(&format!("{loc}2")).await.unwrap();
        w.write(Bytes::from_static(b"ab")).await.unwrap();
        w.write(Bytes::from_static(b"cd")).await.unwrap();
        w.close().await.unwrap();
        assert_eq!(&s.read(&format!("{loc}2")).await.unwrap()[..], b"abcd");
        s.delete(&loc).await.unwrap();
        assert!(!s.exists(&loc).await.unwrap());
        for bad in [
            "file://relative/x",
            "http://h/x",
            "file:///a/../etc/passwd",
            "s3://bucket",
        ] {
            assert!(s.exists(bad).await.is_err(), "{bad}");
        }
    }
}
