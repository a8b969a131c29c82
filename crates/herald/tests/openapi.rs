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

    let hub = Hub::start("[namespaces.default]\n[namespaces.board]\nkeyed = true\n");
    let bodies = [
        (
            "/api/publish",
            json!({"channel": "board:1", "data": {"a": 1}, "key": "k", "op": "upsert"}),
        ),
        ("/api/broadcast", json!({"channels": ["a", "b"], "data": 1})),
        ("/api/disconnect", json!({"user": "nobody"})),
        ("/api/token", json!({"sub": "u", "channels": ["*"]})),
    ];
    for (method, path) in &served {
        let url = match path.as_str() {
            "/api/history" => "/api/history?channel=board:1".to_string(),
            "/api/state" => "/api/state?channel=board:1".to_string(),
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
        }
    }
}
