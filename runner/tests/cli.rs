//! The runner as a user meets it: listing, a small end-to-end run, and bad input that must end in
//! one clear line, a non-zero exit, no panic and no partial file.

use assert_cmd::Command;
use std::path::Path;

fn runner(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("runner").unwrap();
    c.current_dir(dir).arg("--quiet");
    c
}

/// The workspace root (these tests live in the runner package).
fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Runs and returns (success, stdout, stderr).
fn out(c: &mut Command) -> (bool, String, String) {
    let o = c.output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A failure that is one `Error:` line, no panic.
fn assert_clean_error(stderr: &str, needle: &str) {
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("Error: "), "{stderr}");
    assert!(lines[0].contains(needle), "`{needle}` not in: {stderr}");
}

const SMALL: &[&str] = &[
    "--train-steps",
    "30",
    "--batch-size",
    "64",
    "-n",
    "200",
    "--eval-examples",
    "50",
    "--steps",
    "20",
];

#[test]
fn list_names_every_registered_plugin() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, stdout, _) = out(runner(tmp.path()).arg("list"));
    assert!(ok);
    let reg = ndm_plugins_all::builtin_registry();
    assert!(reg.entries().len() >= 17);
    for e in reg.entries() {
        let header = format!("{}:", e.info.family());
        let section = stdout
            .split(&header)
            .nth(1)
            .unwrap_or_else(|| panic!("no section {header}"));
        let section = section.split("\n\n").next().unwrap();
        assert!(
            section
                .lines()
                .any(|l| l.split_whitespace().next() == Some(e.info.name)),
            "{} missing from runner list",
            e.info.full_name()
        );
    }
    assert!(stdout.contains("ddpm") && stdout.contains("ddim"));
}

#[test]
fn train_sample_eval_resume_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let (ok, stdout, stderr) = out(runner(tmp.path())
        .args(["train", "--model", "ddim", "--out", "run"])
        .args(SMALL));
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("inside_fraction") && stdout.contains("NELBO"),
        "{stdout}"
    );
    for f in [
        "spec.toml",
        "weights.safetensors",
        "train-state.safetensors",
        "samples.png",
        "samples.safetensors",
        "metrics.json",
    ] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["samples"]["nfe"], 21);
    assert!(m["eval"]["nelbo"]["mean"].as_f64().unwrap().is_finite());
    assert_eq!(m["eval"]["nelbo"]["n"], 50);
    // Sampling again with another solver and step count.
    let (ok, stdout, stderr) = out(runner(tmp.path()).args([
        "sample",
        "run",
        "--solver",
        "ancestral",
        "--steps",
        "10",
        "--spacing",
        "trailing",
        "-n",
        "100",
        "--seed",
        "3",
    ]));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("NFE 11"), "{stdout}");
    assert!(run.join("samples-ancestral-10.safetensors").is_file());
    let (ok, stdout, stderr) = out(runner(tmp.path()).args(["eval", "run", "--examples", "50"]));
    assert!(ok && stdout.contains("bits/dim"), "{stderr}");
    // `--nll-only` adds the ODE NLL and keeps the NELBO entries already written.
    let read_eval = || -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(run.join("eval.json")).unwrap()).unwrap()
    };
    let before = read_eval();
    assert!(before.get("ode_nll").is_none());
    let (ok, _, stderr) =
        out(runner(tmp.path()).args(["eval", "run", "--examples", "8", "--nll-only"]));
    assert!(ok, "{stderr}");
    let after = read_eval();
    assert!(
        after["ode_nll"]["nll"]["mean"]
            .as_f64()
            .unwrap()
            .is_finite(),
        "{after}"
    );
    for (k, v) in before.as_object().unwrap() {
        assert_eq!(&after[k], v, "eval.json lost `{k}`");
    }
    // An unconditional run takes no class and no guidance.
    for flag in [["--class", "3"], ["--guidance", "1"]] {
        let (ok, _, stderr) = out(runner(tmp.path()).args(["sample", "run"]).args(flag));
        assert!(!ok);
        assert_clean_error(&stderr, "class-conditional run");
    }
    // Refuses to overwrite, resumes on request.
    let (ok, _, stderr) = out(runner(tmp.path())
        .args(["train", "--model", "ddim", "--out", "run"])
        .args(SMALL));
    assert!(!ok);
    assert_clean_error(&stderr, "--resume");
    // Flags that would change the run are refused, naming them; nothing is written.
    let spec_before = std::fs::read_to_string(run.join("spec.toml")).unwrap();
    let (ok, _, stderr) = out(runner(tmp.path()).args([
        "train",
        "--out",
        "run",
        "--resume",
        "--lr",
        "0.1",
        "--set",
        "backbone.hidden=8",
    ]));
    assert!(!ok);
    assert_clean_error(&stderr, "cannot change --lr, --set");
    assert_eq!(
        std::fs::read_to_string(run.join("spec.toml")).unwrap(),
        spec_before
    );
    // Extending continues from step 30 (10 more steps, not 40 from scratch) and records the change.
    let (ok, _, stderr) = out(runner(tmp.path()).args([
        "train",
        "--out",
        "run",
        "--resume",
        "--train-steps",
        "40",
        "-n",
        "50",
        "--eval-examples",
        "0",
    ]));
    assert!(ok, "{stderr}");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["train"]["steps"], 40);
    assert_eq!(m["train"]["steps_this_run"], 10);
    let spec: ndm_api::RunSpec =
        toml::from_str(&std::fs::read_to_string(run.join("spec.toml")).unwrap()).unwrap();
    assert_eq!(spec.train.steps, 40);
    assert_eq!(
        spec.train.step_changes,
        vec![ndm_api::spec::StepChange {
            at_step: 30,
            previous_steps: 30
        }]
    );
    // A length the run has already passed is refused.
    let (ok, _, stderr) =
        out(runner(tmp.path()).args(["train", "--out", "run", "--resume", "--train-steps", "20"]));
    assert!(!ok);
    assert_clean_error(&stderr, "--train-steps must be larger");
}

