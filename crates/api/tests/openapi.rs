//! `docs/api/openapi.json` describes what the server serves: every route and no other, and a
//! component schema for every `api-types` type with the same properties, required fields and
//! enum values as the type's own JSON schema (from `schemars`). A real validator checks it too.
//!
//! After changing the types, `POPEK_BLESS_OPENAPI=1 cargo test -p api --test openapi` rewrites
//! the document's `components.schemas` from them (paths and responses are written by hand).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

fn doc_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/api/openapi.json")
}

fn load_doc() -> Value {
    let text = std::fs::read_to_string(doc_path()).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The JSON schema of every type, by name, with references pointing into `components`.
fn type_schemas() -> BTreeMap<String, Value> {
    let mut all = BTreeMap::new();
    let mut add = |name: &str, schema: schemars::Schema| {
        let mut root = schema.to_value();
        let defs = root.as_object_mut().unwrap().remove("$defs");
        for (def, schema) in defs.iter().flat_map(|d| d.as_object().unwrap()) {
            let old = all.insert(def.clone(), schema.clone());
            assert!(
                old.is_none_or(|o| o == *schema),
                "{def} differs between roots"
            );
        }
        for meta in ["$schema", "title"] {
            root.as_object_mut().unwrap().remove(meta);
        }
        all.insert(name.to_owned(), root);
    };
    macro_rules! types {
        ($($t:ident),* $(,)?) => { $( add(stringify!($t), schemars::schema_for!(api_types::$t)); )* };
    }
    types!(
        VmConfig,
        VmConfigPatch,
        MachineConfig,
        Accel,
        BootSource,
        DiskConfig,
        DiskFormat,
        NetConfig,
        VsockConfig,
        SerialConfig,
        VmState,
        VmInfo,
        Action,
        ActionRequest,
        VmCounters,
        VcpuCounters,
        ExitCount,
        DeviceCounters,
        Event,
        EventKind,
        EventList,
        SnapshotRequest,
        SnapshotInfo,
        RestoreRequest,
        ApiError,
    );
    all.into_iter()
        .map(|(name, mut schema)| {
            (name, {
                retarget(&mut schema);
                schema
            })
        })
        .collect()
}

fn retarget(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match value {
                    Value::String(s) if key == "$ref" => {
                        *s = s.replace("#/$defs/", "#/components/schemas/");
                    }
                    other => retarget(other),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(retarget),
        _ => {}
    }
}

/// What must agree between a type and its document: properties (with their kinds), required
/// fields, enum values, and the variants of a tagged enum.
fn shape(s: &Value) -> Value {
    let set = |v: Option<&Value>| -> BTreeSet<String> {
        v.and_then(Value::as_array)
            .map(|a| a.iter().map(|x| x.to_string()).collect())
            .unwrap_or_default()
    };
    let properties: BTreeMap<&String, String> = s
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.iter().map(|(k, v)| (k, kind(v))).collect())
        .unwrap_or_default();
    let alternatives = s.get("oneOf").or(s.get("anyOf")).and_then(Value::as_array);
    let mut values = set(s.get("enum"));
    let mut variants = Vec::new();
    for alt in alternatives.into_iter().flatten() {
        if alt.get("properties").is_some() {
            variants.push(shape(alt));
        } else {
            values.extend(alt.get("const").map(Value::to_string));
            values.extend(set(alt.get("enum")));
        }
    }
    variants.sort_by_key(Value::to_string);
    json!({
        "type": s.get("type"),
        "properties": properties,
        "required": set(s.get("required")),
        "enum": values,
        "variants": variants,
        "additionalProperties": s.get("additionalProperties"),
    })
}

/// A property's kind: a referenced type's name, a JSON type, an array of a kind, a constant,
/// or alternatives of these.
fn kind(v: &Value) -> String {
    if let Some(r) = v.get("$ref").and_then(Value::as_str) {
        return r.rsplit('/').next().unwrap_or(r).to_owned();
    }
    if let Some(c) = v.get("const") {
        return format!("const {c}");
    }
    if let Some(alts) = v.get("anyOf").or(v.get("oneOf")).and_then(Value::as_array) {
        let mut kinds: Vec<String> = alts.iter().map(kind).collect();
        kinds.sort();
        return kinds.join("|");
    }
    let mut types: Vec<String> = match v.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect(),
        _ => vec!["any".into()],
    };
    for t in &mut types {
        if t == "array" {
            *t = format!("array<{}>", v.get("items").map(kind).unwrap_or_default());
        }
    }
    types.sort();
    types.join("|")
}

