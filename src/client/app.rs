//! `pushnode app create`: creates an app with `POST /v1/apps` using the admin token
//! (from `--admin-token` or `DATA/admin.token`) and prints the JSON answer
//! (`{"app_id","app_key","app_secret"}`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use loadgen::http_client::HttpClient;

use super::{print_line, runtime, DEFAULT_HTTP, HTTP_TIMEOUT};

#[derive(Debug, Clone, clap::Args)]
pub struct AppCreateArgs {
    /// App name.
    #[arg(long)]
    pub name: String,
    /// Package name of the app.
    #[arg(long, default_value = "")]
    pub package: String,
    /// Base URL of the node's HTTP API.
    #[arg(long, default_value = DEFAULT_HTTP)]
    pub http: String,
    /// Node data directory, where `admin.token` is read from.
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// Admin token (default: the content of DATA_DIR/admin.token).
    #[arg(long)]
    pub admin_token: Option<String>,
}

/// Reads and trims `DATA/admin.token`.
pub fn read_admin_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("admin.token");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading the admin token from {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(token.to_string())
}

pub fn run_app_create(args: AppCreateArgs) -> anyhow::Result<()> {
    let token = match &args.admin_token {
        Some(t) => t.trim().to_string(),
        None => read_admin_token(&args.data_dir)?,
    };
    let http = HttpClient::new(&args.http, HTTP_TIMEOUT)?;
    let resp = runtime()?.block_on(http.create_app(&token, &args.name, &args.package))?.error_for_status()?;
    print_line(&resp.text())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_token_is_trimmed() {
        let dir = std::env::temp_dir().join(format!("pushnode-app-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("admin.token"), "abc123\n").unwrap();
        assert_eq!(read_admin_token(&dir).unwrap(), "abc123");
        std::fs::write(dir.join("admin.token"), "\n").unwrap();
        assert!(read_admin_token(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(read_admin_token(&dir).is_err());
    }
}