#[test]
fn conditional_run_samples_a_class_all_classes_and_refuses_bad_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = out(runner(tmp.path())
        .args(["train", "--model", "ddpm-cond", "--out", "run"])
        .args(SMALL));
    assert!(ok, "{stderr}");
    // The run's own samples cover every class, and its NELBO is reported per class.
    assert!(
        stdout.contains("in_requested_square") && stdout.contains("per class"),
        "{stdout}"
    );
    let (ok, stdout, stderr) = out(runner(tmp.path()).args([
        "sample",
        "run",
        "--class",
        "5",
        "--guidance",
        "2",
        "-n",
        "40",
        "--steps",
        "10",
    ]));
    assert!(ok, "{stderr}");
    // Guided: two network evaluations per step and for the decoder.
    assert!(
        stdout.contains("NFE 22") && stdout.contains("mean of 1 classes"),
        "{stdout}"
    );
    let (ok, stdout, stderr) = out(runner(tmp.path()).args([
        "sample",
        "run",
        "--classes",
        "all",
        "-n",
        "40",
        "--steps",
        "10",
    ]));
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("sampled 40") && stdout.contains("mean of 8 classes"),
        "{stdout}"
    );
    for (flag, value, needle) in [
        (
            "--class",
            "8",
            "--class 8 is out of range: the model has 8 classes",
        ),
        ("--class", "two", "--class takes a class number or `all`"),
        (
            "--guidance",
            "-1",
            "guidance scale must be a non-negative number",
        ),
    ] {
        let (ok, _, stderr) =
            out(runner(tmp.path()).args(["sample", "run", "--steps", "5", flag, value]));
        assert!(!ok, "{flag} {value}");
        assert_clean_error(&stderr, needle);
    }
}

