//! The house rules of `src/`, checked on every test run (DESIGN.md §3).
//!
//! - No import circles, between files or between top-level modules: when
//!   two modules need a type, it lives in a module below both.
//! - The data path (`runtime/`, `session/`, `route/`, `backend/`,
//!   `relay.rs` and the codecs under them) imports nothing of the control
//!   wing (`control/`, `health/`, `admin/`, `cluster/`).
//! - The control wing imports no session and no runtime code: it reaches
//!   the cores only through the messages of `plane/` and the mailboxes.
//! - `dev/` (the embedded backends) stands apart from the director.
//!
//! References are read from the source as `crate::a::b` paths outside
//! comments, `use crate::a::{b, c::d}` groups included, and resolved to the
//! longest module path that is a file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path, e.g. `["session", "imap"]`.
type ModPath = Vec<String>;

/// Every `.rs` file under `src/`, by module path.
fn source_files() -> BTreeMap<ModPath, PathBuf> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<ModPath, PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("src/ is readable")
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(root).expect("under src/");
                let mut parts: ModPath = rel
                    .with_extension("")
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if parts.last().is_some_and(|p| p == "mod") {
                    parts.pop();
                }
                out.insert(parts, path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    walk(&root, &root, &mut out);
    out
}

/// The `crate::` paths a piece of code names, `use` groups expanded (also
/// nested and spread over several lines).
fn crate_paths(code: &str) -> Vec<ModPath> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        let consumed = expand(after, Vec::new(), &mut found);
        rest = &after[consumed..];
    }
    found
}

/// Reads one path (with its group, if any) from the start of `text`,
/// prefixed by `prefix`; pushes every path it names and returns how many
/// bytes it read.
fn expand(text: &str, prefix: ModPath, found: &mut Vec<ModPath>) -> usize {
    let text_start = text.len() - text.trim_start().len();
    let body = &text[text_start..];
    let len = body
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(body.len());
    let mut path = prefix;
    path.extend(
        body[..len]
            .split("::")
            .filter(|s| !s.is_empty() && *s != "self")
            .take_while(|s| s.starts_with(|c: char| c.is_ascii_lowercase()))
            .map(str::to_owned),
    );
    let mut read = text_start + len;
    if body[..len].ends_with("::") && body[len..].starts_with('{') {
        read += 1;
        loop {
            let rest = &text[read..];
            let item_end = expand(rest, path.clone(), found);
            read += item_end;
            let after = &text[read..];
            let skip = after.len() - after.trim_start().len();
            read += skip;
            match text[read..].chars().next() {
                Some(',') => read += 1,
                Some('}') => {
                    read += 1;
                    break;
                }
                // `as name` or anything unexpected: skip to the next
                // separator of this group.
                Some(_) => {
                    let tail = &text[read..];
                    match tail.find([',', '}']) {
                        Some(k) => read += k,
                        None => return text.len(),
                    }
                }
                None => return text.len(),
            }
        }
    }
    if !path.is_empty() {
        found.push(path);
    }
    read
}

/// The file-level import graph: module path → the module files it names.
fn import_graph(files: &BTreeMap<ModPath, PathBuf>) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let resolve = |path: &ModPath| -> Option<ModPath> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| files.contains_key(p))
    };
    let mut graph = BTreeMap::new();
    for (module, file) in files {
        let text = std::fs::read_to_string(file).expect("source file is readable");
        let code: String = text
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join(" ");
        let mut targets = BTreeSet::new();
        {
            for path in crate_paths(&code) {
                if let Some(target) = resolve(&path) {
                    // A child naming its own ancestor module is not an edge
                    // (the ancestor only declares it).
                    let ancestor =
                        target.len() < module.len() && module[..target.len()] == target[..];
                    if &target != module && !ancestor {
                        targets.insert(target);
                    }
                }
            }
        }
        graph.insert(module.clone(), targets);
    }
    graph
}

