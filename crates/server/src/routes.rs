//! Which of the hub's routes an application mounts: [`Routes`] builds an axum router with `/ws`
//! alone or with SSE, the HTTP API, health, metrics and the web pages, to be merged or nested
//! (`Router::nest("/live", …)`) into the application's own. Every page works under any prefix
//! (dashboard at `/live`, demo at `/live/demo`): assets are linked relatively and the page
//! scripts derive their WebSocket and API URLs from the page's address.

use crate::hub::{Hub, MAINTAIN_EVERY};
use crate::{api, sse, ws};
use axum::Router;
use axum::extract::{OriginalUri, Path};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use std::time::Duration;

/// A choice of the hub's routes, e.g.
/// `Routes::new(hub).ws().sse().into_router()`; [`Routes::all`] is what [`crate::router`] and
/// `herald serve` mount.
pub struct Routes {
    /// The hub every route serves.
    hub: Arc<Hub>,
    /// `/ws`: the WebSocket endpoint.
    ws: bool,
    /// `/sse/{channel}`, `/sse` and `/sse/session/{id}`: the Server-Sent Events fallbacks.
    sse: bool,
    /// `/api/*`: the HTTP API (API key).
    api: bool,
    /// `/health` and `/ready`, for load balancers and orchestrators.
    health: bool,
    /// `/metrics`, for Prometheus.
    metrics: bool,
    /// `/` (dashboard), `/demo` and `/static/*`: the embedded web pages.
    ui: bool,
    /// How often the hub's housekeeping runs once [`Routes::into_router`] starts it.
    maintain_every: Duration,
}

impl Routes {
    /// No route yet: add each with its method.
    pub fn new(hub: Arc<Hub>) -> Routes {
        Routes {
            hub,
            ws: false,
            sse: false,
            api: false,
            health: false,
            metrics: false,
            ui: false,
            maintain_every: MAINTAIN_EVERY,
        }
    }

    /// Every route: WebSocket, SSE, API, health, metrics and the web pages.
    pub fn all(hub: Arc<Hub>) -> Routes {
        Routes::new(hub).ws().sse().api().health().metrics().ui()
    }

    /// Mounts `/ws`.
    pub fn ws(mut self) -> Routes {
        self.ws = true;
        self
    }

    /// Mounts `/sse/{channel}` and the multiplexed `/sse` with `/sse/session/{id}`.
    pub fn sse(mut self) -> Routes {
        self.sse = true;
        self
    }

    /// Mounts the HTTP API, `/api/*` (the dashboard needs it).
    pub fn api(mut self) -> Routes {
        self.api = true;
        self
    }

    /// Mounts `/health` and `/ready`.
    pub fn health(mut self) -> Routes {
        self.health = true;
        self
    }

    /// Mounts `/metrics`.
    pub fn metrics(mut self) -> Routes {
        self.metrics = true;
        self
    }

    /// Mounts the dashboard at `/`, the demo at `/demo` and their assets at `/static/*`
    /// (the dashboard needs [`Routes::api`] and [`Routes::ws`], the demo [`Routes::ws`]).
    pub fn ui(mut self) -> Routes {
        self.ui = true;
        self
    }

    /// How often the hub's housekeeping runs ([`MAINTAIN_EVERY`] unless set).
    pub fn maintain_every(mut self, every: Duration) -> Routes {
        self.maintain_every = every;
        self
    }

    /// The router, and the hub's background work started ([`Hub::start`]; call inside a Tokio
    /// runtime). Serve it with `into_make_service_with_connect_info::<SocketAddr>()`: the
    /// per-IP limits read the peer address.
    pub fn into_router(self) -> Router {
        let started = self.hub.housekeeping_running();
        self.hub.start(self.maintain_every);
        if !started {
            // Ends with the housekeeping (Hub::stop) or the hub.
            tokio::spawn(crate::stats::run(Arc::downgrade(&self.hub)));
        }
        let mut router = Router::new();
        if self.ws {
            router = router.route("/ws", get(ws::upgrade));
        }
        if self.sse {
            router = router.route("/sse/{channel}", get(sse::stream)).merge(sse::mux::router());
        }
        if self.api {
            router = router.merge(api::router(self.hub.clone()));
        }
        if self.health {
            router = router.merge(api::health_router());
        }
        if self.metrics {
            router = router.merge(api::metrics_router());
        }
        if self.ui {
            router = router
                .route("/", get(dashboard))
                .route("/demo", get(demo))
                .route("/static/{*path}", get(|Path(path): Path<String>| asset(path)));
        }
        router.with_state(self.hub)
    }
}

/// The dashboard, at the mount point itself: `/`, or `/live` when nested there (axum gives a
/// nested router no `/live/`). Without a trailing slash its relative links (`static/…`, `demo`)
/// would resolve beside `/live`, so it gets a relative `<base>` one level down (`live/`), which
/// also holds behind a proxy that strips a prefix.
async fn dashboard(OriginalUri(uri): OriginalUri) -> Response {
    let path = uri.path();
    let base = match path.rsplit_once('/') {
        Some((_, last)) if !last.is_empty() => format!("<base href=\"{last}/\">"),
        _ => String::new(),
    };
    page("index.html", &[("<head>", &format!("<head>{base}"))]).await
}

/// The demo, at `{mount}/demo`: its relative links resolve under the mount point as they are;
/// its link back to the dashboard is `./` at the root and `../live` under `/live`.
async fn demo(OriginalUri(uri): OriginalUri) -> Response {
    let mount = uri.path().strip_suffix("/demo").unwrap_or_default();
    let dashboard = match mount.rsplit_once('/') {
        Some((_, last)) if !last.is_empty() => format!("../{last}"),
        _ => "./".to_string(),
    };
    page("demo.html", &[("{{dashboard}}", &dashboard)]).await
}

/// A page with its placeholders (`(from, to)`) filled in.
async fn page(file: &str, fills: &[(&str, &str)]) -> Response {
    let Some(found) = Assets::get(file) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let mut html = String::from_utf8_lossy(&found.data).into_owned();
    for (from, to) in fills {
        html = html.replacen(from, to, 1);
    }
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

/// The dashboard, demo and their assets, embedded at compile time so one binary is the product.
#[derive(rust_embed::Embed)]
#[folder = "web/"]
struct Assets;

async fn asset(path: impl AsRef<str>) -> Response {
    match Assets::get(path.as_ref()) {
        Some(file) => {
            ([(header::CONTENT_TYPE, file.metadata.mimetype().to_string())], file.data.into_owned())
                .into_response()
        }
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}
