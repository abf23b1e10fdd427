//! The tools a request offers a model, by name, in every provider's shape,
//! and removing some of them (a policy's `strip`). Plain JSON work, no
//! policy: `identify` records the names, the policy matches and strips.
//!
//! Where each shape keeps its tools:
//! - `OpenAI` chat: `tools[].function.name` (and the legacy `functions[].name`);
//! - `OpenAI` Responses and Anthropic: `tools[].name`; a built-in tool without
//!   a name (`{"type": "web_search_preview"}`) by its `type`;
//! - Gemini: `tools[].functionDeclarations[].name` (or
//!   `function_declarations`); a built-in tool (`{"googleSearch": {}}`,
//!   `codeExecution`) by its key.

use serde_json::{Map, Value};

/// Most tool names kept for one request (the audit stays bounded); a
/// request offering more is still matched on every name by the policy.
pub const MAX_RECORDED: usize = 128;
/// Longest tool name kept; longer ones are cut on a character boundary.
const MAX_NAME: usize = 128;

const GEMINI_DECLARATIONS: [&str; 2] = ["functionDeclarations", "function_declarations"];

/// Every tool `tools` and `functions` (a request's two arrays) offer, in
/// order, by name.
pub fn offered_in(tools: &[Value], functions: &[Value]) -> Vec<String> {
    let mut names = Vec::new();
    for tool in tools {
        each_name(tool, &mut |n| names.push(n.to_owned()));
    }
    for f in functions {
        if let Some(n) = f.get("name").and_then(Value::as_str) {
            names.push(n.to_owned());
        }
    }
    names
}

