//! Where backups go: a directory (`file:///absolute/path`, e.g. a mounted volume) or
//! S3-compatible storage (`s3://bucket/prefix`), behind one [`Destination`] over the
//! `object_store` crate. S3 credentials, region and endpoint come from the node's environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL` for storage
//! other than AWS, `AWS_ALLOW_HTTP=true` for a plaintext endpoint), as every S3 tool reads them.

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload, WriteMultipart};

use crate::error::Error;

/// Size of the pieces a file is read and uploaded in.
const CHUNK: usize = 8 << 20;

/// A backup destination: a store and the prefix under which everything lives.
#[derive(Clone)]
pub struct Destination {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    url: String,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destination").field("url", &self.url).finish()
    }
}

/// An object's name and size, as a listing gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Relative to the destination's prefix.
    pub name: String,
    pub size: u64,
}

fn invalid(url: &str, why: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!(
        "backup destination '{url}' is not usable: {why}; give file:///absolute/path or \
         s3://bucket/prefix"
    ))
}

fn failed(url: &str, what: &str, e: object_store::Error) -> Error {
    Error::Backup(format!(
        "{what} at {url} failed: {e}; check that the destination exists and that this node may \
         write to it (for S3: the AWS_* variables of the node)"
    ))
}

impl Destination {
    /// Parses and opens a destination URL. Nothing is read or written yet (a directory is
    /// created).
    pub fn open(url: &str) -> Result<Destination, Error> {
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(invalid(url, "a file:// destination needs an absolute path"));
            }
            std::fs::create_dir_all(path)
                .map_err(|e| invalid(url, format!("cannot create {path}: {e}")))?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(path)
                .map_err(|e| invalid(url, e))?;
            return Ok(Destination {
                store: Arc::new(store),
                prefix: String::new(),
                url: url.into(),
            });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid(url, "no bucket"));
            }
            let endpoint =
                std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT")).ok();
            let mut builder =
                object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
            if let Some(endpoint) = endpoint {
                let plaintext = endpoint.starts_with("http://");
                builder = builder.with_endpoint(endpoint).with_allow_http(plaintext);
            }
            let store = builder.build().map_err(|e| invalid(url, e))?;
            return Ok(Destination {
                store: Arc::new(store),
                prefix: prefix.trim_matches('/').to_string(),
                url: url.into(),
            });
        }
        Err(invalid(url, "unknown scheme"))
    }

    /// The URL it was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, name: &str) -> Result<ObjectPath, Error> {
        let full = match self.prefix.as_str() {
            "" => name.to_string(),
            p => format!("{p}/{name}"),
        };
        ObjectPath::parse(&full).map_err(|e| invalid(&self.url, e))
    }

    /// The size of an object, or None when there is none of that name.
    pub async fn size(&self, name: &str) -> Result<Option<u64>, Error> {
        match self.store.head(&self.path(name)?).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(failed(&self.url, &format!("reading the size of {name}"), e)),
        }
    }

    /// Writes a small object whole.
    pub async fn put(&self, name: &str, body: Vec<u8>) -> Result<(), Error> {
        self.store
            .put(&self.path(name)?, PutPayload::from(body))
            .await
            .map(|_| ())
            .map_err(|e| failed(&self.url, &format!("writing {name}"), e))
    }

    /// Reads an object whole (manifests), None when there is none of that name.
    pub async fn get(&self, name: &str) -> Result<Option<Bytes>, Error> {
        match self.store.get(&self.path(name)?).await {
            Ok(r) => r
                .bytes()
                .await
                .map(Some)
                .map_err(|e| failed(&self.url, &format!("reading {name}"), e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(failed(&self.url, &format!("reading {name}"), e)),
        }
    }

    /// Uploads a local file in pieces (a multipart upload on S3); returns its size.
    pub async fn upload(&self, name: &str, file: &std::path::Path) -> Result<u64, Error> {
        let upload = self
            .store
            .put_multipart(&self.path(name)?)
            .await
            .map_err(|e| failed(&self.url, &format!("starting the upload of {name}"), e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK);
        let mut f = tokio::fs::File::open(file)
            .await
            .map_err(|e| Error::Storage(format!("cannot read {}: {e}", file.display())))?;
        let mut total = 0u64;
        let mut buf = vec![0u8; CHUNK];
        loop {
            use tokio::io::AsyncReadExt;
            let n = f
                .read(&mut buf)
                .await
                .map_err(|e| Error::Storage(format!("cannot read {}: {e}", file.display())))?;
            if n == 0 {
                break;
            }
            writer
                .wait_for_capacity(2)
                .await
                .map_err(|e| failed(&self.url, &format!("uploading {name}"), e))?;
            writer.write(&buf[..n]);
            total += n as u64;
        }
        writer.finish().await.map_err(|e| failed(&self.url, &format!("finishing {name}"), e))?;
        Ok(total)
    }

    /// Downloads an object to a local file, streaming; returns its size.
    pub async fn download(&self, name: &str, file: &std::path::Path) -> Result<u64, Error> {
        use tokio::io::AsyncWriteExt;
        let result = self
            .store
            .get(&self.path(name)?)
            .await
            .map_err(|e| failed(&self.url, &format!("reading {name}"), e))?;
        let mut out = tokio::fs::File::create(file)
            .await
            .map_err(|e| Error::Storage(format!("cannot create {}: {e}", file.display())))?;
        let mut stream = result.into_stream();
        let mut total = 0u64;
        while let Some(chunk) =
            stream.try_next().await.map_err(|e| failed(&self.url, &format!("reading {name}"), e))?
        {
            out.write_all(&chunk)
                .await
                .map_err(|e| Error::Storage(format!("cannot write {}: {e}", file.display())))?;
            total += chunk.len() as u64;
        }
        out.flush()
            .await
            .map_err(|e| Error::Storage(format!("cannot write {}: {e}", file.display())))?;
        Ok(total)
    }

    /// Every object whose name starts with `dir/`.
    pub async fn list(&self, dir: &str) -> Result<Vec<Object>, Error> {
        let prefix = self.path(dir)?;
        let skip = match self.prefix.as_str() {
            "" => 0,
            p => p.len() + 1,
        };
        let metas: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| failed(&self.url, &format!("listing {dir}"), e))?;
        Ok(metas
            .into_iter()
            .map(|m| Object { name: m.location.as_ref()[skip..].to_string(), size: m.size })
            .collect())
    }

    /// Deletes an object (one that is already gone is not an error).
    pub async fn delete(&self, name: &str) -> Result<(), Error> {
        match self.store.delete(&self.path(name)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(failed(&self.url, &format!("deleting {name}"), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        for (url, why) in [
            ("file://relative/dir", "absolute path"),
            ("s3:///prefix", "no bucket"),
            ("ftp://host/x", "unknown scheme"),
        ] {
            let err = Destination::open(url).unwrap_err().to_string();
            assert!(err.contains(why) && err.contains("s3://bucket/prefix"), "{url}: {err}");
        }
    }

    #[tokio::test]
    async fn a_directory_holds_what_is_written_and_lists_it_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("dest").display());
        let d = Destination::open(&url).unwrap();
        d.put("backups/b1/backup.json", b"{}".to_vec()).await.unwrap();
        let local = dir.path().join("f");
        std::fs::write(&local, vec![3u8; (CHUNK * 2) + 5]).unwrap();
        assert_eq!(d.upload("files/x/000001.sst", &local).await.unwrap(), (CHUNK * 2 + 5) as u64);
        assert_eq!(d.size("files/x/000001.sst").await.unwrap(), Some((CHUNK * 2 + 5) as u64));
        assert_eq!(d.size("files/x/000002.sst").await.unwrap(), None);
        let listed = d.list("files").await.unwrap();
        assert_eq!(
            listed,
            vec![Object { name: "files/x/000001.sst".into(), size: (CHUNK * 2 + 5) as u64 }]
        );
        let back = dir.path().join("back");
        d.download("files/x/000001.sst", &back).await.unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&local).unwrap());
        assert_eq!(d.get("backups/b1/backup.json").await.unwrap().unwrap().as_ref(), b"{}");
        d.delete("files/x/000001.sst").await.unwrap();
        d.delete("files/x/000001.sst").await.unwrap();
        assert!(d.list("files").await.unwrap().is_empty());
        assert_eq!(d.get("nothing").await.unwrap(), None);
    }
}
