//! `Wait` and `WaitV2`: until conditions on objects hold (Go templates over the object, with
//! `{$...}` JSONPath), or the function's timeout.

use serde_json::Value;

use super::context::{Context, Error, Result};
use crate::cluster::{Cluster, ObjectRef};
use crate::crd::{JsonMap, ObjectReference};
use crate::render::{Location, params::json_value};

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WaitConditions {
    #[serde(default)]
    any_of: Vec<Condition>,
    #[serde(default)]
    all_of: Vec<Condition>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Condition {
    #[serde(default)]
    object_reference: ObjectReference,
    #[serde(default)]
    condition: String,
}

pub(super) async fn wait<C: Cluster>(ctx: &Context<C>, v2: bool) -> Result<JsonMap> {
    let timeout_src = ctx.str("timeout")?;
    let at = Location { argument: "timeout".into(), ..ctx.location.clone() };
    let timeout_text = ctx.renderer.render(&at, &timeout_src, &ctx.params)?;
    let timeout = super::duration::parse(timeout_text.trim())
        .ok()
        .ok_or_else(|| ctx.invalid("timeout", "a Go duration such as 10m"))?;
    let conditions: WaitConditions = serde_json::from_value(ctx.args.get("conditions").cloned().unwrap_or_default())
        .map_err(|_| ctx.invalid("conditions", "a map with anyOf and/or allOf lists of conditions"))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = None;
    loop {
        let mut met = None;
        for cond in &conditions.any_of {
            match evaluate(ctx, cond, v2).await {
                Ok(true) => met = Some(true),
                Ok(false) => {}
                Err(e) => last_error = Some(e.to_string()),
            }
            if met.is_some() {
                break;
            }
        }
        if met.is_none() && !conditions.all_of.is_empty() {
            let mut all = true;
            for cond in &conditions.all_of {
                match evaluate(ctx, cond, v2).await {
                    Ok(true) => {}
                    Ok(false) => all = false,
                    Err(e) => {
                        last_error = Some(e.to_string());
                        all = false;
                    }
                }
                if !all {
                    break;
                }
            }
            if all {
                met = Some(true);
            }
        }
        if met == Some(true) {
            return Ok(JsonMap::new());
        }
        if tokio::time::Instant::now() + ctx.poll > deadline {
            return Err(Error::WaitTimeout { timeout, last_error });
        }
        tokio::time::sleep(ctx.poll).await;
    }
}

async fn evaluate<C: Cluster>(ctx: &Context<C>, cond: &Condition, v2: bool) -> Result<bool> {
    let r = &cond.object_reference;
    let render = |field: &str, v: &str| {
        let at = Location { argument: format!("conditions.objectReference.{field}"), ..ctx.location.clone() };
        ctx.renderer.render(&at, v, &ctx.params)
    };
    let rendered = r.try_map(render)?;
    let object = ctx.cluster.get(&ObjectRef::from_reference(&rendered)).await?;
    let at = Location { argument: "conditions.condition".into(), ..ctx.location.clone() };
    let source = if v2 {
        cond.condition.clone()
    } else {
        resolve_jsonpath(&object, &cond.condition)
            .map_err(|message| crate::render::Error::Parse { location: Box::new(at.clone()), message })?
    };
    let template = ctx
        .renderer
        .parse(&source)
        .map_err(|e| crate::render::Error::Parse { location: Box::new(at.clone()), message: e.to_string() })?;
    let data = if v2 { json_value(&object) } else { json_value(&serde_json::json!({})) };
    let text = template
        .execute_to_string(&data)
        .map_err(|e| crate::render::Error::Exec { location: Box::new(at), message: e.to_string() })?;
    Ok(text.trim() == "true")
}

/// Replaces every `{$...}` in `condition` with what that JSONPath (RFC 9535, through
/// `jsonpath-rust`: filters such as `{$.status.conditions[?(@.type=="Ready")].status}` too)
/// selects in `object`: a string as it is, another value as JSON, several matches joined by
/// spaces (as kubectl's `-o jsonpath` shows them), nothing as the empty string. A path that does
/// not parse is an error naming it, never a silent empty string.
fn resolve_jsonpath(object: &Value, condition: &str) -> std::result::Result<String, String> {
    use jsonpath_rust::JsonPath as _;
    let mut out = String::new();
    let mut rest = condition;
    while let Some(start) = rest.find("{$") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let path = &rest[start + 1..start + len];
        let found = object.query(path).map_err(|e| format!("the JSONPath {path:?} does not parse: {e}"))?;
        let shown: Vec<String> = found
            .into_iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        out.push_str(&shown.join(" "));
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonpath_in_wait_conditions() {
        let obj = serde_json::json!({"status": {"phase": "Running", "n": 3,
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "Synced", "status": "False"}]}});
        assert_eq!(
            resolve_jsonpath(&obj, r#"{{ if eq "{$.status.phase}" "Running" }}true{{ end }}"#).unwrap(),
            r#"{{ if eq "Running" "Running" }}true{{ end }}"#
        );
        assert_eq!(resolve_jsonpath(&obj, "{$.status.conditions[0].type}/{$.status.n}/{$.nope}").unwrap(), "Ready/3/");
        // Filters, as upstream's blueprints write them, and several matches.
        let ready = r#"{$.status.conditions[?(@.type=="Ready")].status}"#;
        assert_eq!(resolve_jsonpath(&obj, ready).unwrap(), "True");
        assert_eq!(resolve_jsonpath(&obj, "{$.status.conditions[*].type}").unwrap(), "Ready Synced");
        // A path that does not parse is an error naming it, not "".
        let e = resolve_jsonpath(&obj, "{$.status[?(@.x==]}").unwrap_err();
        assert!(e.contains("does not parse") && e.contains("$.status[?(@.x=="), "{e}");
    }
}
