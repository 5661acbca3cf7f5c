//! Blob uploads to a registry in chunks, reporting bytes as they go.
//!
//! oci-client pushes a blob in one go from the caller's point of view (its chunks are internal
//! and report nothing), so a large component would show no progress until it is done. This is
//! the OCI distribution spec's chunked upload (`POST` a session, `PATCH` each chunk with its
//! `Content-Range`, `PUT` with the digest), authorised with the token oci-client negotiated.

use oci_client::secrets::RegistryAuth;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION};
use reqwest::{Response, StatusCode, Url};

use super::{PackageError, Progress, digest};

/// Bytes per `PATCH`: few enough requests for a slow link, frequent enough reports.
pub(crate) const CHUNK_BYTES: usize = 4 << 20;

/// One repository on one registry, with the credentials to push there.
pub(crate) struct BlobUploader {
    http: reqwest::Client,
    /// `http(s)://registry/v2/repository/`.
    repository_url: Url,
    /// A bearer token, basic credentials, or none.
    credentials: RegistryAuth,
    chunk_bytes: usize,
}

impl BlobUploader {
    /// An uploader to `repository` on `registry` over `scheme`.
    pub(crate) fn new(
        scheme: &str,
        registry: &str,
        repository: &str,
        credentials: RegistryAuth,
        chunk_bytes: usize,
    ) -> Result<Self, PackageError> {
        let repository_url = Url::parse(&format!("{scheme}://{registry}/v2/{repository}/"))
            .map_err(|err| PackageError::Invalid(format!("registry {registry:?}, repository {repository:?}: {err}")))?;
        Ok(Self { http: reqwest::Client::new(), repository_url, credentials, chunk_bytes: chunk_bytes.max(1) })
    }

    /// Uploads `blob` unless the registry has it already; `progress` hears `name` and the bytes
    /// sent after each chunk.
    pub(crate) async fn upload(&self, name: &str, blob: &[u8], progress: Progress<'_>) -> Result<(), PackageError> {
        let total = blob.len() as u64;
        let digest = digest(blob);
        progress(name, 0, total);
        // Pushed before, or shared with another package: nothing to send.
        let existing = self.send(self.http.head(self.url(&format!("blobs/{digest}"))?)).await?;
        if existing.status() == StatusCode::OK {
            progress(name, total, total);
            return Ok(());
        }
        let session = self.send(self.http.post(self.url("blobs/uploads/")?).header(CONTENT_LENGTH, 0)).await?;
        let mut location = self.next_location(session, StatusCode::ACCEPTED, "starting the upload").await?;
        let mut sent = 0;
        for chunk in blob.chunks(self.chunk_bytes) {
            let range = format!("{}-{}", sent, sent + chunk.len() - 1);
            let patch = self
                .http
                .patch(location)
                .header(CONTENT_RANGE, range)
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, chunk.len())
                .body(chunk.to_vec());
            let answer = self.send(patch).await?;
            location = self.next_location(answer, StatusCode::ACCEPTED, "sending a chunk").await?;
            sent += chunk.len();
            progress(name, sent as u64, total);
        }
        location.query_pairs_mut().append_pair("digest", &digest);
        let done = self.send(self.http.put(location).header(CONTENT_LENGTH, 0)).await?;
        self.next_location(done, StatusCode::CREATED, "finishing the upload").await?;
        Ok(())
    }

    fn url(&self, path: &str) -> Result<Url, PackageError> {
        self.repository_url.join(path).map_err(|err| PackageError::Invalid(err.to_string()))
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Response, PackageError> {
        let request = match &self.credentials {
            RegistryAuth::Bearer(token) => request.bearer_auth(token),
            RegistryAuth::Basic(user, password) => request.basic_auth(user, Some(password)),
            RegistryAuth::Anonymous => request,
        };
        request.send().await.map_err(|err| PackageError::Registry(format!("{err}")))
    }

    /// Checks the registry's answer and takes the upload's next URL from its `Location`, which
    /// may be relative to the registry.
    async fn next_location(&self, answer: Response, expected: StatusCode, step: &str) -> Result<Url, PackageError> {
        if answer.status() != expected {
            let status = answer.status();
            let body = answer.text().await.unwrap_or_default();
            return Err(PackageError::Registry(format!(
                "{step}: the registry answered {status} (expected {expected}): {}",
                body.trim()
            )));
        }
        let location = answer
            .headers()
            .get(LOCATION)
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| PackageError::Registry(format!("{step}: the registry's answer has no Location")))?;
        self.repository_url
            .join(location)
            .map_err(|err| PackageError::Registry(format!("{step}: bad Location {location:?}: {err}")))
    }
}
