//! `cargo xtask lint`: the structure ARCHITECTURE.md promises, checked.
//!
//! - The `crate::` import graph of `leash-agent` has no cycle, and every
//!   import points down (or across) the layering declared in the
//!   ```` ```layers ```` block of ARCHITECTURE.md — that block is the one
//!   source of truth: the document shows it, this lint enforces it.
//! - No non-test source file of the workspace passes 700 lines.
//!
//! A module's own children may use it (`super::`): a parent module and the
//! files it is made of are one unit. Test code (`#[cfg(test)]` modules) is
//! not counted.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::root;

/// Longest non-test source file, in lines.
const MAX_LINES: usize = 700;

/// The crates whose source files are held to `MAX_LINES`.
const SOURCE_DIRS: [&str; 6] = [
    "leash-agent/src",
    "leash-agent/benches",
    "leash-common/src",
    "leash-ebpf/src",
    "xtask/src",
    "tests/src",
];

pub fn lint() -> Result<()> {
    let root = root();
    let mut problems = Vec::new();
    let modules = modules(&root.join("leash-agent/src"))?;
    let graph = imports(&modules);
    if std::env::var_os("LEASH_LINT_GRAPH").is_some() {
        for (from, to) in &graph {
            let to: Vec<&str> = to.iter().map(String::as_str).collect();
            println!("{from}: {}", to.join(" "));
        }
    }
    let layers = layers(&root.join("ARCHITECTURE.md"))?;
    problems.extend(cycles(&graph));
    problems.extend(layering(&graph, &modules, &layers));
    for dir in SOURCE_DIRS {
        problems.extend(long_files(&root, &root.join(dir))?);
    }
    if problems.is_empty() {
        let edges: usize = graph.values().map(BTreeSet::len).sum();
        eprintln!(
            "xtask lint: {} modules, {edges} imports, no cycle, every import down the layering; no source file over {MAX_LINES} lines",
            modules.len()
        );
        return Ok(());
    }
    for p in &problems {
        eprintln!("xtask lint: {p}");
    }
    bail!("{} structure problem(s), listed above", problems.len())
}

/// A module of `leash-agent`: its path (`policy::rules`), file, and the
/// source without its test code.
struct Module {
    file: PathBuf,
    source: String,
}

/// Every module under `src`, test-only files left out.
fn modules(src: &Path) -> Result<BTreeMap<String, Module>> {
    let mut out = BTreeMap::new();
    let mut test_only = BTreeSet::new();
    for file in rust_files(src)? {
        let rel = file.strip_prefix(src).unwrap_or(&file).with_extension("");
        let mut path: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if path.last().is_some_and(|l| l == "mod" || l == "lib") {
            path.pop();
        }
        let name = path.join("::");
        if name == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        for child in test_only_children(&text) {
            test_only.insert(if name.is_empty() {
                child
            } else {
                format!("{name}::{child}")
            });
        }
        out.insert(
            name,
            Module {
                source: without_tests(&text).to_owned(),
                file,
            },
        );
    }
    out.retain(|name, _| !test_only.iter().any(|t| is_within(name, t)));
    Ok(out)
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(rust_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// `#[cfg(test)] mod name;` declarations: files that are test code.
fn test_only_children(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter(|w| w[0] == "#[cfg(test)]")
        .filter_map(|w| w[1].strip_prefix("mod ")?.strip_suffix(';'))
        .map(str::to_owned)
        .collect()
}

/// The text before the first inline `#[cfg(test)] mod … {` block.
fn without_tests(text: &str) -> &str {
    let mut offset = 0;
    let mut cfg_test_at = None;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if let Some(at) = cfg_test_at
            && t.starts_with("mod ")
            && t.ends_with('{')
        {
            return &text[..at];
        }
        cfg_test_at = (t == "#[cfg(test)]").then_some(offset);
        offset += line.len();
    }
    text
}

fn is_within(module: &str, ancestor: &str) -> bool {
    module == ancestor
        || ancestor.is_empty()
        || module
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with("::"))
}

/// module → the modules it imports (`crate::`, `super::` and `self::`
/// paths, `use` trees included), each resolved to the longest module that
/// exists. Imports of a module's own ancestors are left out.
fn imports(modules: &BTreeMap<String, Module>) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for (name, m) in modules {
        let mut targets = BTreeSet::new();
        for path in paths(&m.source) {
            let Some(absolute) = absolute(name, &m.file, &path) else {
                continue;
            };
            if let Some(target) = resolve(modules, &absolute)
                && !is_within(name, &target)
            {
                targets.insert(target);
            }
        }
        graph.insert(name.clone(), targets);
    }
    graph
}

