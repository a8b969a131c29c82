//! The hub's HTTP API, for backends and the CLI: publish, broadcast, history, state, channels,
//! info. Requests carry the API key in the `x-api-key` header.

use herald_protocol::ErrorBody;
use herald_protocol::command::{HistoryQuery, PublishCommand};
use herald_protocol::reply::{HistoryResult, PublishResult, StateResult};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why an HTTP API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The base URL cannot be used.
    #[error("invalid base url {0:?}")]
    BadUrl(String),
    /// The request did not complete (connection refused, timeout, unreadable body).
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// The hub answered with an error object.
    #[error("hub answered {status}: {error}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The error object (code, name, message).
        error: ErrorBody,
    },
    /// The hub answered with a non-success status and no error object.
    #[error("hub answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The response body, as text.
        body: String,
    },
}

/// A client of the hub's HTTP API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: url::Url,
    api_key: Option<String>,
}

/// Turns a WebSocket URL (`ws://HOST:PORT/ws`, under a prefix `wss://HOST/live/ws`) into the
/// HTTP base (`http://HOST:PORT/`, `https://HOST/live/`), so a CLI given `--url` can reach the
/// API of the same hub.
pub fn http_base_from_ws(ws_url: &str) -> Result<String, ApiError> {
    let mut url = url::Url::parse(ws_url).map_err(|_| ApiError::BadUrl(ws_url.into()))?;
    let scheme = match url.scheme() {
        "ws" | "http" => "http",
        "wss" | "https" => "https",
        _ => return Err(ApiError::BadUrl(ws_url.into())),
    };
    url.set_scheme(scheme).map_err(|_| ApiError::BadUrl(ws_url.into()))?;
    let prefix = url.path().trim_end_matches('/').trim_end_matches("/ws").to_string();
    url.set_path(&format!("{prefix}/"));
    url.set_query(None);
    Ok(url.to_string())
}

/// Turns the hub's HTTP URL (`http://HOST:PORT`, or under a prefix `https://HOST/live`) into its
/// WebSocket endpoint (`ws://HOST:PORT/ws`, `wss://HOST/live/ws`), so one `HERALD_URL` serves
/// both `herald publish` and `herald sub`. A `ws://` or `wss://` URL is returned unchanged.
pub fn ws_url_from_http(url: &str) -> Result<String, ApiError> {
    let mut parsed = url::Url::parse(url).map_err(|_| ApiError::BadUrl(url.into()))?;
    let scheme = match parsed.scheme() {
        "ws" | "wss" => return Ok(url.to_string()),
        "http" => "ws",
        "https" => "wss",
        _ => return Err(ApiError::BadUrl(url.into())),
    };
    parsed.set_scheme(scheme).map_err(|_| ApiError::BadUrl(url.into()))?;
    let path = parsed.path().trim_end_matches('/').to_string();
    if !path.ends_with("/ws") {
        parsed.set_path(&format!("{path}/ws"));
    }
    Ok(parsed.to_string())
}

#[derive(Serialize)]
struct Broadcast<'a> {
    channels: &'a [String],
    #[serde(flatten)]
    publish: &'a PublishCommand,
}

impl ApiClient {
    /// A client for the hub at `base_url` (`http://HOST:PORT`, or mounted under a prefix
    /// `https://HOST/live`), sending `api_key` when given.
    pub fn new(base_url: &str, api_key: Option<String>) -> Result<ApiClient, ApiError> {
        let mut base = url::Url::parse(base_url).map_err(|_| ApiError::BadUrl(base_url.into()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(ApiError::BadUrl(base_url.into()));
        }
        // A trailing slash, so joined routes land under the prefix (`/live` + `api/…`).
        if !base.path().ends_with('/') {
            let prefixed = format!("{}/", base.path());
            base.set_path(&prefixed);
        }
        base.set_query(None);
        let http =
            reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build()?;
        Ok(ApiClient { http, base, api_key })
    }

    /// `path` (`/api/…`) under the base URL's path prefix.
    fn url(&self, path: &str) -> Result<url::Url, ApiError> {
        self.base.join(path.trim_start_matches('/')).map_err(|_| ApiError::BadUrl(path.into()))
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ApiError> {
        let request = match &self.api_key {
            Some(key) => request.header("x-api-key", key),
            None => request,
        };
        let response = request.send().await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response.json().await?);
        }
        let body = response.text().await.unwrap_or_default();
        #[derive(serde::Deserialize)]
        struct Wrapped {
            error: ErrorBody,
        }
        match serde_json::from_str::<Wrapped>(&body) {
            Ok(w) => Err(ApiError::Server { status: status.as_u16(), error: w.error }),
            Err(_) => Err(ApiError::Status { status: status.as_u16(), body }),
        }
    }

