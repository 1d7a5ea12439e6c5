//! The object stores behind `s3://`, `az://` and `gs://`: built from each cloud's usual
//! environment, once per bucket, and shared by every job and by the storage sync.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::{BackoffConfig, ObjectStore, RetryConfig};

/// A cloud whose objects a URL scheme names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Cloud {
    S3,
    Azure,
    Gcs,
}

impl Cloud {
    pub(crate) fn from_scheme(scheme: &str) -> Option<Cloud> {
        match scheme {
            "s3" => Some(Cloud::S3),
            "az" => Some(Cloud::Azure),
            "gs" => Some(Cloud::Gcs),
            _ => None,
        }
    }

    pub(crate) fn scheme(self) -> &'static str {
        match self {
            Cloud::S3 => "s3",
            Cloud::Azure => "az",
            Cloud::Gcs => "gs",
        }
    }
}

/// The variables that object_store's `from_env` builders read (`AWS_*`, `AZURE_*`,
/// `GOOGLE_*`, `SERVICE_ACCOUNT`, `IDENTITY_ENDPOINT`), captured once. Tests pass
/// their own instead of changing the process environment.
#[derive(Clone, Default)]
pub struct CloudEnv {
    vars: Vec<(String, String)>,
}

impl CloudEnv {
    /// The process environment, as `AmazonS3Builder::from_env()` and its siblings see it.
    pub fn from_process() -> Self {
        Self::from_pairs(std::env::vars())
    }

    /// Variables by their environment names, e.g. `("AWS_ENDPOINT_URL", "http://…")`.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let vars = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(k, _)| {
                ["AWS_", "AZURE_", "GOOGLE_"]
                    .iter()
                    .any(|p| k.starts_with(p))
                    || k == "SERVICE_ACCOUNT"
                    || k == "IDENTITY_ENDPOINT"
            })
            .collect();
        Self { vars }
    }

    /// `(lowercase key, value)` of the variables with `prefix`, as the builders parse them.
    fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (String, &'a str)> + 'a {
        self.vars
            .iter()
            .filter(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Names only: the values hold access keys.
impl fmt::Debug for CloudEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.vars.iter().map(|(k, _)| k))
            .finish()
    }
}

/// Retries inside one request: a few quick ones for a blip; the job's own retry
/// (`RETRY_DELAYS`) handles a store that stays down, without holding a worker slot.
fn retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: Duration::from_secs(20),
    }
}

/// Builds the store of one bucket or container from `env`; no network is touched.
pub(crate) fn build(
    cloud: Cloud,
    bucket: &str,
    env: &CloudEnv,
) -> object_store::Result<Arc<dyn ObjectStore>> {
    Ok(match cloud {
        Cloud::S3 => {
            let builder = env
                .with_prefix("AWS_")
                .fold(
                    AmazonS3Builder::new(),
                    |b, (k, v)| match k.parse::<AmazonS3ConfigKey>() {
                        Ok(key) => b.with_config(key, v),
                        Err(_) => b,
                    },
                );
            Arc::new(
                builder
                    .with_bucket_name(bucket)
                    .with_retry(retry())
                    .build()?,
            )
        }
        Cloud::Azure => {
            let mut builder =
                env.with_prefix("AZURE_")
                    .fold(MicrosoftAzureBuilder::new(), |b, (k, v)| match k
                        .parse::<AzureConfigKey>()
                    {
                        Ok(key) => b.with_config(key, v),
                        Err(_) => b,
                    });
            if let Some(endpoint) = env.get("IDENTITY_ENDPOINT") {
                builder = builder.with_msi_endpoint(endpoint);
            }
            Arc::new(
                builder
                    .with_container_name(bucket)
                    .with_retry(retry())
                    .build()?,
            )
        }
        Cloud::Gcs => {
            let mut builder = GoogleCloudStorageBuilder::new();
            if let Some(path) = env.get("SERVICE_ACCOUNT") {
                builder = builder.with_service_account_path(path);
            }
            let builder = env.with_prefix("GOOGLE_").fold(builder, |b, (k, v)| match k
                .parse::<GoogleConfigKey>(
            ) {
                Ok(key) => b.with_config(key, v),
                Err(_) => b,
            });
            Arc::new(
                builder
                    .with_bucket_name(bucket)
                    .with_retry(retry())
                    .build()?,
            )
        }
    })
}

/// Stores kept at most. With `FILE_BUCKETS` empty, jobs choose the bucket names: past
/// this many, a store is built for the one job and dropped, so that jobs naming
/// ever new buckets cannot grow the process without bound.
const MAX_CACHED: usize = 64;

/// The stores built so far, one per (cloud, bucket): connections and credentials
/// are reused across jobs instead of being set up for each.
#[derive(Debug)]
pub(crate) struct Stores {
    env: CloudEnv,
    built: Mutex<HashMap<(Cloud, String), Arc<dyn ObjectStore>>>,
}

impl Stores {
    pub(crate) fn new(env: CloudEnv) -> Self {
        Self {
            env,
            built: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn get(
        &self,
        cloud: Cloud,
        bucket: &str,
    ) -> object_store::Result<Arc<dyn ObjectStore>> {
        // A poisoned lock only means another job panicked while inserting: the map
        // itself is still whole.
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(store) = built.get(&(cloud, bucket.to_owned())) {
            return Ok(store.clone());
        }
        let store = build(cloud, bucket, &self.env)?;
        if built.len() < MAX_CACHED {
            built.insert((cloud, bucket.to_owned()), store.clone());
        }
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cloud_variables_are_kept_and_never_shown() {
        let env = CloudEnv::from_pairs([
            ("AWS_SECRET_ACCESS_KEY", "hush"),
            ("PATH", "/bin"),
            ("ENDPOINT", "http://elsewhere"),
            ("AZURE_STORAGE_ACCOUNT_KEY", "hush"),
        ]);
        let shown = format!("{env:?}");
        assert_eq!(
            shown,
            r#"["AWS_SECRET_ACCESS_KEY", "AZURE_STORAGE_ACCOUNT_KEY"]"#
        );
    }

    #[test]
    fn stores_are_built_once_per_bucket() {
        let env = CloudEnv::from_pairs([
            ("AWS_ACCESS_KEY_ID", "k"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("AWS_REGION", "us-east-1"),
        ]);
        let stores = Stores::new(env);
        let a = stores.get(Cloud::S3, "a").unwrap();
        assert!(Arc::ptr_eq(&a, &stores.get(Cloud::S3, "a").unwrap()));
        assert!(!Arc::ptr_eq(&a, &stores.get(Cloud::S3, "b").unwrap()));
        for i in 0..MAX_CACHED {
            stores.get(Cloud::S3, &format!("bucket-{i}")).unwrap();
        }
        assert_eq!(stores.built.lock().unwrap().len(), MAX_CACHED);
        assert!(Arc::ptr_eq(&a, &stores.get(Cloud::S3, "a").unwrap()));
    }

    #[test]
    fn an_unconfigured_azure_account_is_an_error_not_a_panic() {
        assert!(build(Cloud::Azure, "c", &CloudEnv::default()).is_err());
    }
}
