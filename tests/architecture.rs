//! The shape of the code, as ARCHITECTURE.md states it, checked on the source itself: no import
//! circle between top-level modules; configuration imports nothing of the store, the pool or
//! the vault; nothing outside `store/` names a store backend.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Each top-level module of the library, with its source files.
fn modules() -> BTreeMap<String, Vec<PathBuf>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if name == "lib" || name == "main" {
            continue;
        }
        let mut files = Vec::new();
        if path.is_dir() {
            rust_files(&path, &mut files);
        } else {
            files.push(path);
        }
        out.entry(name).or_default().extend(files);
    }
    out
}

/// The code of a file without its tests and comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a module's code names through `crate::`.
fn imports(files: &[PathBuf], names: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for f in files {
        let code = code(f);
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if names.contains(&name) {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn no_import_circle_between_top_level_modules() {
    let modules = modules();
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    let graph: BTreeMap<String, BTreeSet<String>> = modules
        .iter()
        .map(|(m, files)| {
            let mut deps = imports(files, &names);
            deps.remove(m);
            (m.clone(), deps)
        })
        .collect();
    assert!(graph.len() > 10, "the modules were not found: {graph:?}");
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(at) = path.iter().position(|p| p == m) {
            panic!("import circle: {} -> {m}", path[at..].join(" -> "));
        }
        path.push(m.to_string());
        for d in &graph[m] {
            visit(d, graph, path, done);
        }
        path.pop();
        done.insert(m.to_string());
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done);
    }
    let config = &graph["config"];
    for other in ["store", "cluster", "vault"] {
        assert!(!config.contains(other), "config imports {other}");
    }
}

#[test]
fn nothing_outside_the_store_names_a_backend() {
    let modules = modules();
    for (m, files) in &modules {
        if m == "store" {
            continue;
        }
        for f in files {
            let code = code(f);
            for name in ["store::pg", "store::sled", "PgQueue", "SledQueue", "sled::"] {
                assert!(
                    !code.contains(name),
                    "{} names {name}: go through store::Queue (or store::chosen)",
                    f.display()
                );
            }
        }
    }
}
