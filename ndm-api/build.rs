//! Records, for the plugin manifest (`ndm_api::sdk`): the compiler version, the target triple, and
//! a fingerprint of this crate's source. The crate's version string stays `0.1.0` when a trait
//! changes; the fingerprint does not, so a plugin library built against other ndm-api sources is
//! refused before any of its code runs.

use std::path::{Path, PathBuf};

/// FNV-1a, 64 bits: stable across platforms and Rust versions (unlike `DefaultHasher`).
fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = std::process::Command::new(&rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=NDM_RUSTC_VERSION={version}");
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=NDM_TARGET={target}");

    // Every source file by its path relative to the crate, then its bytes; and the features that
    // change the types crossing the boundary.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    let mut h = 0xcbf2_9ce4_8422_2325;
    for f in &files {
        let rel = f
            .strip_prefix(&root)
            .unwrap_or(f)
            .to_string_lossy()
            .replace('\\', "/");
        h = fnv1a(h, rel.as_bytes());
        h = fnv1a(h, &std::fs::read(f).unwrap_or_default());
    }
    let cuda = std::env::var_os("CARGO_FEATURE_CUDA").is_some();
    h = fnv1a(h, if cuda { b"cuda" } else { b"cpu" });
    println!("cargo:rustc-env=NDM_API_FINGERPRINT={h:016x}");
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-env-changed=RUSTC");
}
