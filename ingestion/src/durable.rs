//! Durable local writes. In: objects and files Basalt writes to a local disk — segments and
//! metastore versions in a local deep store, downloaded cache files, the local catalog. Out:
//! the same writes, on disk before the call returns: the file is fsynced, then its directory,
//! so an acknowledged ingest, seal or checkpoint survives a power cut, not only a crash.
//!
//! object_store's `LocalFileSystem` writes through a temporary file and a rename (or a hard
//! link for create-only puts) but never syncs; [`DurableFs`] wraps it and syncs after every
//! successful put. Multipart uploads are not used for local stores.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// Syncs a file's contents and then the directory entry that names it.
pub fn sync_path(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Syncs a directory (its entries: files created, renamed or removed in it).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` through a temporary file and a rename, synced: after it returns
/// the file is complete on disk, and a crash leaves either the old file or the new one.
pub fn write_file_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// Files under `dir` (recursively) left by a local put that never finished: object_store's
/// `LocalFileSystem` writes `<name>#<n>` and renames it, so a process killed mid-put leaves
/// the `#<n>` file behind. Its listings skip such names, so only a walk of the directory
/// finds them. Each comes with its modification time. A missing `dir` has none.
pub fn interrupted_uploads(dir: &Path) -> std::io::Result<Vec<(PathBuf, std::time::SystemTime)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let ty = entry.file_type()?;
            if ty.is_dir() {
                stack.push(entry.path());
                continue;
            }
            let name = entry.file_name();
            let staged = name
                .to_str()
                .and_then(|n| n.rsplit_once('#'))
                .is_some_and(|(base, n)| {
                    !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
                });
            if ty.is_file() && staged {
                out.push((entry.path(), entry.metadata()?.modified()?));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A local directory as an object store whose puts are durable when they return.
#[derive(Debug)]
pub struct DurableFs {
    inner: Arc<LocalFileSystem>,
    root: PathBuf,
}

impl DurableFs {
    pub fn new(root: &Path) -> Result<DurableFs> {
        Ok(DurableFs {
            inner: Arc::new(LocalFileSystem::new_with_prefix(root)?),
            root: root.to_path_buf(),
        })
    }

    async fn sync(&self, location: &ObjPath) -> Result<()> {
        let file = self.root.join(location.as_ref());
        tokio::task::spawn_blocking(move || sync_path(&file))
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "DurableFs",
                source: Box::new(e),
            })?
            .map_err(|e| object_store::Error::Generic {
                store: "DurableFs",
                source: Box::new(e),
            })
    }
}

impl fmt::Display for DurableFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DurableFs({})", self.root.display())
    }
}

#[async_trait]
impl ObjectStore for DurableFs {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let r = self.inner.put_opts(location, payload, opts).await?;
        self.sync(location).await?;
        Ok(r)
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &ObjPath, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<ObjPath>>,
    ) -> BoxStream<'static, Result<ObjPath>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&ObjPath>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&ObjPath>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &ObjPath, to: &ObjPath, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        self.sync(to).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn puts_land_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = DurableFs::new(dir.path()).unwrap();
        let p = ObjPath::from("a/b/c.json");
        s.put(&p, PutPayload::from(vec![1u8, 2, 3])).await.unwrap();
        assert_eq!(
            s.get(&p).await.unwrap().bytes().await.unwrap().as_ref(),
            [1, 2, 3]
        );
        let create = PutOptions {
            mode: object_store::PutMode::Create,
            ..Default::default()
        };
        assert!(matches!(
            s.put_opts(&p, PutPayload::from(vec![9u8]), create).await,
            Err(object_store::Error::AlreadyExists { .. })
        ));
        let f = dir.path().join("x/y.bin");
        write_file_durably(&f, b"hello").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"hello");
    }

    #[tokio::test]
    async fn interrupted_uploads_are_found_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let s = DurableFs::new(dir.path()).unwrap();
        s.put(&ObjPath::from("t/g/a.seg"), PutPayload::from(vec![1u8]))
            .await
            .unwrap();
        for name in [
            "t/g/b.seg#1",
            "t/g/deeper/c.seg#23",
            "t/odd#x",
            "t/#7",
            "t/d#",
        ] {
            let f = dir.path().join(name);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, b"partial").unwrap();
        }
        let found: Vec<String> = interrupted_uploads(&dir.path().join("t"))
            .unwrap()
            .into_iter()
            .map(|(p, _)| p.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(found, ["t/g/b.seg#1", "t/g/deeper/c.seg#23"]);
        // The store's own listing does not see them: that is why the walk exists.
        let listed: Vec<ObjectMeta> = s.list(None).try_collect().await.unwrap();
        let mut listed: Vec<String> = listed.into_iter().map(|o| o.location.to_string()).collect();
        listed.sort();
        assert_eq!(listed, ["t/d#", "t/g/a.seg", "t/odd#x"]);
        assert!(interrupted_uploads(&dir.path().join("missing"))
            .unwrap()
            .is_empty());
    }
}