/// Every path that starts with `crate`, `super` or `self` in `source`,
/// `use` trees expanded (`crate::{a::b, c}` → `crate::a::b`, `crate::c`).
fn paths(source: &str) -> Vec<Vec<String>> {
    let code = strip_comments_and_strings(source);
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &code[i..];
        let starts = ["crate::", "super::", "self::"]
            .iter()
            .find(|p| rest.starts_with(**p))
            .filter(|_| {
                i == 0
                    || !(bytes[i - 1].is_ascii_alphanumeric()
                        || bytes[i - 1] == b'_'
                        || bytes[i - 1] == b':')
            });
        match starts {
            Some(_) => {
                let (tree, len) = take_tree(rest);
                for p in expand(&tree) {
                    out.push(p);
                }
                i += len.max(1);
            }
            None => i += 1,
        }
    }
    out
}

/// The use tree (or plain path) at the start of `text` and its length.
fn take_tree(text: &str) -> (String, usize) {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                if depth == 0 {
                    return (text[..i].to_owned(), i);
                }
                depth -= 1;
                if depth == 0 {
                    return (text[..=i].to_owned(), i + 1);
                }
            }
            c if depth == 0 && !(c.is_alphanumeric() || c == '_' || c == ':') => {
                return (text[..i].to_owned(), i);
            }
            _ => {}
        }
    }
    (text.to_owned(), text.len())
}

/// `a::{b, c::{d}}` → `a::b`, `a::c::d` (as segment lists).
fn expand(tree: &str) -> Vec<Vec<String>> {
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or(tree);
        let segments: Vec<String> = path
            .split("::")
            .map(|s| s.split_whitespace().collect::<String>())
            .filter(|s| !s.is_empty())
            .collect();
        return vec![segments];
    };
    let prefix: String = tree[..open].split_whitespace().collect();
    let inner = tree[open + 1..].trim_end();
    let inner = inner.strip_suffix('}').unwrap_or(inner);
    let mut out = Vec::new();
    for item in split_top(inner) {
        let item = item.trim();
        let whole = if item == "self" {
            prefix.trim_end_matches("::").to_owned()
        } else {
            format!("{prefix}{item}")
        };
        out.extend(expand(&whole));
    }
    out
}

/// Splits at commas outside braces.
fn split_top(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(text[start..i].to_owned());
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < text.len() {
        out.push(text[start..].to_owned());
    }
    out.into_iter().filter(|s| !s.is_empty()).collect()
}

/// `crate::a::b` → `a::b`; `super::x` from `p::q` (a file `q.rs` or
/// `q/mod.rs`) → `p::x`; `self::x` → `p::q::x`.
fn absolute(module: &str, file: &Path, path: &[String]) -> Option<Vec<String>> {
    let mut here: Vec<String> = if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").map(str::to_owned).collect()
    };
    let _ = file;
    let mut segments = path.iter().peekable();
    match segments.peek().map(|s| s.as_str()) {
        Some("crate") => {
            segments.next();
            here.clear();
        }
        Some("self") => {
            segments.next();
        }
        Some("super") => {
            while segments.peek().is_some_and(|s| *s == "super") {
                segments.next();
                here.pop()?;
            }
        }
        _ => return None,
    }
    here.extend(segments.cloned());
    Some(here)
}

/// The longest existing module that `path` names or is inside.
fn resolve(modules: &BTreeMap<String, Module>, path: &[String]) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|candidate| modules.contains_key(candidate))
}

/// Code with comments and string/char literals blanked out.
fn strip_comments_and_strings(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for n in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if n == '\\' {
                        escaped = true;
                    } else if n == '"' {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            _ => out.push(c),
        }
    }
    out
}

