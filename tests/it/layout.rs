//! The structure ARCHITECTURE.md promises, checked on the source text: every module is on the
//! map, imports run one way (no cycles, no stage importing a downstream one, `operate` importing
//! no stage), only `config` reads the environment, only `operate::signal` has `unsafe`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// `source::lines` for `src/source/lines.rs`, `source` for `src/source/mod.rs`.
fn module_name(path: &Path) -> String {
    let rel = path.strip_prefix(SRC).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every module's code without comments and without its unit tests.
fn modules() -> BTreeMap<String, String> {
    let mut files = Vec::new();
    rust_files(Path::new(SRC), &mut files);
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let text = match text.find("#[cfg(test)]") {
                Some(i) => &text[..i],
                None => &text[..],
            };
            let code: String = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .map(|l| format!("{l}\n"))
                .collect();
            (module_name(f), code)
        })
        .collect()
}

/// The modules `code` names through `crate::...` paths, resolved to the longest known module.
fn imports(code: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
        for n in (1..=parts.len()).rev() {
            let m = parts[..n].join("::");
            if known.contains(&m) {
                out.insert(m);
                break;
            }
        }
    }
    // `use crate::{a, b}` lists.
    for line in code
        .lines()
        .filter(|l| l.trim_start().starts_with("use crate::{"))
    {
        for name in line.split(['{', '}', ',', ' ']) {
            if known.contains(name) {
                out.insert(name.to_string());
            }
        }
    }
    out
}

fn stage(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

#[test]
fn imports_run_one_way() {
    let mods = modules();
    let known: BTreeSet<String> = mods.keys().cloned().collect();
    let graph: BTreeMap<&str, BTreeSet<String>> = mods
        .iter()
        .map(|(m, code)| {
            let mut deps = imports(code, &known);
            deps.remove(m);
            (m.as_str(), deps)
        })
        .collect();
    // Pairs that import each other.
    let mut cycles = Vec::new();
    for (m, deps) in &graph {
        for d in deps {
            // A module and its parent `mod.rs` (which only declares it) are not a cycle.
            if d.starts_with(&format!("{m}::")) || m.starts_with(&format!("{d}::")) {
                continue;
            }
            if graph.get(d.as_str()).is_some_and(|dd| dd.contains(*m)) {
                cycles.push(format!("{m} <-> {d}"));
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "modules importing each other: {cycles:?}"
    );
    // What each stage may import, besides itself.
    let allowed: BTreeMap<&str, &[&str]> = [
        ("operate", &[][..]),
        ("source", &["operate"][..]),
        ("detect", &["operate", "source"][..]),
        ("deliver", &["operate", "detect"][..]),
        ("pipeline", &["operate", "source", "detect", "deliver"][..]),
    ]
    .into_iter()
    .collect();
    let mut wrong = Vec::new();
    for (m, deps) in &graph {
        let Some(ok) = allowed.get(stage(m)) else {
            continue; // the commands and config sit on top
        };
        for d in deps {
            if stage(d) != stage(m) && !ok.contains(&stage(d)) {
                wrong.push(format!("{m} -> {d}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the data path: {wrong:?}");
}

#[test]
fn every_module_is_on_the_map() {
    let map =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/ARCHITECTURE.md")).unwrap();
    let missing: Vec<String> = modules()
        .into_keys()
        .filter(|m| !["lib", "operate", "source", "detect", "deliver"].contains(&m.as_str()))
        .filter(|m| !map.contains(&format!("`{m}`")) && !map.contains(&format!("`{m}`,")))
        .filter(|m| {
            // Listed together, e.g. `detect::yaml`, `detect::rules`.
            !map.contains(&format!("`{m}` "))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "modules missing from ARCHITECTURE.md: {missing:?}"
    );
}

#[test]
fn only_config_reads_the_environment_and_only_signal_is_unsafe() {
    for (m, code) in modules() {
        if m != "config" {
            assert!(
                !code.contains("env::var"),
                "{m} reads the environment: only config may"
            );
        }
        if m != "operate::signal" {
            let has_unsafe = ["unsafe {", "unsafe fn", "unsafe impl", "unsafe extern"]
                .iter()
                .any(|u| code.contains(u));
            assert!(!has_unsafe, "{m} has unsafe code");
        }
        assert!(!code.contains("static METRICS"), "{m}: a global Metrics");
    }
    let lib = std::fs::read_to_string(format!("{SRC}/lib.rs")).unwrap();
    assert!(lib.contains("#![deny(unsafe_code)]"));
}
