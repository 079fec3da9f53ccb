//! `cargo xtask deps`: the top-level modules of every crate in the workspace must depend on each
//! other one way. For each crate root (`src/lib.rs`, `src/main.rs`, and the eBPF crate's other
//! binary roots) it reads the `mod` items of the root, then every `crate::x` path (`use` groups
//! included) and every `super::` path that climbs to the root inside each module's files, and
//! fails on any cycle between modules, printing one file and line per edge of it.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// A crate root and the directory its `mod x;` files live in.
struct Root {
    file: PathBuf,
    dir: PathBuf,
}

/// Where module `from` names module `to` first (for the report).
type Edges = BTreeMap<(String, String), (PathBuf, usize)>;

/// Every crate root of the workspace: `*/src/lib.rs`, `*/src/main.rs`, and files of `src/`
/// trees declared as `[[bin]]` paths (the eBPF crate's `policy/main.rs`, `probes.rs`).
fn roots(workspace: &Path) -> Result<Vec<Root>> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(workspace)
        .with_context(|| format!("read {}", workspace.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("Cargo.toml").is_file() && p.join("src").is_dir())
        .filter(|p| !p.ends_with("fuzz") && !p.ends_with("target"))
        .collect();
    entries.sort();
    for krate in entries {
        let manifest = std::fs::read_to_string(krate.join("Cargo.toml"))?;
        let mut files: Vec<PathBuf> = ["src/lib.rs", "src/main.rs"]
            .iter()
            .map(|f| krate.join(f))
            .filter(|f| f.is_file())
            .collect();
        for line in manifest.lines() {
            if let Some(p) = line
                .trim()
                .strip_prefix("path = \"")
                .and_then(|p| p.strip_suffix('"'))
            {
                let f = krate.join(p);
                if f.is_file() && !files.contains(&f) {
                    files.push(f);
                }
            }
        }
        for file in files {
            let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
            out.push(Root { file, dir });
        }
    }
    Ok(out)
}

