//! `proto/ferry.proto` is the language-neutral copy of `src/schema.rs`: every message with every
//! field (name, number, type, `repeated`/`optional`) and every enum with its values must be in
//! both. Both files are read as text, the prost attributes of schema.rs (which the prost
//! structs are derived from) and the field lines of ferry.proto, and compared whole.

use std::collections::BTreeMap;

const SCHEMA_RS: &str = include_str!("../src/schema.rs");
const FERRY_PROTO: &str = include_str!("../proto/ferry.proto");

/// A field as both files can state it: (number, type, label), label "" | "repeated" |
/// "optional" (a scalar with presence; a message field is never labelled).
type Field = (u32, String, &'static str);
/// message or enum name -> field or value name -> field.
type Schema = BTreeMap<String, BTreeMap<String, Field>>;

fn word_after<'a>(line: &'a str, keyword: &str) -> Option<&'a str> {
    let rest = line.trim().strip_prefix(keyword)?.strip_prefix(' ')?;
    Some(rest.split(|c: char| !c.is_alphanumeric() && c != '_').next().unwrap_or(""))
}

/// "FilePrivate" of enum "VmaKind" -> "VMA_KIND_FILE_PRIVATE" (prost's naming of proto values).
fn proto_value_name(enum_name: &str, variant: &str) -> String {
    let snake = |s: &str| {
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_uppercase());
        }
        out
    };
    format!("{}_{}", snake(enum_name), snake(variant))
}

/// The messages and enums of schema.rs, from its `#[prost(..)]` attributes and enum variants;
/// also how many `#[prost(` attributes it has, so that a field the parser missed is seen.
fn from_rust() -> (Schema, Schema, usize) {
    let (mut messages, mut enums) = (Schema::new(), Schema::new());
    let (mut message, mut enumeration): (Option<String>, Option<String>) = (None, None);
    let mut attr: Option<Vec<String>> = None;
    let mut attrs = 0;
    for line in SCHEMA_RS.lines() {
        let t = line.trim();
        if t.starts_with("//") {
            continue;
        }
        if let Some(name) = word_after(t, "pub struct") {
            message = Some(name.to_string());
            messages.insert(name.to_string(), BTreeMap::new());
        } else if let Some(name) = word_after(t, "pub enum") {
            enumeration = Some(name.to_string());
            enums.insert(name.to_string(), BTreeMap::new());
        } else if t == "}" {
            (message, enumeration) = (None, None);
        } else if let Some(a) = t.strip_prefix("#[prost(").and_then(|a| a.strip_suffix(")]")) {
            attrs += 1;
            attr = Some(a.split(',').map(|p| p.trim().to_string()).collect());
        } else if let (Some(m), Some(a), Some(decl)) = (&message, &attr, t.strip_prefix("pub ")) {
            let (name, ty) = decl.trim_end_matches(',').split_once(": ").expect("a field line");
            let kind = a[0].split(' ').next().unwrap_or_default();
            let tag = a.iter().find_map(|p| p.strip_prefix("tag = ")).expect("a tag").trim_matches('"');
            let has = |w: &str| a.iter().any(|p| p == w);
            let label = if has("repeated") {
                "repeated"
            } else if has("optional") && kind != "message" {
                "optional"
            } else {
                ""
            };
            let ty = match kind {
                "message" => ty.trim_start_matches("Option<").trim_start_matches("Vec<").trim_end_matches('>'),
                "enumeration" => a[0].split('"').nth(1).expect("an enumeration's type"),
                k => k,
            };
            let field = (tag.parse().expect("a numeric tag"), ty.to_string(), label);
            messages.get_mut(m).expect("its message").insert(name.to_string(), field);
            attr = None;
        } else if let (Some(e), Some((name, value))) = (&enumeration, t.trim_end_matches(',').split_once(" = ")) {
            let value = (value.parse().expect("an enum value"), String::new(), "");
            enums.get_mut(e).expect("its enum").insert(proto_value_name(e, name), value);
        }
    }
    messages.retain(|_, fields| !fields.is_empty());
    (messages, enums, attrs)
}

/// The messages and enums of ferry.proto.
fn from_proto() -> (Schema, Schema) {
    let (mut messages, mut enums) = (Schema::new(), Schema::new());
    let (mut message, mut enumeration): (Option<String>, Option<String>) = (None, None);
    for line in FERRY_PROTO.lines() {
        let t = line.split("//").next().unwrap_or_default().trim();
        if let Some(name) = word_after(t, "message") {
            message = Some(name.to_string());
            messages.insert(name.to_string(), BTreeMap::new());
        } else if let Some(name) = word_after(t, "enum") {
            enumeration = Some(name.to_string());
            enums.insert(name.to_string(), BTreeMap::new());
        } else if t.starts_with('}') {
            (message, enumeration) = (None, None);
        } else if let (true, Some((decl, tag))) =
            (message.is_some() || enumeration.is_some(), t.trim_end_matches(';').split_once(" = "))
        {
            let tag: u32 = tag.trim().parse().unwrap_or_else(|_| panic!("ferry.proto: no number in {line:?}"));
            let words: Vec<&str> = decl.split_whitespace().collect();
            if let Some(e) = &enumeration {
                enums.get_mut(e).expect("its enum").insert(decl.trim().to_string(), (tag, String::new(), ""));
            } else if let Some(m) = &message {
                let (label, ty, name) = match words[..] {
                    ["repeated", ty, name] => ("repeated", ty, name),
                    ["optional", ty, name] => ("optional", ty, name),
                    [ty, name] => ("", ty, name),
                    _ => panic!("ferry.proto: unreadable field {line:?}"),
                };
                messages.get_mut(m).expect("its message").insert(name.to_string(), (tag, ty.to_string(), label));
            }
        }
    }
    (messages, enums)
}

/// The differences between the two, one line each.
fn differences(what: &str, rust: &Schema, proto: &Schema) -> Vec<String> {
    let mut out = Vec::new();
    for (m, fields) in rust {
        let Some(theirs) = proto.get(m) else {
            out.push(format!("{what} {m} is in schema.rs, not in ferry.proto"));
            continue;
        };
        for (f, v) in fields {
            match theirs.get(f) {
                None => out.push(format!("{m}.{f} {v:?} is in schema.rs, not in ferry.proto")),
                Some(p) if p != v => out.push(format!("{m}.{f}: schema.rs {v:?}, ferry.proto {p:?}")),
                Some(_) => {}
            }
        }
        for f in theirs.keys().filter(|f| !fields.contains_key(*f)) {
            out.push(format!("{m}.{f} is in ferry.proto, not in schema.rs"));
        }
    }
    for m in proto.keys().filter(|m| !rust.contains_key(*m)) {
        out.push(format!("{what} {m} is in ferry.proto, not in schema.rs"));
    }
    out
}

#[test]
fn ferry_proto_is_schema_rs() {
    let (rust_messages, rust_enums, attrs) = from_rust();
    let (proto_messages, proto_enums) = from_proto();
    let fields: usize = rust_messages.values().map(BTreeMap::len).sum();
    assert_eq!(fields, attrs, "schema.rs: a #[prost(..)] attribute without the field the test reads after it");
    assert!(rust_messages.contains_key("Inventory") && rust_messages.contains_key("Process"));
    assert!(rust_enums.contains_key("VmaKind") && rust_enums.contains_key("FileKind"));
    let mut diff = differences("message", &rust_messages, &proto_messages);
    diff.extend(differences("enum", &rust_enums, &proto_enums));
    assert!(diff.is_empty(), "ferry.proto is not schema.rs ({} differences):\n{}", diff.len(), diff.join("\n"));
}
