//! `cxone-worker encode FILE`: validate and encode one local file, and print the
//! request body that `run` would send.

use std::io::{IsTerminal, Write};

use clap::Args;

use crate::config::{BodyArgs, ConfigError, LimitArgs, ProfileName};
use crate::cxone::profile::body_format;
use crate::encode::BodyFormat;
use crate::job::Failure;
use crate::source::Sources;

#[derive(Args, Debug, Clone)]
pub struct EncodeArgs {
    /// A local path or file:// reference.
    pub file: String,
    /// The content type a job would declare; sniffed from the bytes when absent.
    #[arg(long)]
    pub content_type: Option<String>,
    /// The job's metadata, as a JSON object.
    #[arg(long)]
    pub metadata: Option<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// The API profile whose body to print: seed, genesys (flat) or cxone.
    #[arg(long, env = "API_PROFILE", default_value = "seed")]
    pub api_profile: String,
    #[command(flatten)]
    pub body: BodyArgs,
}

impl EncodeArgs {
    /// The body's format, as `run` with the same settings would send it.
    pub fn format(&self) -> Result<BodyFormat, ConfigError> {
        let profile = ProfileName::ALL
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(self.api_profile.trim()))
            .map(|(_, p)| *p)
            .ok_or_else(|| ConfigError {
                var: "API_PROFILE",
                message: format!("{:?} is not one of seed, genesys, cxone", self.api_profile),
            })?;
        Ok(body_format(profile, &self.body.settings()?))
    }
}

/// Prints the body, or `error_kind: message` on stderr and exits 1.
pub async fn run(args: &EncodeArgs) -> anyhow::Result<()> {
    let limits = args.limits.settings()?;
    let format = args.format()?;
    let metadata = match &args.metadata {
        None => None,
        Some(raw) => Some(
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(raw)
                .map_err(|e| anyhow::anyhow!("--metadata is not a JSON object: {e}"))?,
        ),
    };
    let sources = Sources::local(limits.max_payload_bytes);
    let path = if args.file.starts_with("file://") || args.file.starts_with('/') {
        args.file.clone()
    } else {
        std::env::current_dir()?
            .join(&args.file)
            .display()
            .to_string()
    };
    let encoded = async {
        let opened = sources.open(&path).await?;
        let bytes = opened.read(limits.max_payload_bytes).await?;
        crate::encode::encode(
            &bytes,
            args.content_type.as_deref(),
            &limits.allowed_types,
            metadata.as_ref(),
            &format,
        )
    }
    .await;
    match encoded {
        Ok(encoded) => {
            let mut out = std::io::stdout().lock();
            out.write_all(&encoded.body)?;
            if out.is_terminal() {
                out.write_all(b"\n")?;
            }
            out.flush()?;
            Ok(())
        }
        Err(failure) => {
            let kind = match &failure {
                Failure::Permanent { kind, .. } => kind.as_str(),
                Failure::Retryable { .. } => "io_error",
                Failure::Systemic { cause, .. } => cause.as_str(),
            };
            eprintln!("{kind}: {}", failure.message());
            std::process::exit(1);
        }
    }
}