/// Reads every tensor of a safetensors file as f32 values, by name.
fn tensors(path: &Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    ndm_api::checkpoint::read_tensors(path, &ndm_api::candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("meta/"))
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

/// Ctrl-C (SIGINT) to a real training process: it saves a checkpoint at the next step boundary
/// and exits with status 130; resuming gives weights, moments and EMA bit-identical to a run that
/// was never interrupted.
#[cfg(unix)]
#[test]
fn interrupted_then_resumed_equals_uninterrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let args = |out: &str| -> Vec<String> {
        [
            "--quiet",
            "train",
            "--out",
            out,
            "--train-steps",
            "4000",
            "--batch-size",
            "64",
            "--set",
            "backbone.hidden=32",
            "--set",
            "train.checkpoint_every=100000",
            "-n",
            "0",
            "--eval-examples",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let bin = assert_cmd::cargo::cargo_bin("runner");
    let child = std::process::Command::new(&bin)
        .current_dir(tmp.path())
        .args(args("a"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let spec = tmp.path().join("a/spec.toml");
    let t0 = std::time::Instant::now();
    while !spec.exists() && t0.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(700));
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{stderr}");
    let step: usize = stderr
        .split("interrupted at step ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no step in: {stderr}"));
    assert!(step > 0 && step < 4000, "interrupted at step {step}");
    let (ok, _, stderr) = out(runner(tmp.path()).args([
        "train",
        "--out",
        "a",
        "--resume",
        "-n",
        "0",
        "--eval-examples",
        "0",
    ]));
    assert!(ok, "{stderr}");
    let mut uninterrupted = std::process::Command::new(&bin);
    uninterrupted.current_dir(tmp.path()).args(args("b"));
    let (ok, _, stderr) = out(&mut Command::from_std(uninterrupted));
    assert!(ok, "{stderr}");
    let (a, b) = (
        tensors(&tmp.path().join("a/train-state.safetensors")),
        tensors(&tmp.path().join("b/train-state.safetensors")),
    );
    assert_eq!(a.len(), b.len());
    for (k, v) in &a {
        assert!(
            v == &b[k],
            "{k} differs after interrupting at step {step} and resuming"
        );
    }
    eprintln!(
        "interrupted at step {step}; {} tensors bit-identical",
        a.len()
    );
}

#[test]
fn unknown_plugin_lists_the_known_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = out(runner(tmp.path())
        .args(["train", "--schedule", "cosin", "--out", "r"])
        .args(SMALL));
    assert!(!ok);
    assert_clean_error(
        &stderr,
        "unknown schedule plugin `cosin`; known: cosine, fm-ot, sub-vp, vdm, ve, vp-linear",
    );
    assert!(
        !tmp.path().join("r").exists(),
        "a failed start left a run directory"
    );
}

#[test]
fn unknown_or_mistyped_field_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = out(runner(tmp.path())
        .args(["train", "--set", "schedule.beta_ned=0.03", "--out", "r"])
        .args(SMALL));
    assert!(!ok);
    assert_clean_error(&stderr, "beta_ned");
    assert!(stderr.contains("schedule.vp-linear"), "{stderr}");
    let (ok, _, stderr) = out(runner(tmp.path())
        .args(["train", "--set", "backbone.hidden=wide", "--out", "r"])
        .args(SMALL));
    assert!(!ok);
    assert_clean_error(&stderr, "backbone.mlp");
    // A value the plugin's build refuses: named once with its plugin, the message not repeated.
    let (ok, _, stderr) = out(runner(tmp.path())
        .args([
            "train",
            "--set",
            "solver.snr=-1",
            "--solver",
            "pc",
            "--out",
            "r",
        ])
        .args(SMALL));
    assert!(!ok);
    assert_clean_error(&stderr, "solver.pc: snr must be positive, got -1");
    assert_eq!(
        stderr.matches("snr must be positive").count(),
        1,
        "{stderr}"
    );
}

#[test]
fn malformed_registry_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("bad.toml"), "[presets.ddpm\nsummary = 1\n").unwrap();
    let (ok, _, stderr) = out(runner(tmp.path()).args(["--registry", "bad.toml", "list"]));
    assert!(!ok);
    assert_clean_error(&stderr, "bad.toml");
    // Well-formed TOML with a wrong field.
    let text = std::fs::read_to_string(root().join("registry.toml"))
        .unwrap()
        .replace("spacing = \"uniform\"", "spacing = \"uniform\"\nspacin = 1");
    std::fs::write(tmp.path().join("registry.toml"), text).unwrap();
    let (ok, _, stderr) = out(runner(tmp.path()).arg("list"));
    assert!(!ok);
    assert_clean_error(&stderr, "spacin");
}

