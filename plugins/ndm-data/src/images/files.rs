//! Finding a dataset's files and reading them, plain or gzip-compressed.

use ndm_api::NdmError;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Params of `dataset.mnist`, `dataset.fashion-mnist` and `dataset.cifar10`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageFilesConfig {
    /// The folder holding the files; empty: look in `$NDM_DATA/<name>`, then `./data/<name>`
    /// (and, for Fashion-MNIST, `/usr/share/datasets/fashion-mnist`).
    pub dir: String,
    /// Fetch the files from the network. Not available in this build: `true` is refused with a
    /// message saying where to put the files.
    pub download: bool,
    /// Random horizontal flips of training images.
    pub flip: bool,
}

/// Where a dataset's files come from and what they are called.
#[derive(Debug)]
pub(crate) struct Source {
    /// The name used in messages ("MNIST").
    pub title: &'static str,
    /// The folder name under `$NDM_DATA` and `./data`.
    pub folder: &'static str,
    /// Files that must all be in one folder (each plain or with `.gz`).
    pub required: &'static [&'static str],
    /// Files used when present.
    pub optional: &'static [&'static str],
    /// Sub-folders of each place that are looked in too (where an archive extracts to).
    pub subfolders: &'static [&'static str],
    /// Places looked in after `$NDM_DATA` and `./data` (system packages).
    pub system_dirs: &'static [&'static str],
    /// How to get the files, as text.
    pub how: &'static str,
}

/// A dataset file found on disk: `path` is the file itself or its `.gz`.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub name: &'static str,
    pub path: PathBuf,
    pub gz: bool,
    /// Whether a decompressed copy may be written next to the `.gz` (not in system folders).
    pub cache: bool,
}

impl Source {
    fn expected(&self) -> String {
        let also = if self.optional.is_empty() {
            String::new()
        } else {
            format!("; also {} when present", self.optional.join(", "))
        };
        format!("{} (plain or .gz{also})", self.required.join(", "))
    }

    /// The `download = true` refusal.
    pub fn no_download(&self) -> NdmError {
        NdmError::invalid_param(format!(
            "download = true: downloading is not available in this build; put {} in $NDM_DATA/{f} or ./data/{f}, or set dir; {}",
            self.expected(),
            self.how,
            f = self.folder
        ))
    }

    /// The folders looked in, in order, each with a description of how it was chosen.
    fn places(&self, dir: &str) -> (Vec<(String, PathBuf)>, Option<&'static str>) {
        let mut bases: Vec<(String, PathBuf)> = Vec::new();
        let mut note = None;
        if !dir.is_empty() {
            bases.push(("dir".into(), PathBuf::from(dir)));
        } else {
            match std::env::var_os("NDM_DATA").filter(|v| !v.is_empty()) {
                Some(root) => bases.push((
                    format!("$NDM_DATA/{}", self.folder),
                    Path::new(&root).join(self.folder),
                )),
                None => note = Some("$NDM_DATA is not set"),
            }
            bases.push((
                format!("./data/{}", self.folder),
                Path::new(".").join("data").join(self.folder),
            ));
            for d in self.system_dirs {
                bases.push((d.to_string(), PathBuf::from(d)));
            }
        }
        let mut out = Vec::new();
        for (label, base) in bases {
            let subs: Vec<(String, PathBuf)> = if base.is_dir() {
                self.subfolders
                    .iter()
                    .map(|s| (format!("{label}/{s}"), base.join(s)))
                    .collect()
            } else {
                Vec::new()
            };
            out.push((label, base));
            out.extend(subs);
        }
        (out, note)
    }

    /// The first place holding every required file; an error of one line naming the files, every
    /// place looked in and how to get the files otherwise.
    pub fn locate(&self, dir: &str) -> ndm_api::Result<Vec<Found>> {
        let (places, note) = self.places(dir);
        let mut looked = Vec::new();
        for (label, place) in &places {
            let cache = !self
                .system_dirs
                .iter()
                .any(|d| place.starts_with(Path::new(d)));
            let shown = if label.as_str() == place.display().to_string() {
                label.clone()
            } else {
                format!("{label} = {}", place.display())
            };
            if !place.is_dir() {
                let what = if place.exists() {
                    "not a folder"
                } else {
                    "no such folder"
                };
                looked.push(format!("{shown} ({what})"));
                continue;
            }
            let find = |name: &'static str| -> Option<Found> {
                let plain = place.join(name);
                if plain.is_file() {
                    return Some(Found {
                        name,
                        path: plain,
                        gz: false,
                        cache,
                    });
                }
                let gz = place.join(format!("{name}.gz"));
                gz.is_file().then_some(Found {
                    name,
                    path: gz,
                    gz: true,
                    cache,
                })
            };
            let missing: Vec<&str> = self
                .required
                .iter()
                .copied()
                .filter(|n| find(n).is_none())
                .collect();
            if missing.is_empty() {
                return Ok(self
                    .required
                    .iter()
                    .chain(self.optional)
                    .filter_map(|n| find(n))
                    .collect());
            }
            looked.push(format!("{shown} (missing {})", missing.join(", ")));
        }
        let note = note.map(|n| format!(" ({n})")).unwrap_or_default();
        Err(NdmError::Spec(format!(
            "{} files not found: expected {} in one folder; looked in {}{note}; {}, \
             then put them in one of these folders or set dir",
            self.title,
            self.expected(),
            looked.join(", "),
            self.how
        )))
    }
}

/// The bytes of a found file, decompressed if it is a `.gz`. Errors name the file.
pub(crate) fn read_found(f: &Found) -> ndm_api::Result<Vec<u8>> {
    let raw = std::fs::read(&f.path).map_err(|e| NdmError::file(&f.path, e))?;
    if !f.gz {
        return Ok(raw);
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(raw.as_slice())
        .read_to_end(&mut out)
        .map_err(|e| NdmError::file(&f.path, format!("not a valid gzip file ({e})")))?;
    Ok(out)
}

/// After the decompressed bytes of `f` passed their checks: writes them next to the `.gz` under
/// the plain name, so the next load reads them directly. Written to a temporary name and renamed,
/// so an interrupted write never leaves a partial file. A folder marked read-only (no write
/// permission bit, which even root respects here), a system folder
/// (`/usr/share/datasets/...`) and a folder that cannot be written are left alone: the data is
/// then decompressed again at every load (about a third of a second for MNIST).
pub(crate) fn cache_decompressed(f: &Found, bytes: &[u8]) {
    if !f.gz || !f.cache {
        return;
    }
    let Some(dir) = f.path.parent() else { return };
    let read_only = std::fs::metadata(dir).map_or(true, |m| m.permissions().readonly());
    let target = dir.join(f.name);
    if read_only || target.exists() {
        return;
    }
    let tmp = dir.join(format!(".{}.tmp-{}", f.name, std::process::id()));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|_| std::fs::rename(&tmp, &target));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// The one-line error of a file whose content is wrong; `.gz` files say their content was checked
/// after decompression.
pub(crate) fn bad_file(f: &Found, message: impl std::fmt::Display) -> NdmError {
    let message = if f.gz {
        format!("{message} (after decompression)")
    } else {
        message.to_string()
    };
    NdmError::file(&f.path, message)
}
