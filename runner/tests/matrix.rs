//! `runner matrix`: a small matrix end to end (tables, plots, exports), its reuse of finished
//! work, and a file with mistakes refused whole before anything runs.

use assert_cmd::Command;
use std::path::Path;

fn runner(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("runner").unwrap();
    c.current_dir(dir).arg("--quiet");
    c
}

fn out(c: &mut Command) -> (bool, String, String) {
    let o = c.output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const MATRIX: &str = r#"
datasets = ["checkerboard"]
steps = [2, 4]
samples = 60
eval_examples = 20
train_steps = 3
batch_size = 32
export = ["npz"]

[[models]]
preset = "ddpm"

[[models]]
preset = "fm-ot"
label = "fm"

[[solvers]]
kind = "ddim"

[[solvers]]
kind = "euler-maruyama"
eta = 0.0
label = "euler"
"#;

fn results(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("results.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_matrix_runs_reuses_its_work_and_finishes_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("m.toml"), MATRIX).unwrap();
    let (ok, _, stderr) =
        out(runner(tmp.path()).args(["matrix", "m.toml", "--out", "mx", "--skip-incompatible"]));
    assert!(ok, "{stderr}");
    let mx = tmp.path().join("mx");
    for f in [
        "results.md",
        "results.csv",
        "results.json",
        "quality-checkerboard.png",
        "wall-checkerboard.png",
        "nelbo-checkerboard.png",
    ] {
        assert!(mx.join(f).is_file(), "no {f}: {stderr}");
    }
    let rows = results(&mx);
    // 2 models x 2 solvers x 2 step counts, each row with its metrics and their sample sizes.
    assert_eq!(rows.len(), 8, "{rows:?}");
    let cells: std::collections::BTreeSet<(String, String, u64)> = rows
        .iter()
        .map(|r| {
            assert_eq!(r["n"], 60, "{r}");
            assert!(r["sliced_w2"].as_f64().unwrap() >= 0.0, "{r}");
            assert!(r["nelbo_nats"].as_f64().unwrap().is_finite(), "{r}");
            assert_eq!(r["nelbo_nats_n"], 20, "{r}");
            (
                r["model"].as_str().unwrap().to_string(),
                r["solver"].as_str().unwrap().to_string(),
                r["steps"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(cells.len(), rows.len(), "duplicate cells: {rows:?}");
    for steps in [2, 4] {
        assert!(cells.contains(&("ddpm".into(), "ddim".into(), steps)));
        assert!(cells.contains(&("fm".into(), "euler".into(), steps)));
    }
    let md = std::fs::read_to_string(mx.join("results.md")).unwrap();
    assert!(md.contains("| ddpm |") && md.contains("| fm |"), "{md}");
    let csv = std::fs::read_to_string(mx.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), rows.len() + 1);
    assert!(csv.starts_with("model,dataset,seed,solver,spacing,steps,nfe,n,seconds"));
    // The npz export of a cell holds the samples.
    let npz: Vec<_> = walk(&mx.join("cells"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "npz"))
        .collect();
    assert_eq!(npz.len(), rows.len());
    let arrays = candle_core::npy::NpzTensors::new(&npz[0]).unwrap();
    let s = arrays.get("samples").unwrap().unwrap();
    assert_eq!(s.dims(), &[60, 2]);

    // Again: nothing is trained or sampled, the tables are the same.
    let before = std::fs::read_to_string(mx.join("results.json")).unwrap();
    let (ok, stdout, stderr) =
        out(runner(tmp.path()).args(["matrix", "m.toml", "--out", "mx", "--skip-incompatible"]));
    assert!(ok, "{stderr}");
    assert!(
        !stdout.contains("trained ") && !stdout.contains("sampled "),
        "{stdout}"
    );
    assert_eq!(
        before,
        std::fs::read_to_string(mx.join("results.json")).unwrap()
    );

    // A cell whose result is gone (an interrupted pass) is redone, and only that one.
    let gone = walk(&mx.join("cells"))
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with("ddim-default-4.json"))
        .unwrap();
    std::fs::remove_file(&gone).unwrap();
    let (ok, stdout, stderr) =
        out(runner(tmp.path()).args(["matrix", "m.toml", "--out", "mx", "--skip-incompatible"]));
    assert!(ok, "{stderr}");
    assert_eq!(stdout.matches("sampled ").count(), 1, "{stdout}");
    assert!(!stdout.contains("trained "), "{stdout}");
    assert!(gone.is_file());
    assert_eq!(results(&mx).len(), rows.len());
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_matrix_with_mistakes_lists_them_all_and_runs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = r#"
datasets = ["checkerboard", "nosuch"]
steps = [10, 2000]
[[models]]
preset = "ddpm"
[[models]]
preset = "nope"
[[models]]
preset = "ndm"
set = ["schedule.bogus=1"]
[[solvers]]
kind = "ancestral"
[[solvers]]
kind = "warp"
"#;
    std::fs::write(tmp.path().join("bad.toml"), bad).unwrap();
    let (ok, _, stderr) = out(runner(tmp.path()).args(["matrix", "bad.toml", "--out", "mx"]));
    assert!(!ok);
    assert!(!stderr.contains("panicked"), "{stderr}");
    for needle in [
        "solver `warp`: unknown solver plugin",
        "model `nope` on checkerboard: unknown preset `nope`",
        "model `ndm` on checkerboard: schedule.vp-linear: unknown field `bogus`",
        "dataset `nosuch`: unknown dataset plugin",
        "model `ddpm` on checkerboard, solver `ancestral`, default spacing, 2000 steps",
        "Error: the matrix has 5 problems, listed above; nothing was run",
    ] {
        assert!(stderr.contains(needle), "`{needle}` not in: {stderr}");
    }
    assert!(
        !tmp.path().join("mx").exists(),
        "a refused matrix wrote files"
    );
    // A file that is not a matrix: one line naming the file and the field.
    std::fs::write(tmp.path().join("worse.toml"), "models = 3\n").unwrap();
    let (ok, _, stderr) = out(runner(tmp.path()).args(["matrix", "worse.toml"]));
    assert!(!ok);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("Error: worse.toml: invalid type"),
        "{stderr}"
    );
    // Flags alone must name every list.
    let (ok, _, stderr) = out(runner(tmp.path()).args(["matrix", "--models", "ddpm"]));
    assert!(!ok);
    assert!(
        stderr.contains("the matrix has no datasets, no solvers, no steps"),
        "{stderr}"
    );
}
