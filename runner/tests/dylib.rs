//! Third-party plugins from shared libraries: the example crate built as a cdylib and loaded
//! through a registry file, and every way a library can be wrong, each a one-line error.
//!
//! The libraries are built here with cargo into `target/plugin-build` (their own target dir, so
//! the nested build never waits on this test's own).

use assert_cmd::Command;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The workspace root (these tests live in the runner package).
fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The file cargo builds for a cdylib crate named `stem` (`libstem.so`, `libstem.dylib`, `stem.dll`).
fn lib_file(stem: &str) -> String {
    format!(
        "{}{stem}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// Our name for a copied library: `name` with the platform's suffix (`edm.so`, `edm.dylib`,
/// `edm.dll`).
fn lib_name(name: &str) -> String {
    format!("{name}{}", std::env::consts::DLL_SUFFIX)
}

/// Builds a crate's cdylib with the given features and copies it to `out/<name>.<ext>`.
fn build(manifest: &str, features: &str, lib_stem: &str, name: &str, out: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = root().join("target/plugin-build");
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(root())
        .args([
            "build",
            "--release",
            "--lib",
            "--manifest-path",
            manifest,
            "--target-dir",
        ])
        .arg(&target)
        .env_remove("CARGO_TARGET_DIR");
    if !features.is_empty() {
        cmd.args(["--features", features]);
    }
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "building {manifest} [{features}] failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let dest = out.join(lib_name(name));
    std::fs::copy(target.join("release").join(lib_file(lib_stem)), &dest).unwrap();
    dest
}

struct Libs {
    dir: PathBuf,
}

fn libs() -> &'static Libs {
    static LIBS: OnceLock<Libs> = OnceLock::new();
    LIBS.get_or_init(|| {
        let dir = root().join("target/plugin-build/libs");
        std::fs::create_dir_all(&dir).unwrap();
        let example = "examples/third-party-plugin/Cargo.toml";
        let fixture = "tests/fixtures/bad-plugin/Cargo.toml";
        build(example, "dylib", "third_party_plugin", "edm", &dir);
        build(example, "", "third_party_plugin", "no-entry", &dir);
        for f in [
            "bad-abi",
            "bad-fingerprint",
            "bad-rustc",
            "bad-ndm-api",
            "panic",
            "duplicate",
        ] {
            build(fixture, f, "bad_plugin", f, &dir);
        }
        Libs { dir }
    })
}

/// A folder with a registry.toml naming `lib` (relative to the folder) and an `edm` preset.
fn workspace(lib_path: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(root().join("registry.toml")).unwrap();
    let ddpm_model = base
        .split("[presets.ddpm.model]")
        .nth(1)
        .unwrap()
        .split("[presets.ddpm.sampler]")
        .next()
        .unwrap()
        .replace("kind = \"vp-linear\", beta_start = 1e-4, beta_end = 0.02, steps = 1000, form = \"discrete\"", "kind = \"edm-vp\", rho = 7.0");
    let text = format!(
        "[[library]]\npath = \"{lib_path}\"\n\n[presets.edm]\nsummary = \"DDPM with EDM noise levels\"\n\n[presets.edm.model]\n{ddpm_model}\n[presets.edm.sampler]\nsolver = {{ kind = \"ancestral\" }}\nsteps = 20\n"
    );
    std::fs::write(tmp.path().join("registry.toml"), text).unwrap();
    tmp
}

/// Runs the runner in `dir` with `dir/registry.toml` named by `--registry` (a registry file's
/// libraries load only when it is named, by the flag or by $NDM_REGISTRY).
fn run(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let o = Command::cargo_bin("runner")
        .unwrap()
        .current_dir(dir)
        .env("RUST_BACKTRACE", "0")
        .env_remove("NDM_REGISTRY")
        .args(["--quiet", "--registry", "registry.toml"])
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn assert_one_line_error(ok: bool, stderr: &str, needles: &[&str]) {
    assert!(!ok, "expected failure");
    assert!(!stderr.contains("panicked at"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("Error: "), "{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "`{n}` not in {stderr}");
    }
}

fn copy_lib(name: &str, into: &Path) -> String {
    let file = lib_name(name);
    std::fs::copy(libs().dir.join(&file), into.join(&file)).unwrap();
    file
}

#[test]
fn a_library_plugin_is_listed_trains_and_samples() {
    let rel = format!("plugins/{}", lib_name("edm"));
    let ws = workspace(&rel);
    std::fs::create_dir_all(ws.path().join("plugins")).unwrap();
    copy_lib("edm", &ws.path().join("plugins"));
    let (ok, stdout, stderr) = run(ws.path(), &["list"]);
    assert!(ok, "{stderr}");
    let line = stdout
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("edm-vp"))
        .nth(1)
        .unwrap_or("");
    assert!(
        stdout.contains("edm-vp") && line.contains(&rel),
        "origin not shown:\n{stdout}"
    );
    let (ok, stdout, stderr) = run(
        ws.path(),
        &[
            "train",
            "--model",
            "edm",
            "--train-steps",
            "20",
            "--batch-size",
            "64",
            "-n",
            "100",
            "--eval-examples",
            "20",
            "--out",
            "run",
        ],
    );
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("for 20 steps") && stdout.contains("NFE 21"),
        "{stdout}"
    );
    let spec = std::fs::read_to_string(ws.path().join("run/spec.toml")).unwrap();
    assert!(
        spec.contains("edm-vp") && spec.contains("sigma_max"),
        "{spec}"
    );
    let (ok, _, stderr) = run(
        ws.path(),
        &[
            "sample", "run", "--solver", "ddim", "--steps", "10", "-n", "50",
        ],
    );
    assert!(ok, "{stderr}");
}

#[test]
fn library_not_found() {
    let missing = lib_name("missing");
    let ws = workspace(&missing);
    let (ok, _, stderr) = run(ws.path(), &["list"]);
    assert_one_line_error(ok, &stderr, &[&missing, "not found"]);
}

#[test]
fn file_that_is_not_a_library() {
    let fake = lib_name("fake");
    let ws = workspace(&fake);
    std::fs::write(ws.path().join(&fake), "this is not a shared library").unwrap();
    let (ok, _, stderr) = run(ws.path(), &["list"]);
    assert_one_line_error(
        ok,
        &stderr,
        &[&fake, "cannot be loaded as a shared library"],
    );
}

#[test]
fn library_without_the_entry_symbol() {
    let ws = workspace(&lib_name("no-entry"));
    copy_lib("no-entry", ws.path());
    let (ok, _, stderr) = run(ws.path(), &["list"]);
    assert_one_line_error(
        ok,
        &stderr,
        &["ndm_plugin_manifest", "not an ndm plugin library"],
    );
}

#[test]
fn manifest_with_another_abi_version() {
    let ws = workspace(&lib_name("bad-abi"));
    copy_lib("bad-abi", ws.path());
    let (ok, _, stderr) = run(ws.path(), &["list"]);
    assert_one_line_error(
        ok,
        &stderr,
        &[
            "ABI version 999",
            &format!("host speaks {}", ndm_api::sdk::ABI_VERSION),
        ],
    );
}

#[test]
fn manifest_with_another_rustc_version_names_both() {
    let ws = workspace(&lib_name("bad-rustc"));
    copy_lib("bad-rustc", ws.path());
    let (ok, _, stderr) = run(ws.path(), &["list"]);
    assert_one_line_error(
        ok,
        &stderr,
        &["rustc version", "rustc 1.0.0", ndm_api::sdk::RUSTC_VERSION],
    );
}

#[test]
fn manifest_with_another_ndm_api_version_names_both() {
    let ws = workspace(&lib_name("bad-ndm-api"));
    copy_lib("bad-ndm-api", ws.path());
    let (ok, _, stderr) = run(ws.path(), &["list"]);
    assert_one_line_error(
        ok,
        &stderr,
        &["ndm-api version", "0.0.1-other", ndm_api::VERSION],
    );
}

#[test]
fn registration_that_panics() {
    let ws = workspace(&lib_name("panic"));
    copy_lib("panic", ws.path());
    let (ok, _, stderr) = run(ws.path(), &["list"]);
    // The SDK's guard catches the panic on the library's side (its own std) and silences it.
    assert_one_line_error(
        ok,
        &stderr,
        &["registration panicked: fixture: registration fails on purpose"],
    );
}

#[test]
fn plugin_name_that_duplicates_a_builtin() {
    let ws = workspace(&lib_name("duplicate"));
    copy_lib("duplicate", ws.path());
    let (ok, _, stderr) = run(ws.path(), &["list"]);
    assert_one_line_error(ok, &stderr, &["schedule.cosine", "duplicates", "built-in"]);
}

#[test]
fn expected_name_must_match() {
    let ws = workspace(&lib_name("edm"));
    let path = format!("path = \"{}\"", copy_lib("edm", ws.path()));
    let reg = std::fs::read_to_string(ws.path().join("registry.toml"))
        .unwrap()
        .replacen(&path, &format!("{path}\nname = \"someone-else\""), 1);
    std::fs::write(ws.path().join("registry.toml"), reg).unwrap();
    let (ok, _, stderr) = run(ws.path(), &["list"]);
    assert_one_line_error(ok, &stderr, &["third-party-plugin", "someone-else"]);
}

#[test]
fn manifest_with_another_fingerprint_names_both() {
    let ws = workspace(&lib_name("bad-fingerprint"));
    copy_lib("bad-fingerprint", ws.path());
    let (ok, _, stderr) = run(ws.path(), &["list"]);
    assert_one_line_error(
        ok,
        &stderr,
        &[
            "ndm-api fingerprint",
            "00000000deadbeef",
            ndm_api::sdk::FINGERPRINT,
        ],
    );
}

/// The runner in `dir` without `--registry`, with `NDM_REGISTRY` set to `env` or unset.
fn run_unnamed(dir: &Path, env: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut c = Command::cargo_bin("runner").unwrap();
    c.current_dir(dir)
        .env("RUST_BACKTRACE", "0")
        .env_remove("NDM_REGISTRY");
    if let Some(v) = env {
        c.env("NDM_REGISTRY", v);
    }
    let o = c.arg("--quiet").args(args).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A `registry.toml` in the working folder gives presets but never runs a library's code: its
/// libraries load only when the file is named (`--registry` or `$NDM_REGISTRY`), and the runner
/// says which library it loaded.
#[test]
fn a_library_loads_only_from_a_named_registry() {
    let ws = workspace(&lib_name("edm"));
    copy_lib("edm", ws.path());
    let (ok, stdout, stderr) = run_unnamed(ws.path(), None, &["list"]);
    assert!(ok, "{stderr}");
    assert!(
        !stdout.contains("edm-vp"),
        "loaded without being named:\n{stdout}"
    );
    assert!(
        stdout.contains("edm "),
        "the folder's presets are still read:\n{stdout}"
    );
    assert!(
        stderr.contains("did not load") && stderr.contains("--registry"),
        "{stderr}"
    );
    for named in [
        run(ws.path(), &["list"]),
        run_unnamed(ws.path(), Some("registry.toml"), &["list"]),
    ] {
        let (ok, stdout, stderr) = named;
        assert!(ok, "{stderr}");
        assert!(stdout.contains("edm-vp"), "{stdout}");
        assert!(
            stderr.contains("loaded plugin library") && stderr.contains("schedule.edm-vp"),
            "{stderr}"
        );
    }
}