/// Text without comments, string and char literals (their contents become spaces, so line
/// numbers stay right).
fn strip(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i < b.len() && !(b[i] == '*' && b.get(i + 1) == Some(&'/')) {
                out.push(if b[i] == '\n' { '\n' } else { ' ' });
                i += 1;
            }
            i += 2;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                if b.get(i) == Some(&'\n') {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && b.get(i + 2) == Some(&'\'') {
            i += 3; // 'x'
        } else if c == '\'' && next == Some('\\') {
            // '\n', '\u{..}'
            i += 2;
            while i < b.len() && b[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_at(s: &str) -> Option<&str> {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (end > 0).then(|| &s[..end])
}

/// The first path segments named right after `prefix::` at byte `at` of `text` (one, or each
/// top-level item of a `{...}` group).
fn names_after(text: &str, at: usize) -> Vec<String> {
    let rest = &text[at..];
    let rest = rest.trim_start();
    if let Some(group) = rest.strip_prefix('{') {
        let mut depth = 0usize;
        let mut items = Vec::new();
        let mut cur = String::new();
        for c in group.chars() {
            match c {
                '{' => {
                    depth += 1;
                    cur.push(c);
                }
                '}' if depth == 0 => break,
                '}' => {
                    depth -= 1;
                    cur.push(c);
                }
                ',' if depth == 0 => items.push(std::mem::take(&mut cur)),
                _ => cur.push(c),
            }
        }
        items.push(cur);
        items
            .iter()
            .filter_map(|i| ident_at(i.trim()).map(str::to_owned))
            .collect()
    } else {
        ident_at(rest).map(str::to_owned).into_iter().collect()
    }
}

/// `mod x;` / `pub mod x;` / `pub(crate) mod x;` items of a root file.
fn declared_modules(root: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in strip(root).lines() {
        let t = line.trim();
        let t = t
            .strip_prefix("pub(crate) ")
            .or_else(|| t.strip_prefix("pub "))
            .unwrap_or(t);
        if let Some(rest) = t.strip_prefix("mod ")
            && let Some(name) = rest.strip_suffix(';')
        {
            out.push(name.trim().to_owned());
        }
    }
    out
}

/// The files of module `name` under `dir`, each with its depth below the crate root (1 for
/// `name.rs` and `name/mod.rs`).
fn module_files(dir: &Path, name: &str) -> Vec<(PathBuf, usize)> {
    let mut out = Vec::new();
    let single = dir.join(format!("{name}.rs"));
    if single.is_file() {
        out.push((single, 1));
    }
    let sub = dir.join(name);
    if sub.is_dir() {
        walk(&sub, 1, &mut out);
    }
    out
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<(PathBuf, usize)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, depth + 1, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            // `mod.rs` is the directory's module itself; other files are one level deeper
            let d = if p.ends_with("mod.rs") {
                depth
            } else {
                depth + 1
            };
            out.push((p, d));
        }
    }
}

/// Top-level modules a file of module `module` (at `depth` below the root) refers to.
fn references(
    text: &str,
    depth: usize,
    module: &str,
    mods: &BTreeSet<String>,
) -> Vec<(String, usize)> {
    let text = strip(text);
    let mut out = Vec::new();
    let line_of = |at: usize| text[..at].matches('\n').count() + 1;
    for (at, _) in text.match_indices("crate::") {
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue; // `palisade_crate::`, `$crate::`
        }
        for n in names_after(&text, at + "crate::".len()) {
            out.push((n, line_of(at)));
        }
    }
    // `super::super::x` climbing to the root: depth d needs d `super`s.
    let climb = "super::".repeat(depth);
    if depth > 0 {
        for (at, _) in text.match_indices(&climb) {
            if text[..at].ends_with("super::") {
                continue; // part of a longer climb, counted from its start
            }
            for n in names_after(&text, at + climb.len()) {
                out.push((n, line_of(at)));
            }
        }
    }
    out.retain(|(n, _)| n != module && mods.contains(n));
    out
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct St<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut St<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on.insert(v);
        let g = s.g;
        for w in g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(lw));
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = St {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// The module graph of one crate root.
fn graph(root: &Root) -> Result<(BTreeMap<String, BTreeSet<String>>, Edges)> {
    let text = std::fs::read_to_string(&root.file)
        .with_context(|| format!("read {}", root.file.display()))?;
    let mods: BTreeSet<String> = declared_modules(&text).into_iter().collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut edges = Edges::new();
    for m in &mods {
        let deps = g.entry(m.clone()).or_default();
        for (file, depth) in module_files(&root.dir, m) {
            let src = std::fs::read_to_string(&file)?;
            for (to, line) in references(&src, depth, m, &mods) {
                deps.insert(to.clone());
                edges
                    .entry((m.clone(), to))
                    .or_insert_with(|| (file.clone(), line));
            }
        }
    }
    Ok((g, edges))
}

/// Checks every crate; prints each root's module count and fails on a cycle.
pub fn check(workspace: &Path) -> Result<()> {
    let mut failures = Vec::new();
    for root in roots(workspace)? {
        let (g, edges) = graph(&root)?;
        let shown = root
            .file
            .strip_prefix(workspace)
            .unwrap_or(&root.file)
            .display()
            .to_string();
        let found = cycles(&g);
        eprintln!(
            "    {shown}: {} modules, {} dependencies, {}",
            g.len(),
            g.values().map(BTreeSet::len).sum::<usize>(),
            if found.is_empty() {
                "no cycle".to_owned()
            } else {
                format!("{} cycle(s)", found.len())
            }
        );
        for comp in found {
            let mut lines = vec![format!("{shown}: modules in a cycle: {}", comp.join(", "))];
            for ((from, to), (file, line)) in &edges {
                if comp.contains(from) && comp.contains(to) {
                    let f = file.strip_prefix(workspace).unwrap_or(file);
                    lines.push(format!("  {from} -> {to} ({}:{line})", f.display()));
                }
            }
            failures.push(lines.join("\n"));
        }
    }
    if !failures.is_empty() {
        bail!(
            "module dependencies must point one way:\n{}",
            failures.join("\n")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_use_groups_and_climbs() {
        let mods: BTreeSet<String> = ["a", "b", "c", "d"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let src = r#"
            use crate::{b::X, c::{self, Y}};
            // crate::d in a comment
            let s = "crate::d in a string";
            fn f() { super::super::d::g(); palisade_crate::a::h(); }
        "#;
        let mut got: Vec<String> = references(src, 2, "a", &mods)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        got.sort();
        assert_eq!(got, ["b", "c", "d"]);
        // one level down, `super::` is the module itself's parent: the root
        let got: Vec<String> = references("use super::c;", 1, "a", &mods)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(got, ["c"]);
        // two levels down, a single `super::` stays inside the module
        assert!(references("use super::c;", 2, "a", &mods).is_empty());
    }

    #[test]
    fn finds_cycles() {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut edge = |a: &str, b: &str| {
            g.entry(a.into()).or_default().insert(b.into());
            g.entry(b.into()).or_default();
        };
        edge("config", "events");
        edge("state", "config");
        edge("state", "policy");
        edge("policy", "metrics");
        edge("metrics", "state");
        assert_eq!(cycles(&g), vec![vec!["metrics", "policy", "state"]]);
        g.get_mut("metrics").map(|d| d.remove("state"));
        assert!(cycles(&g).is_empty());
    }
}
