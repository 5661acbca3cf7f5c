//! The code's shape: no crate of the workspace and no top-level module of a crate depends on
//! anything that depends back on it (docs/architecture.md draws the layers this keeps).

use std::collections::BTreeSet;

use sluice_tests::architecture::{Graph, crate_graph, find_cycle, layers, module_graph, workspace_members};
use sluice_tests::repo_root;

fn graph(edges: &[(&str, &[&str])]) -> Graph {
    edges
        .iter()
        .map(|(node, targets)| ((*node).to_owned(), targets.iter().map(|target| (*target).to_owned()).collect()))
        .collect()
}

#[test]
fn the_checker_finds_a_cycle_and_passes_a_layered_graph() {
    let layered = graph(&[("server", &["pipeline", "config"]), ("pipeline", &["config"]), ("config", &[])]);
    assert_eq!(find_cycle(&layered), None);
    assert_eq!(layers(&layered), vec![vec!["config"], vec!["pipeline"], vec!["server"]]);

    let cyclic =
        graph(&[("server", &["pipeline"]), ("pipeline", &["admin"]), ("admin", &["server"]), ("cli", &["server"])]);
    let cycle = find_cycle(&cyclic).expect("server -> pipeline -> admin -> server is a cycle");
    assert_eq!(cycle.first(), cycle.last(), "the path closes: {cycle:?}");
    assert_eq!(cycle.len(), 4, "{cycle:?}");
    let on_cycle: BTreeSet<&str> = cycle.iter().map(String::as_str).collect();
    assert_eq!(on_cycle, BTreeSet::from(["admin", "pipeline", "server"]));
}

#[test]
fn the_checker_reads_module_references_from_the_sources() {
    let dir = std::env::temp_dir().join(format!("sluice-architecture-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("server")).unwrap();
    std::fs::write(dir.join("lib.rs"), "pub mod admin;\npub mod server;\npub mod config;\npub mod telemetry;\n")
        .unwrap();
    std::fs::write(
        dir.join("config.rs"),
        "//! Config.\n#[cfg(test)]\nmod tests {\n    use crate::server::Server;\n}\n",
    )
    .unwrap();
    std::fs::write(dir.join("admin.rs"), "use crate::config::Snapshot;\nfn f() -> sluice_http::X { todo() }\n")
        .unwrap();
    std::fs::write(dir.join("server/mod.rs"), "mod connection;\nuse crate::admin;\n").unwrap();
    std::fs::write(
        dir.join("server/connection.rs"),
        "fn f(_: crate::config::Snapshot) {}\nuse super::super::telemetry;\n",
    )
    .unwrap();
    std::fs::write(dir.join("telemetry.rs"), "use super::config::Snapshot;\nuse super::super::admin;\n").unwrap();
    let found = module_graph(&dir);
    assert_eq!(
        found,
        graph(&[
            ("admin", &["config"]),
            ("config", &[]),
            ("server", &["admin", "config", "telemetry"]),
            ("telemetry", &["config"]),
        ])
    );
    assert_eq!(find_cycle(&found), None, "a test module's references do not count");

    // One import the other way closes a cycle, and the check fails on it.
    std::fs::write(dir.join("config.rs"), "use crate::server::Server;\n").unwrap();
    let cycle = find_cycle(&module_graph(&dir)).expect("config -> server -> ... -> config");
    assert!(cycle.contains(&"config".to_owned()) && cycle.contains(&"server".to_owned()), "{cycle:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_workspace_crates_form_layers_without_cycles() {
    let root = repo_root();
    let members = workspace_members(&root);
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    let crates = crate_graph(&root, &members);
    if let Some(cycle) = find_cycle(&crates) {
        panic!("the crates depend on each other in a cycle: {}", cycle.join(" -> "));
    }
    // The proxy's own crates, leaf first, as docs/architecture.md lists them.
    let sluice_crates: Vec<Vec<String>> = layers(&crates)
        .into_iter()
        .map(|layer| layer.into_iter().filter(|name| name.starts_with("sluice")).collect::<Vec<_>>())
        .filter(|layer| !layer.is_empty())
        .collect();
    assert!(sluice_crates[0].contains(&"sluice-http".to_owned()), "{sluice_crates:?}");
    let runtime = &crates["sluice-runtime"];
    assert!(
        !runtime.contains("sluice-upstream"),
        "the filter runtime reaches upstreams only through its callout trait"
    );
}

#[test]
fn no_crate_has_a_cycle_between_its_top_level_modules() {
    let root = repo_root();
    for member in workspace_members(&root) {
        let src = root.join(&member).join("src");
        if !src.is_dir() {
            continue;
        }
        let modules = module_graph(&src);
        if let Some(cycle) = find_cycle(&modules) {
            panic!("the top-level modules of {member} refer to each other in a cycle: {}", cycle.join(" -> "));
        }
    }
}