    async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        self.send(self.http.post(self.url(path)?).json(body)).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        self.send(self.http.get(self.url(path)?)).await
    }

    /// `POST /api/publish`: publishes one publication.
    pub async fn publish(&self, publish: &PublishCommand) -> Result<PublishResult, ApiError> {
        self.post("/api/publish", publish).await
    }

    /// `POST /api/broadcast`: publishes the same publication to several channels; returns the
    /// hub's answer as JSON (one result or error per channel).
    pub async fn broadcast(
        &self,
        channels: &[String],
        publish: &PublishCommand,
    ) -> Result<serde_json::Value, ApiError> {
        self.post("/api/broadcast", &Broadcast { channels, publish }).await
    }

    /// `GET /api/history?channel=..&limit=..&since=EPOCH:OFFSET&before=..`: reads a channel's
    /// history.
    pub async fn history(&self, query: &HistoryQuery) -> Result<HistoryResult, ApiError> {
        let mut params: Vec<(&str, String)> = vec![("channel", query.channel.clone())];
        if let Some(limit) = query.limit {
            params.push(("limit", limit.to_string()));
        }
        if let Some(since) = &query.since {
            params.push(("since", since.to_string()));
        }
        if let Some(before) = query.before {
            params.push(("before", before.to_string()));
        }
        self.send(self.http.get(self.url("/api/history")?).query(&params)).await
    }

    /// `GET /api/state?channel=..`: reads a keyed channel's records.
    pub async fn state(&self, channel: &str) -> Result<StateResult, ApiError> {
        self.send(self.http.get(self.url("/api/state")?).query(&[("channel", channel)])).await
    }

    /// `POST /api/disconnect`: closes every connection of `user` (close code 4503 `kicked`);
    /// returns the hub's answer (`{"disconnected": N}`).
    pub async fn disconnect(&self, user: &str) -> Result<serde_json::Value, ApiError> {
        self.post("/api/disconnect", &serde_json::json!({ "user": user })).await
    }

    /// `GET /api/channels`: the active channels, as the hub reports them.
    pub async fn channels(&self) -> Result<serde_json::Value, ApiError> {
        self.get("/api/channels").await
    }

    /// `GET /api/info`: node id, version, connection counts, as the hub reports them.
    pub async fn info(&self) -> Result<serde_json::Value, ApiError> {
        self.get("/api/info").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_urls_map_to_http_bases() {
        assert_eq!(http_base_from_ws("ws://127.0.0.1:7700/ws").unwrap(), "http://127.0.0.1:7700/");
        assert_eq!(http_base_from_ws("wss://h.example/ws?token=x").unwrap(), "https://h.example/");
        assert!(http_base_from_ws("ftp://x").is_err());
        assert_eq!(
            http_base_from_ws("wss://h.example/live/ws").unwrap(),
            "https://h.example/live/"
        );
    }

    #[test]
    fn api_routes_stay_under_the_base_urls_prefix() {
        let route = |base: &str| {
            ApiClient::new(base, None).unwrap().url("/api/publish").unwrap().to_string()
        };
        assert_eq!(route("http://127.0.0.1:7700"), "http://127.0.0.1:7700/api/publish");
        assert_eq!(route("http://127.0.0.1:7700/"), "http://127.0.0.1:7700/api/publish");
        assert_eq!(route("http://h/live"), "http://h/live/api/publish");
        assert_eq!(route("https://h/a/live/"), "https://h/a/live/api/publish");
    }

    #[test]
    fn http_urls_map_to_the_websocket_endpoint() {
        let ws = |u: &str| ws_url_from_http(u).unwrap();
        assert_eq!(ws("http://127.0.0.1:7700"), "ws://127.0.0.1:7700/ws");
        assert_eq!(ws("http://127.0.0.1:7700/"), "ws://127.0.0.1:7700/ws");
        assert_eq!(ws("https://h.example/live/"), "wss://h.example/live/ws");
        assert_eq!(ws("http://h:1/ws"), "ws://h:1/ws");
        assert_eq!(ws("http://h:1/?token=x"), "ws://h:1/ws?token=x");
        assert_eq!(ws("ws://127.0.0.1:7700/ws"), "ws://127.0.0.1:7700/ws");
        assert_eq!(ws("wss://h.example/x/ws"), "wss://h.example/x/ws");
        assert!(ws_url_from_http("ftp://x").is_err());
        assert!(ws_url_from_http("127.0.0.1:7700").is_err());
        // Round trip with the other direction.
        assert_eq!(http_base_from_ws(&ws("http://h:1")).unwrap(), "http://h:1/");
        assert_eq!(http_base_from_ws(&ws("http://h:1/live")).unwrap(), "http://h:1/live/");
    }
}
