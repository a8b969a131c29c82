//! docs/openapi.json and the server agree: the same routes, each served, and real responses
//! carry the fields the document marks required.

mod support;

use serde_json::{Value, json};
use std::collections::BTreeSet;
use support::*;

fn spec() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("docs/openapi.json"))
        .expect("valid JSON")
}

/// Resolves `$ref` and checks that `value` has every required property, recursively.
fn check(spec: &Value, schema: &Value, value: &Value, at: &str) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap();
        return check(spec, &spec["components"]["schemas"][name], value, at);
    }
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for field in required {
            let f = field.as_str().unwrap();
            assert!(value.get(f).is_some(), "{at}: missing required `{f}` in {value}");
        }
    }
    if let (Some(props), Some(obj)) =
        (schema.get("properties").and_then(Value::as_object), value.as_object())
    {
        for (name, sub) in props {
            if let Some(v) = obj.get(name) {
                check(spec, sub, v, &format!("{at}.{name}"));
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), value.as_array()) {
        for v in arr {
            if items.get("oneOf").is_none() {
                check(spec, items, v, &format!("{at}[]"));
            }
        }
    }
}

#[tokio::test]
async fn openapi_matches_the_server() {
    let spec = spec();
    let documented: BTreeSet<(String, String)> = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object().unwrap().keys().map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> =
        herald_server::api::ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(documented, served, "docs/openapi.json and api::ROUTES differ");

    let hub = Hub::start(
        "specs = [\"builtin:kanban\"]\n[limits]\nmax_api_body_bytes = 4096\n[namespaces.default]\n\
         [namespaces.board]\nkeyed = true\n\
         [namespaces.room]\npresence = true\n",
    );
    let bodies = [
        (
            "/api/publish",
            json!({"channel": "board:1", "data": {"a": 1}, "key": "k", "op": "upsert"}),
        ),
        ("/api/publish/batch", json!([{"channel": "a", "data": 1}, {"channel": "b", "data": 2}])),
        ("/api/broadcast", json!({"channels": ["a", "b"], "data": 1})),
        ("/api/disconnect", json!({"user": "nobody"})),
        ("/api/token", json!({"sub": "u", "channels": ["*"]})),
    ];
    for (method, path) in &served {
        let url = match path.as_str() {
            "/api/history" => "/api/history?channel=board:1".to_string(),
            "/api/state" => "/api/state?channel=board:1".to_string(),
            "/api/schema/{entity}" => "/api/schema/Task".to_string(),
            "/api/presence" => "/api/presence?channel=room:1".to_string(),
            "/api/presence_stats" => "/api/presence_stats?channel=room:1".to_string(),
            p => p.to_string(),
        };
        let body = bodies.iter().find(|(p, _)| p == path).map(|(_, b)| b.clone());
        let (status, value) = hub.api(&method.to_uppercase(), &url, body).await;
        assert_eq!(status, 200, "{method} {url}: {value}");
        let op = &spec["paths"][path][method];
        let schema = &op["responses"]["200"]["content"]["application/json"]["schema"];
        if !schema.is_null() {
            check(&spec, schema, &value, &format!("{method} {path}"));
        }
        // Every documented /api error response uses the Error schema.
        if path.starts_with("/api/") {
            let (status, value) = {
                let resp = reqwest::Client::new()
                    .request(method.to_uppercase().parse().unwrap(), hub.http(&url))
                    .send()
                    .await
                    .unwrap();
                (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
            };
            assert_eq!(status, 401);
            check(
                &spec,
                &spec["components"]["responses"]["Error"]["content"]["application/json"]["schema"],
                &value,
                path,
            );
            // Every status the server can answer on this route is documented for it.
            let mut answers = vec!["401", "429"];
            if method == "post" {
                // Over limits.max_api_body_bytes: 413 with the error object.
                let big = json!({"channel": "a", "data": "x".repeat(5000)});
                let (status, value) = hub.api("POST", path, Some(big)).await;
                assert_eq!((status, value["error"]["code"].as_u64()), (413, Some(111)), "{path}");
                answers.push("413");
            }
            for status in answers {
                assert!(
                    op["responses"][status].is_object(),
                    "{method} {path}: {status} undocumented"
                );
            }
        }
    }
}

/// Strings the server refuses when empty are documented with `minLength: 1`.
#[test]
fn identifiers_must_not_be_empty() {
    let spec = spec();
    let schemas = &spec["components"]["schemas"];
    let body = |path: &str| {
        spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"].clone()
    };
    let required_non_empty = [
        ("PublishRequest.channel", schemas["PublishRequest"]["properties"]["channel"].clone()),
        (
            "BroadcastRequest.channels[]",
            schemas["BroadcastRequest"]["properties"]["channels"]["items"].clone(),
        ),
        ("token.sub", body("/api/token")["properties"]["sub"].clone()),
        ("disconnect.user", body("/api/disconnect")["properties"]["user"].clone()),
    ];
    for (what, schema) in required_non_empty {
        assert_eq!(schema["minLength"], 1, "{what}: {schema}");
    }
    for path in ["/api/history", "/api/state"] {
        let params = spec["paths"][path]["get"]["parameters"].as_array().unwrap();
        let channel = params.iter().find(|p| p["name"] == "channel").expect("channel parameter");
        assert_eq!(channel["schema"]["minLength"], 1, "{path} channel");
    }
}

/// /metrics is documented with the media type it is served with.
#[tokio::test]
async fn metrics_media_type_is_the_served_one() {
    let spec = spec();
    let hub = Hub::start("[namespaces.default]\n");
    let resp = reqwest::get(hub.http("/metrics")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let served = resp.headers()["content-type"].to_str().unwrap().to_string();
    let text = resp.text().await.unwrap();
    assert!(text.trim_end().ends_with("# EOF"), "OpenMetrics text ends with # EOF");
    let documented: Vec<&String> = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(documented, vec![&served]);
}