#[test]
fn components_match_the_types() {
    let types = type_schemas();
    let mut doc = load_doc();
    if std::env::var_os("POPEK_BLESS_OPENAPI").is_some() {
        doc["components"]["schemas"] = serde_json::to_value(&types).unwrap();
        let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
        std::fs::write(doc_path(), text).unwrap();
        return;
    }
    let documented = doc["components"]["schemas"]
        .as_object()
        .expect("components.schemas");
    let mut problems = Vec::new();
    for (name, schema) in &types {
        match documented.get(name) {
            None => problems.push(format!("{name}: missing from the document")),
            Some(d) if shape(d) != shape(schema) => problems.push(format!(
                "{name}:\n  type     {}\n  document {}",
                shape(schema),
                shape(d)
            )),
            Some(_) => {}
        }
    }
    for name in documented.keys().filter(|n| !types.contains_key(*n)) {
        problems.push(format!("{name}: in the document but not a type"));
    }
    assert!(
        problems.is_empty(),
        "docs/api/openapi.json differs from api-types (after changing the types, rerun with \
         POPEK_BLESS_OPENAPI=1 to rewrite components.schemas):\n{}",
        problems.join("\n")
    );
}

#[test]
fn paths_are_the_routes_served() {
    let doc = load_doc();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            let methods = item.as_object().unwrap().keys();
            methods
                .filter(|m| !matches!(m.as_str(), "parameters" | "summary" | "description"))
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = api::ROUTES
        .iter()
        .map(|&(m, p)| (m.to_owned(), p.to_owned()))
        .collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "served but not in the document: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "in the document but not served: {unserved:?}"
    );
}

#[test]
fn operations_name_the_bodies_the_server_reads_and_writes() {
    let doc = load_doc();
    // (method, path, request body, 200 reply) as the server's handlers have them.
    let expected = [
        ("get", "/vm", None, Some("VmInfo")),
        ("put", "/vm/config", Some("VmConfig"), None),
        ("patch", "/vm/config", Some("VmConfigPatch"), None),
        ("put", "/vm/config/disks/{index}", Some("DiskConfig"), None),
        ("put", "/vm/config/nets/{index}", Some("NetConfig"), None),
        ("post", "/vm/actions", Some("ActionRequest"), None),
        ("get", "/vm/counters", None, Some("VmCounters")),
        ("get", "/vm/events", None, Some("EventList")),
        (
            "post",
            "/vm/snapshot",
            Some("SnapshotRequest"),
            Some("SnapshotInfo"),
        ),
        ("post", "/vm/restore", Some("RestoreRequest"), None),
    ];
    let schema_ref = |v: &Value| {
        v["content"]["application/json"]["schema"]["$ref"]
            .as_str()
            .map(|r| r.rsplit('/').next().unwrap().to_owned())
    };
    for (method, path, request, reply) in expected {
        let op = &doc["paths"][path][method];
        assert_eq!(
            schema_ref(&op["requestBody"]).as_deref(),
            request,
            "{method} {path}"
        );
        assert_eq!(
            schema_ref(&op["responses"]["200"]).as_deref(),
            reply,
            "{method} {path}"
        );
        let success = if reply.is_some() { "200" } else { "204" };
        assert!(
            op["responses"].get(success).is_some(),
            "{method} {path}: no {success}"
        );
    }
}

#[test]
fn a_real_validator_accepts_the_document() {
    let has_module = Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_module {
        println!(
            "skipped: python3 -m openapi_spec_validator is not available \
             (`cargo xtask test` installs it: pip install openapi-spec-validator)"
        );
        return;
    }
    let out = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(doc_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator refuses docs/api/openapi.json:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
