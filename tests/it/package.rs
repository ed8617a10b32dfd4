//! What a user of the crate gets from crates.io: the files `cargo package` ships, and the
//! page crates.io shows.
//!
//! crates.io resolves a README's relative links and pictures only against a `repository`
//! URL, and street has none yet. So its page is `docs/crates-io.md`, made from the parts
//! of README.md between `<!-- crates.io -->` and `<!-- /crates.io -->` (what it is,
//! `cargo add`, the hello world, mounting in axum, the features, the MSRV) and a footer.
//! README.md stays the one source: `UPDATE_CRATES_IO_README=1 cargo test --test it package::`
//! remakes the page after an edit, and the tests below fail while it is stale or holds a
//! link crates.io cannot follow.

use std::path::{Path, PathBuf};
use std::process::Command;

const BEGIN: &str = "<!-- crates.io -->";
const END: &str = "<!-- /crates.io -->";

const FOOTER: &str = "\
---

This page is the beginning of street's README. The whole guide (the demo, benchmarks
against `@streetjs/websocket`, rooms and channel history across nodes, limits and what
happens when they are hit, deployment behind a proxy, TLS, the wire format) is
[README.md](https://docs.rs/crate/street/latest/source/README.md), shipped in the crate
(its pictures and the files it links to stay in the repository); the API, with an example
for each part, is on [docs.rs](https://docs.rs/street). Licensed under MIT or Apache-2.0,
at your option.
";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The marked parts of `readme`, in order, then the footer.
fn crates_io_page(readme: &str) -> String {
    let mut page = String::new();
    let mut rest = readme;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start + BEGIN.len()..];
        let end = after
            .find(END)
            .unwrap_or_else(|| panic!("README.md: a {BEGIN} without its {END}"));
        page.push_str(after[..end].trim());
        page.push_str("\n\n");
        rest = &after[end + END.len()..];
    }
    assert!(
        !rest.contains(END),
        "README.md: an {END} without its {BEGIN}"
    );
    page.push_str(FOOTER);
    page
}

/// Links and pictures crates.io cannot follow: markdown targets and `<img src=…>` that
/// are neither absolute nor in-page.
fn relative_links(page: &str) -> Vec<String> {
    let absolute = |target: &str| {
        target.starts_with("https://") || target.starts_with("http://") || target.starts_with('#')
    };
    let mut found = Vec::new();
    for (i, _) in page.match_indices("](") {
        let target = page[i + 2..].split(')').next().unwrap_or_default();
        if !absolute(target) {
            found.push(target.to_owned());
        }
    }
    // HTML pictures: `<img … src="…">` (a `src=` in code is not one)
    for (i, _) in page.match_indices("<img ") {
        let tag = page[i..].split('>').next().unwrap_or_default();
        if let Some(at) = tag.find("src=\"") {
            let target = tag[at + 5..].split('"').next().unwrap_or_default();
            if !absolute(target) {
                found.push(target.to_owned());
            }
        }
    }
    found
}

#[test]
fn the_crates_io_page_is_made_from_the_readme() {
    let made = crates_io_page(&read(&root().join("README.md")));
    let path = root().join("docs/crates-io.md");
    if std::env::var_os("UPDATE_CRATES_IO_README").is_some() {
        std::fs::write(&path, &made).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    let committed = read(&path);
    assert!(
        committed == made,
        "docs/crates-io.md is stale: run `UPDATE_CRATES_IO_README=1 cargo test --test it package::`"
    );
    // what the issue asked of the first screen, and what the page is for
    for needle in [
        "# street\n",
        "cargo add street",
        "#[tokio::main]",
        "## Cargo features",
        "MSRV: Rust",
    ] {
        assert!(made.contains(needle), "the crates.io page lacks {needle:?}");
    }
}

#[test]
fn the_crates_io_page_has_no_relative_links() {
    let page = read(&root().join("docs/crates-io.md"));
    assert_eq!(relative_links(&page), Vec::<String>::new());
    // the check itself sees what the full README has: its pictures and BENCHMARKS.md
    let readme = relative_links(&read(&root().join("README.md")));
    assert!(readme.iter().any(|l| l == "docs/chat.png"), "{readme:?}");
    assert!(readme.iter().any(|l| l == "BENCHMARKS.md"), "{readme:?}");
}

#[test]
fn cargo_package_ships_the_library_its_page_and_licences() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root())
        .args([
            "package",
            "-p",
            "street",
            "--list",
            "--allow-dirty",
            "--offline",
        ])
        .output()
        .expect("cargo package --list runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cargo package --list: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let files: Vec<&str> = stdout.lines().collect();
    for shipped in [
        "Cargo.toml",
        "README.md",
        "docs/crates-io.md",
        "CHANGELOG.md",
        "LICENSE-MIT",
        "LICENSE-APACHE",
        "src/lib.rs",
        "examples/chat.rs",
        // street::client serves them
        "client/street.js",
        "client/street.mjs",
    ] {
        assert!(
            files.contains(&shipped),
            "{shipped} is not shipped: {files:?}"
        );
    }
    // the repository's own machinery stays out of the crate
    for kept in [
        "tests/",
        "crates/",
        "client/build.mjs",
        "client/package.json",
        "scripts/",
        "bench/",
        "fuzz/",
        "docs/chat.png",
    ] {
        assert!(
            !files.iter().any(|f| f.starts_with(kept)),
            "{kept} is shipped: {files:?}"
        );
    }
    // and Cargo.toml sends crates.io to the page made above
    let manifest = read(&root().join("Cargo.toml"));
    assert!(
        manifest.contains("\nreadme = \"docs/crates-io.md\"\n"),
        "Cargo.toml's readme is not docs/crates-io.md"
    );
}