/// Layer of each module prefix, from the ```` ```layers ```` block of
/// ARCHITECTURE.md: `N: module module …`, higher numbers above.
fn layers(architecture: &Path) -> Result<BTreeMap<String, u32>> {
    let text = std::fs::read_to_string(architecture)
        .with_context(|| format!("cannot read {}", architecture.display()))?;
    let block = text
        .split("```layers\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .context("ARCHITECTURE.md has no ```layers block")?;
    let mut out = BTreeMap::new();
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        let (n, names) = line
            .split_once(':')
            .with_context(|| format!("layers: `{line}` is not `N: module …`"))?;
        let n: u32 = n
            .trim()
            .parse()
            .with_context(|| format!("layers: `{n}` is not a number"))?;
        for name in names.split_whitespace() {
            out.insert(name.trim_end_matches(',').to_owned(), n);
        }
    }
    Ok(out)
}

/// The layer of a module: that of the longest listed prefix.
fn layer_of(layers: &BTreeMap<String, u32>, module: &str) -> Option<u32> {
    layers
        .iter()
        .filter(|(prefix, _)| is_within(module, prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, n)| *n)
}

fn layering(
    graph: &BTreeMap<String, BTreeSet<String>>,
    modules: &BTreeMap<String, Module>,
    layers: &BTreeMap<String, u32>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for name in modules.keys().filter(|n| !n.is_empty()) {
        if layer_of(layers, name).is_none() {
            problems.push(format!(
                "module `{name}` has no layer in ARCHITECTURE.md's ```layers block"
            ));
        }
    }
    for (from, targets) in graph {
        let Some(lf) = layer_of(layers, from) else {
            continue;
        };
        for to in targets {
            if let Some(lt) = layer_of(layers, to)
                && lt > lf
            {
                problems.push(format!(
                    "`{from}` (layer {lf}) imports `{to}` (layer {lt}): imports must point down the layering"
                ));
            }
        }
    }
    problems
}

/// Import cycles (Tarjan's strongly connected components), each with one
/// edge of it to cut.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    struct Tarjan<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        components: Vec<Vec<&'a str>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low[v];
                    self.low.insert(v, lv.min(lw));
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low[v];
                    self.low.insert(v, lv.min(iw));
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort_unstable();
                    self.components.push(component);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.components
        .iter()
        .map(|c| {
            let members: BTreeSet<&str> = c.iter().copied().collect();
            let edges: Vec<String> = c
                .iter()
                .flat_map(|from| {
                    graph[*from]
                        .iter()
                        .filter(|to| members.contains(to.as_str()))
                        .map(move |to| format!("{from} → {to}"))
                })
                .collect();
            format!("import cycle among {}: {}", c.join(", "), edges.join(", "))
        })
        .collect()
}

/// Non-test source files over `MAX_LINES` under `dir`.
fn long_files(root: &Path, dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut test_only = BTreeSet::new();
    let files = rust_files(dir)?;
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        let parent = file.parent().unwrap_or(dir);
        for child in test_only_children(&text) {
            test_only.insert(parent.join(format!("{child}.rs")));
            if let Some(stem) = file
                .file_stem()
                .filter(|s| *s != "mod" && *s != "lib" && *s != "main")
            {
                test_only.insert(parent.join(stem).join(format!("{child}.rs")));
            }
        }
    }
    for file in files.iter().filter(|f| !test_only.contains(*f)) {
        let text = std::fs::read_to_string(file)?;
        let lines = without_tests(&text).lines().count();
        if lines > MAX_LINES {
            out.push(format!(
                "{} has {lines} lines of non-test code (at most {MAX_LINES}): split it by job",
                file.strip_prefix(root).unwrap_or(file).display()
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_trees_expand() {
        let got: Vec<String> = paths("use crate::{a::{b, c::D}, e as f};\nlet x = super::g::h(1);")
            .into_iter()
            .map(|p| p.join("::"))
            .collect();
        assert_eq!(
            got,
            ["crate::a::b", "crate::a::c::D", "crate::e", "super::g::h"]
        );
    }

    #[test]
    fn relative_paths_resolve() {
        let p = |s: &str| s.split("::").map(str::to_owned).collect::<Vec<_>>();
        let f = Path::new("x.rs");
        assert_eq!(
            absolute("policy::rules", f, &p("super::Policy")),
            Some(p("policy::Policy"))
        );
        assert_eq!(
            absolute("policy", f, &p("self::rules::X")),
            Some(p("policy::rules::X"))
        );
        assert_eq!(
            absolute("policy", f, &p("crate::record::A")),
            Some(p("record::A"))
        );
    }

    #[test]
    fn test_code_is_cut() {
        let text = "fn a() {}\n\n#[cfg(test)]\nmod tests {\n    use crate::x;\n}\n";
        assert_eq!(without_tests(text), "fn a() {}\n\n");
        assert_eq!(
            test_only_children("#[cfg(test)]\nmod proptests;\n"),
            ["proptests"]
        );
    }
}
