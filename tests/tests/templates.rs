//! The `sluice plugin new` templates, built and run as they stand in
//! crates/sluice-packages/templates (the scaffold tests build them as a user gets them).

use sluice_packages::Language;
use sluice_tests::{assert_gates_requests, template};

#[tokio::test]
async fn the_rust_template_builds_and_gates_requests_as_it_stands() {
    assert_gates_requests(&template(Language::Rust), "filter-template").await;
}

#[tokio::test]
async fn the_javascript_template_builds_and_gates_requests_as_it_stands() {
    assert_gates_requests(&template(Language::JavaScript), "filter-template").await;
}

#[tokio::test]
async fn the_go_template_builds_and_gates_requests_as_it_stands() {
    assert_gates_requests(&template(Language::Go), "filter-template").await;
}