#[test]
fn truncated_weights_and_zero_steps_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = out(runner(tmp.path())
        .args(["train", "--out", "run"])
        .args(SMALL));
    assert!(ok, "{stderr}");
    let w = tmp.path().join("run/weights.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, _, stderr) = out(runner(tmp.path()).args(["sample", "run", "-n", "10"]));
    assert!(!ok);
    assert_clean_error(&stderr, "weights.safetensors");
    let (ok, _, stderr) = out(runner(tmp.path()).args(["eval", "run"]));
    assert!(!ok);
    assert_clean_error(&stderr, "truncated");
    let (ok, _, stderr) = out(runner(tmp.path()).args(["train", "--steps", "0", "--out", "r0"]));
    assert!(!ok);
    assert_clean_error(&stderr, "--steps must be at least 1");
    assert!(!tmp.path().join("r0").exists());
    let (ok, _, stderr) = out(runner(tmp.path()).args(["sample", "missing-run"]));
    assert!(!ok);
    assert_clean_error(&stderr, "missing-run");
}

#[test]
fn nan_loss_stops_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = out(runner(tmp.path()).args([
        "train",
        "--out",
        "run",
        "--train-steps",
        "400",
        "--batch-size",
        "32",
        "--lr",
        "1e30",
        "--set",
        "train.grad_clip=0",
        "--set",
        "train.warmup=1",
        "-n",
        "10",
    ]));
    assert!(!ok, "training with lr 1e30 did not fail");
    assert_clean_error(&stderr, "at step");
    assert!(stderr.contains("last good state"), "{stderr}");
    // The saved state loads and is finite.
    let state = ndm_api::checkpoint::read_tensors(
        &tmp.path().join("run/train-state.safetensors"),
        &ndm_api::candle_core::Device::Cpu,
    )
    .unwrap();
    for (k, t) in state {
        if k.starts_with("param/") {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            assert!(v.iter().all(|x| x.is_finite()), "{k} is not finite");
        }
    }
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path().join("run"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// Two training steps of DDPM with a tiny U-Net into run `r`, no samples, no evaluation (after
/// the dataset's flags).
const TINY_UNET_RUN: &[&str] = &[
    "--set",
    "backbone.base_channels=8",
    "--set",
    "backbone.channel_mults=[1,2]",
    "--train-steps",
    "2",
    "--batch-size",
    "4",
    "-n",
    "0",
    "--eval-examples",
    "0",
    "--out",
    "r",
];

#[test]
fn samples_export_as_a_png_folder_and_npz() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    for k in 0..6u8 {
        let img = image::GrayImage::from_fn(8, 8, |x, y| image::Luma([(x * 30 + y * 3) as u8 + k]));
        img.save(imgs.join(format!("{k}.png"))).unwrap();
    }
    let (ok, _, stderr) = out(runner(tmp.path())
        .args([
            "train",
            "--model",
            "ddpm",
            "--dataset",
            "image-folder",
            "--set",
            &format!("dataset.dir={}", imgs.display()),
            "--set",
            "dataset.size=8",
            "--set",
            "dataset.channels=1",
        ])
        .args(TINY_UNET_RUN));
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = out(runner(tmp.path()).args([
        "sample", "r", "--steps", "3", "-n", "5", "--export", "png,npz", "--out", "s",
    ]));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("exported: 5 PNGs in"), "{stdout}");
    for k in 0..5 {
        let p = tmp.path().join(format!("s-png/{k:06}.png"));
        let img = image::open(&p).unwrap();
        assert_eq!((img.width(), img.height()), (8, 8), "{}", p.display());
        assert!(matches!(img, image::DynamicImage::ImageLuma8(_)));
    }
    assert!(!tmp.path().join("s-png/000005.png").exists());
    let npz = candle_core::npy::NpzTensors::new(tmp.path().join("s.npz")).unwrap();
    let bytes = npz.get("arr_0").unwrap().unwrap();
    assert_eq!(bytes.dims(), &[5, 8, 8, 1]);
    assert_eq!(bytes.dtype(), candle_core::DType::U8);
    let floats = npz.get("samples").unwrap().unwrap();
    assert_eq!(floats.dims(), &[5, 1, 8, 8]);
    // The bytes are the floats' pixel cells.
    let f = floats.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = bytes
        .permute((0, 3, 1, 2))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    for (x, y) in f.iter().zip(&b) {
        assert_eq!(((x + 1.0) * 128.0).floor().clamp(0.0, 255.0) as u8, *y);
    }
    // PNG needs images; an unknown format is named.
    let (ok, _, stderr) = out(runner(tmp.path())
        .args(["train", "--out", "flat"])
        .args(SMALL));
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = out(runner(tmp.path()).args(["sample", "flat", "--export", "png"]));
    assert!(!ok);
    assert_clean_error(&stderr, "export png needs image data");
    let (ok, _, stderr) = out(runner(tmp.path()).args(["sample", "flat", "--export", "gif"]));
    assert!(!ok);
    assert_clean_error(&stderr, "unknown export format `gif`; known: png, npz");
}

