//! The shape of the code as a graph: which crates of the workspace depend on which, and which
//! top-level modules of a crate refer to which. The suite checks both for cycles, so that the
//! layers in docs/architecture.md stay true.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Nodes and the nodes each one points to.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// A cycle in `graph`, as the path that closes it (first node repeated at the end), or `None`.
pub fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit<'a>(
        node: &'a str,
        graph: &'a Graph,
        marks: &mut BTreeMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = path.iter().position(|on_path| *on_path == node).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|name| (*name).to_owned()).collect();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node, Mark::Visiting);
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(node, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph.keys().find_map(|node| visit(node, graph, &mut marks, &mut Vec::new()))
}

/// The nodes of an acyclic `graph` in layers: the first holds the nodes that point nowhere, each
/// next one the nodes that point only into the layers before it.
pub fn layers(graph: &Graph) -> Vec<Vec<String>> {
    let mut placed = BTreeSet::new();
    let mut layers = Vec::new();
    while placed.len() < graph.len() {
        let layer: Vec<String> = graph
            .iter()
            .filter(|(node, targets)| !placed.contains(*node) && targets.iter().all(|target| placed.contains(target)))
            .map(|(node, _)| node.clone())
            .collect();
        if layer.is_empty() {
            break;
        }
        placed.extend(layer.iter().cloned());
        layers.push(layer);
    }
    layers
}

/// How the workspace's crates depend on each other (normal and build dependencies; a test-only
/// dependency cannot make a build cycle): each member's package name to the members it names.
pub fn crate_graph(workspace_root: &Path, members: &[&str]) -> Graph {
    let manifests: Vec<(String, toml::Table)> = members
        .iter()
        .map(|member| {
            let path = workspace_root.join(member).join("Cargo.toml");
            let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
            let manifest: toml::Table = text.parse().unwrap_or_else(|err| panic!("{}: {err}", path.display()));
            let name = manifest["package"]["name"].as_str().expect("a package name").to_owned();
            (name, manifest)
        })
        .collect();
    let names: BTreeSet<&str> = manifests.iter().map(|(name, _)| name.as_str()).collect();
    manifests
        .iter()
        .map(|(name, manifest)| {
            let depends_on = ["dependencies", "build-dependencies"]
                .iter()
                .filter_map(|section| manifest.get(*section).and_then(toml::Value::as_table))
                .flat_map(|section| section.keys())
                .filter(|dependency| names.contains(dependency.as_str()))
                .cloned()
                .collect();
            (name.clone(), depends_on)
        })
        .collect()
}

/// How the top-level modules of the crate whose sources are in `src` refer to each other: a
/// module points to another when its code (outside its `#[cfg(test)]` modules) names
/// `crate::other`, or reaches the crate root with `super::` (`super::super::` one folder down)
/// and names `other`. `lib.rs` and `main.rs` only declare modules and are left out.
pub fn module_graph(src: &Path) -> Graph {
    let modules: BTreeSet<String> = std::fs::read_dir(src)
        .unwrap_or_else(|err| panic!("{}: {err}", src.display()))
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let path = entry.path();
            let stem = path.file_stem()?.to_str()?.to_owned();
            let is_module = path.is_dir() || path.extension().is_some_and(|extension| extension == "rs");
            (is_module && stem != "lib" && stem != "main").then_some(stem)
        })
        .collect();
    modules
        .iter()
        .map(|module| {
            let mut files = Vec::new();
            rust_files(&src.join(module), &mut files);
            rust_files(&src.join(format!("{module}.rs")), &mut files);
            let mut refers_to = BTreeSet::new();
            for file in files {
                let text = std::fs::read_to_string(&file).unwrap_or_else(|err| panic!("{}: {err}", file.display()));
                let code = without_test_modules(&text);
                let depth = depth_below_root(src, &file);
                for named in crate_paths(code).chain(root_paths(code, depth)) {
                    if named != module && modules.contains(named) {
                        refers_to.insert(named.to_owned());
                    }
                }
            }
            (module.clone(), refers_to)
        })
        .collect()
}

fn rust_files(path: &Path, into: &mut Vec<std::path::PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path).into_iter().flatten().filter_map(Result::ok).collect();
        entries.sort_by_key(std::fs::DirEntry::path);
        for entry in entries {
            rust_files(&entry.path(), into);
        }
    } else if path.is_file() && path.extension().is_some_and(|extension| extension == "rs") {
        into.push(path.to_owned());
    }
}

/// The source up to its test module: by convention a file's `#[cfg(test)] mod tests` comes last.
fn without_test_modules(text: &str) -> &str {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim() == "#[cfg(test)]" && text[offset + line.len()..].trim_start().starts_with("mod ") {
            return &text[..offset];
        }
        offset += line.len();
    }
    text
}

/// How many `super::` lead from `file`'s module to the crate root: 1 for `a.rs` and `a/mod.rs`,
/// 2 for `a/b.rs`.
fn depth_below_root(src: &Path, file: &Path) -> usize {
    let relative = file.strip_prefix(src).unwrap_or(file);
    let components = relative.components().count();
    if relative.file_name().is_some_and(|name| name == "mod.rs") { components - 1 } else { components }
}

/// The first segment after every run of exactly `depth` `super::` in `text`: the crate root's
/// items named from a module `depth` levels below it.
fn root_paths(text: &str, depth: usize) -> Vec<&str> {
    let prefix = "super::".repeat(depth);
    text.match_indices(prefix.as_str())
        .filter_map(|(at, _)| {
            let before = &text[..at];
            if before.ends_with("super::")
                || before.chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_')
            {
                return None;
            }
            let rest = &text[at + prefix.len()..];
            let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
            Some(&rest[..end]).filter(|name| !name.is_empty() && *name != "super")
        })
        .collect()
}

/// The first segment after every `crate::` in `text`.
fn crate_paths(text: &str) -> impl Iterator<Item = &str> {
    text.match_indices("crate::").filter_map(move |(at, _)| {
        // `sluice_crate::` or `my_crate::` is not this crate.
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            return None;
        }
        let rest = &text[at + "crate::".len()..];
        let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
        Some(&rest[..end]).filter(|name| !name.is_empty())
    })
}

/// The workspace's member folders, relative to `workspace_root`, with `dir/*` entries expanded.
pub fn workspace_members(workspace_root: &Path) -> Vec<String> {
    let path = workspace_root.join("Cargo.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let manifest: toml::Table = text.parse().unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let members = manifest["workspace"]["members"].as_array().expect("workspace.members is a list");
    let mut expanded = Vec::new();
    for member in members.iter().filter_map(toml::Value::as_str) {
        match member.strip_suffix("/*") {
            Some(parent) => {
                let mut children: Vec<String> = std::fs::read_dir(workspace_root.join(parent))
                    .into_iter()
                    .flatten()
                    .filter_map(Result::ok)
                    .filter(|entry| entry.path().join("Cargo.toml").exists())
                    .map(|entry| format!("{parent}/{}", entry.file_name().to_string_lossy()))
                    .collect();
                children.sort();
                expanded.extend(children);
            }
            None => expanded.push(member.to_owned()),
        }
    }
    expanded
}