/// An array field as a slice; anything else (absent, `null`, a mistake)
/// as none.
pub fn list(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// The tools a request body offers.
pub fn offered(body: &Value) -> Vec<String> {
    offered_in(list(body.get("tools")), list(body.get("functions")))
}

/// The one name an `OpenAI` or Anthropic entry of `tools` stands for:
/// `function.name`, else `name`, else (a built-in tool) `type`; `None` for
/// a Gemini entry, which holds declarations and built-ins by key.
fn single_name(obj: &Map<String, Value>) -> Option<&str> {
    obj.get("function")
        .and_then(|x| x.get("name"))
        .and_then(Value::as_str)
        .or_else(|| obj.get("name").and_then(Value::as_str))
        .or_else(|| obj.get("type").and_then(Value::as_str))
}

/// The names as the audit keeps them: at most `MAX_RECORDED`, each cut to
/// `MAX_NAME` bytes.
pub fn bounded(names: &[String]) -> Vec<String> {
    names
        .iter()
        .take(MAX_RECORDED)
        .map(|n| {
            let mut end = n.len().min(MAX_NAME);
            while !n.is_char_boundary(end) {
                end -= 1;
            }
            n[..end].to_owned()
        })
        .collect()
}

/// Calls `f` with each name one entry of `tools` stands for.
fn each_name(tool: &Value, f: &mut dyn FnMut(&str)) {
    let Some(obj) = tool.as_object() else { return };
    if let Some(n) = single_name(obj) {
        return f(n);
    }
    // Gemini: declarations, and built-in tools by their key.
    for (key, v) in obj {
        if GEMINI_DECLARATIONS.contains(&key.as_str()) {
            for d in v.as_array().into_iter().flatten() {
                if let Some(n) = d.get("name").and_then(Value::as_str) {
                    f(n);
                }
            }
        } else {
            f(key);
        }
    }
}

/// Removes from `body` every offered tool `drop` says yes to, and what
/// named only those tools (`tool_choice` forcing one, Gemini's
/// `allowedFunctionNames` entries); an emptied `tools` goes with its
/// `tool_choice` / `toolConfig` (providers refuse a choice without tools).
/// Returns the names removed, in order.
pub fn strip(body: &mut Value, drop: &dyn Fn(&str) -> bool) -> Vec<String> {
    let mut removed = Vec::new();
    let Some(obj) = body.as_object_mut() else {
        return removed;
    };
    if let Some(Value::Array(tools)) = obj.get_mut("tools") {
        tools.retain_mut(|tool| keep_tool(tool, drop, &mut removed));
    }
    if let Some(Value::Array(functions)) = obj.get_mut("functions") {
        drop_named(functions, drop, &mut removed);
    }
    if removed.is_empty() {
        return removed;
    }
    fix_choices(obj, &removed);
    removed
}

/// Removes the entries of `list` whose `name` `drop` says yes to.
fn drop_named(list: &mut Vec<Value>, drop: &dyn Fn(&str) -> bool, removed: &mut Vec<String>) {
    list.retain(|d| {
        let name = d.get("name").and_then(Value::as_str);
        let gone = name.is_some_and(drop);
        if let (true, Some(n)) = (gone, name) {
            removed.push(n.to_owned());
        }
        !gone
    });
}

/// Whether a `tools` entry stays; a Gemini entry loses the declarations
/// and built-ins `drop` names and stays if anything is left.
fn keep_tool(tool: &mut Value, drop: &dyn Fn(&str) -> bool, removed: &mut Vec<String>) -> bool {
    let Some(obj) = tool.as_object_mut() else {
        return true;
    };
    if let Some(n) = single_name(obj) {
        if drop(n) {
            removed.push(n.to_owned());
            return false;
        }
        return true;
    }
    let keys: Vec<String> = obj.keys().cloned().collect();
    for key in keys {
        if GEMINI_DECLARATIONS.contains(&key.as_str()) {
            if let Some(Value::Array(decls)) = obj.get_mut(&key) {
                drop_named(decls, drop, removed);
                if decls.is_empty() {
                    obj.remove(&key);
                }
            }
        } else if drop(&key) {
            obj.remove(&key);
            removed.push(key);
        }
    }
    !obj.is_empty()
}

/// After a strip: a choice naming a removed tool goes, and so does every
/// choice once no tool is left.
fn fix_choices(obj: &mut Map<String, Value>, removed: &[String]) {
    let names_removed = |v: &Value| {
        let forced = v
            .get("function")
            .and_then(|f| f.get("name"))
            .or_else(|| v.get("name"))
            .and_then(Value::as_str);
        forced.is_some_and(|n| removed.iter().any(|r| r == n))
    };
    if obj.get("tool_choice").is_some_and(names_removed) {
        obj.remove("tool_choice");
    }
    if obj.get("function_call").is_some_and(names_removed) {
        obj.remove("function_call");
    }
    for config in ["toolConfig", "tool_config"] {
        let Some(Value::Object(c)) = obj.get_mut(config) else {
            continue;
        };
        for calling in ["functionCallingConfig", "function_calling_config"] {
            let Some(Value::Object(calling)) = c.get_mut(calling) else {
                continue;
            };
            for key in ["allowedFunctionNames", "allowed_function_names"] {
                if let Some(Value::Array(allowed)) = calling.get_mut(key) {
                    allowed.retain(|n| n.as_str().is_none_or(|n| !removed.iter().any(|r| r == n)));
                }
            }
        }
    }
    let empty = |obj: &Map<String, Value>, k: &str| {
        obj.get(k)
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
    };
    if empty(obj, "tools") {
        for k in [
            "tools",
            "tool_choice",
            "toolConfig",
            "tool_config",
            "parallel_tool_calls",
        ] {
            obj.remove(k);
        }
    }
    if empty(obj, "functions") {
        obj.remove("functions");
        obj.remove("function_call");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn shell(n: &str) -> bool {
        n.starts_with("shell") || n == "code_interpreter" || n == "codeExecution"
    }

    #[test]
    fn names_in_every_shape() {
        let openai = json!({"tools": [
            {"type": "function", "function": {"name": "get_weather", "parameters": {}}},
            {"type": "function", "function": {"name": "shell"}}],
            "functions": [{"name": "legacy_fn"}]});
        assert_eq!(offered(&openai), ["get_weather", "shell", "legacy_fn"]);
        let responses = json!({"tools": [{"type": "function", "name": "shell"}, {"type": "code_interpreter", "container": {"type": "auto"}}]});
        assert_eq!(offered(&responses), ["shell", "code_interpreter"]);
        let anthropic = json!({"tools": [{"name": "shell", "input_schema": {}}, {"type": "web_search_20250305", "name": "web_search"}]});
        assert_eq!(offered(&anthropic), ["shell", "web_search"]);
        let gemini = json!({"tools": [{"functionDeclarations": [{"name": "get_weather"}, {"name": "shell_exec"}]}, {"googleSearch": {}}, {"code_execution": {}}]});
        assert_eq!(
            offered(&gemini),
            [
                "get_weather",
                "shell_exec",
                "googleSearch",
                "code_execution"
            ]
        );
        assert!(offered(&json!({"tools": "nope", "messages": []})).is_empty());
        let long = "x".repeat(300);
        assert_eq!(bounded(&[long])[0].len(), MAX_NAME);
    }

    #[test]
    fn strip_keeps_the_rest_and_fixes_choices() {
        let mut openai = json!({"tools": [
            {"type": "function", "function": {"name": "get_weather"}},
            {"type": "function", "function": {"name": "shell"}}],
            "tool_choice": {"type": "function", "function": {"name": "shell"}}});
        assert_eq!(strip(&mut openai, &shell), ["shell"]);
        assert_eq!(offered(&openai), ["get_weather"]);
        assert!(
            openai.get("tool_choice").is_none(),
            "a choice forcing a stripped tool goes"
        );

        let mut anthropic =
            json!({"tools": [{"name": "shell"}], "tool_choice": {"type": "any"}, "messages": []});
        assert_eq!(strip(&mut anthropic, &shell), ["shell"]);
        assert_eq!(
            anthropic,
            json!({"messages": []}),
            "no tools left: no choice either"
        );

        let mut gemini = json!({"tools": [{"functionDeclarations": [{"name": "get_weather"}, {"name": "shell_exec"}]}, {"codeExecution": {}}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["shell_exec", "get_weather"]}}});
        assert_eq!(strip(&mut gemini, &shell), ["shell_exec", "codeExecution"]);
        assert_eq!(
            gemini["tools"],
            json!([{"functionDeclarations": [{"name": "get_weather"}]}])
        );
        assert_eq!(
            gemini["toolConfig"]["functionCallingConfig"]["allowedFunctionNames"],
            json!(["get_weather"])
        );

        let mut untouched = json!({"tools": [{"name": "get_weather"}], "tool_choice": "auto"});
        let before = untouched.clone();
        assert!(strip(&mut untouched, &shell).is_empty());
        assert_eq!(untouched, before);
    }
}