#[test]
fn a_feature_network_is_trained_and_scores_samples_with_fid_and_kid() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    // Two classes (sub-folders): bright left half or bright right half.
    for (class, left) in [("left", true), ("right", false)] {
        std::fs::create_dir_all(imgs.join(class)).unwrap();
        for k in 0..12u32 {
            let img = image::GrayImage::from_fn(8, 8, |x, y| {
                let on = (x < 4) == left;
                image::Luma([if on {
                    200 + ((x + y + k) % 40) as u8
                } else {
                    ((x * y + k) % 30) as u8
                }])
            });
            img.save(imgs.join(class).join(format!("{k}.png"))).unwrap();
        }
    }
    let dir = format!("dataset.dir={}", imgs.display());
    let data = [
        "--set",
        dir.as_str(),
        "--set",
        "dataset.size=8",
        "--set",
        "dataset.channels=1",
    ];
    let (ok, stdout, stderr) = out(runner(tmp.path())
        .args([
            "classifier",
            "--dataset",
            "image-folder",
            "--train-steps",
            "40",
            "--out",
            "fn",
        ])
        .args(data));
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("feature network "), "{stdout}");
    let info: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("fn/feature-net.json")).unwrap(),
    )
    .unwrap();
    assert!(info["test_accuracy"].as_f64().unwrap() > 0.9, "{info}");
    let hash = info["hash"].as_str().unwrap().to_string();
    assert_eq!(hash.len(), 16);
    let (ok, _, stderr) = out(runner(tmp.path())
        .args(["train", "--model", "ddpm", "--dataset", "image-folder"])
        .args(data)
        .args(TINY_UNET_RUN));
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = out(runner(tmp.path()).args([
        "sample",
        "r",
        "--steps",
        "3",
        "-n",
        "16",
        "--features",
        "fn",
        "--out",
        "s",
    ]));
    assert!(ok, "{stderr}");
    for key in [
        "fid ",
        "kid ",
        "kid_stderr ",
        "feature_precision ",
        "feature_n 16",
    ] {
        assert!(stdout.contains(key), "`{key}` not in {stdout}");
    }
    // A network for other images is refused in one line.
    let other = tmp.path().join("imgs16");
    std::fs::create_dir_all(other.join("a")).unwrap();
    std::fs::create_dir_all(other.join("b")).unwrap();
    for k in 0..3u8 {
        image::GrayImage::from_pixel(16, 16, image::Luma([k]))
            .save(other.join(format!("a/{k}.png")))
            .unwrap();
        image::GrayImage::from_pixel(16, 16, image::Luma([200 + k]))
            .save(other.join(format!("b/{k}.png")))
            .unwrap();
    }
    let dir16 = format!("dataset.dir={}", other.display());
    let (ok, _, stderr) = out(runner(tmp.path()).args([
        "classifier",
        "--dataset",
        "image-folder",
        "--set",
        &dir16,
        "--set",
        "dataset.size=16",
        "--set",
        "dataset.channels=1",
        "--train-steps",
        "2",
        "--out",
        "fn16",
    ]));
    assert!(ok, "{stderr}");
    let (ok, _, stderr) =
        out(runner(tmp.path()).args(["sample", "r", "--steps", "2", "--features", "fn16"]));
    assert!(!ok);
    assert_clean_error(
        &stderr,
        "takes images [1, 16, 16]; this run's data is [1, 8, 8]",
    );
}