/// The strongly connected components with more than one member (Tarjan).
fn circles(graph: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<ModPath, BTreeSet<ModPath>>,
        index: BTreeMap<&'a ModPath, usize>,
        low: BTreeMap<&'a ModPath, usize>,
        stack: Vec<&'a ModPath>,
        on_stack: BTreeSet<&'a ModPath>,
        found: Vec<Vec<ModPath>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a ModPath) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            let graph = self.graph;
            for w in graph.get(v).into_iter().flatten() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v) {
            walk.visit(v);
        }
    }
    walk.found
}

/// The top-level module graph derived from the file graph.
fn top_level(graph: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let mut top: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for (from, targets) in graph {
        let entry = top.entry(vec![from[0].clone()]).or_default();
        for to in targets {
            if to[0] != from[0] {
                entry.insert(vec![to[0].clone()]);
            }
        }
    }
    top
}

fn show(paths: &[ModPath]) -> String {
    paths
        .iter()
        .map(|p| p.join("/"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which top-level modules of `from` name one of `forbidden`.
fn violations(
    graph: &BTreeMap<ModPath, BTreeSet<ModPath>>,
    from: &[&str],
    forbidden: &[&str],
) -> Vec<String> {
    let mut out = Vec::new();
    for (module, targets) in graph {
        if !from.contains(&module[0].as_str()) {
            continue;
        }
        for t in targets {
            if forbidden.contains(&t[0].as_str()) {
                out.push(format!("{} imports {}", module.join("/"), t.join("/")));
            }
        }
    }
    out
}

const CONTROL_WING: &[&str] = &["control", "health", "admin", "cluster"];
const DATA_PATH: &[&str] = &[
    "runtime", "session", "route", "backend", "relay", "proto", "tls", "io", "bufpool", "limits",
    "plane", "mailbox", "startup",
];

#[test]
fn the_parser_reads_groups_and_nested_paths() {
    let p = |s: &str| -> ModPath { s.split('/').map(str::to_owned).collect() };
    let paths =
        crate_paths("use crate::route::{backends::BackendId, router::{Router, self}, hrw as h};");
    assert!(paths.contains(&p("route/backends")), "{paths:?}");
    assert!(paths.contains(&p("route/router")), "{paths:?}");
    assert!(paths.contains(&p("route/hrw")), "{paths:?}");
    let paths = crate_paths(
        "use crate::plane::{\n    messages::CoreMsg,\n    stats::{Counters, CoreStats},\n};",
    );
    assert!(paths.contains(&p("plane/messages")), "{paths:?}");
    assert!(paths.contains(&p("plane/stats")), "{paths:?}");
    let paths = crate_paths("let x = crate::plane::stats::Counters::default();");
    assert_eq!(paths, vec![p("plane/stats")]);
}

#[test]
fn no_file_imports_itself_back_through_others() {
    let graph = import_graph(&source_files());
    assert!(graph.len() > 50, "found only {} source files", graph.len());
    let found = circles(&graph);
    assert!(
        found.is_empty(),
        "import circles between files: {}",
        found
            .iter()
            .map(|c| format!("[{}]", show(c)))
            .collect::<Vec<_>>()
            .join("; ")
    );
}

#[test]
fn no_top_level_module_imports_itself_back_through_others() {
    let graph = top_level(&import_graph(&source_files()));
    let found = circles(&graph);
    assert!(
        found.is_empty(),
        "import circles between modules: {}",
        found
            .iter()
            .map(|c| format!("[{}]", show(c)))
            .collect::<Vec<_>>()
            .join("; ")
    );
}

#[test]
fn the_data_path_imports_nothing_of_the_control_wing() {
    let graph = import_graph(&source_files());
    let found = violations(&graph, DATA_PATH, CONTROL_WING);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_control_wing_reaches_the_cores_only_through_plane_messages() {
    let graph = import_graph(&source_files());
    let found = violations(&graph, CONTROL_WING, &["session", "runtime"]);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_dev_backends_stand_apart_from_the_director() {
    let graph = import_graph(&source_files());
    let director: Vec<&str> = DATA_PATH
        .iter()
        .chain(CONTROL_WING)
        .copied()
        .filter(|m| !matches!(*m, "io" | "proto" | "bufpool"))
        .collect();
    let found = violations(&graph, &["dev"], &director);
    assert!(found.is_empty(), "{}", found.join("\n"));
}
