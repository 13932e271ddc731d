//! The plugin SDK: how a crate outside this workspace ships plugins in a shared library, and how
//! the host loads one.
//!
//! A plugin crate builds a `cdylib` and calls [`export_plugins!`](crate::export_plugins) once with
//! its [`PluginInfo`]s. That exports two symbols:
//! - `ndm_plugin_manifest`: a `#[repr(C)]` [`PluginManifest`] with the ABI version, the ndm-api
//!   version, the rustc version, the candle version, the target triple and the enabled features the
//!   library was built with;
//! - `ndm_plugin_register`: fills a [`Registrar`] with the library's plugins.
//!
//! The host ([`load_library`]) checks the manifest field by field (ABI version, then the
//! [`FINGERPRINT`] of ndm-api's source, then the versions) before it calls anything else,
//! then calls the registration, and keeps the library loaded for the life of the process (plugins
//! hold function pointers into it). Loading a library runs its code: only libraries of a registry
//! file the user names are ever loaded (see [`crate::registry_file`]).
//!
//! Panics: a cdylib carries its own copy of std, and a panic unwinding out of it is a *foreign*
//! exception to the host, which Rust cannot catch (the process aborts). So the registration entry
//! point catches its own panics with [`guard`] (on the library's side, with the library's std) and
//! hands the message back in the [`Registrar`]; the host also calls it inside `catch_unwind`, which
//! covers libraries that share the host's std.
//!
//! Why the manifest is enough: the values that cross the boundary are Rust types (`PluginInfo`, its
//! function pointers, `toml::Table`, candle tensors, boxed trait objects), sound only when both sides
//! use the same compiler, the same ndm-api and the same versions of the crates whose types cross.
//! ndm-api pins those (`candle-core`, `candle-nn`, `toml`) to exact versions, so its own version
//! fixes them. Both sides must use Rust's default global allocator (boxes cross the boundary).

use crate::registry::{Origin, PluginInfo, PluginRegistry};
use crate::{NdmError, Result};
use std::ffi::{c_char, CStr};
use std::path::Path;

/// Version of the manifest layout and of the registration protocol.
pub const ABI_VERSION: u32 = 2;
/// A hash of ndm-api's source files and of the features that change its types, computed when it
/// is built: two builds share it only if every type that crosses the boundary is the same.
pub const FINGERPRINT: &str = env!("NDM_API_FINGERPRINT");
/// The candle version ndm-api is pinned to (checked against Cargo.lock by a test).
pub const CANDLE_VERSION: &str = "0.11.1";
/// `rustc --version` of the compiler that built this crate.
pub const RUSTC_VERSION: &str = env!("NDM_RUSTC_VERSION");
/// The target triple this crate was built for.
pub const TARGET: &str = env!("NDM_TARGET");
/// Features that change the types crossing the boundary.
pub const FEATURES: &str = if cfg!(feature = "cuda") { "cuda" } else { "" };

#[doc(hidden)]
pub mod c {
    //! NUL-terminated copies of the manifest strings, for `export_plugins!`.
    pub const NDM_API_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    pub const FINGERPRINT: &str = concat!(env!("NDM_API_FINGERPRINT"), "\0");
    pub const RUSTC_VERSION: &str = concat!(env!("NDM_RUSTC_VERSION"), "\0");
    pub const CANDLE_VERSION: &str = "0.11.1\0";
    pub const TARGET: &str = concat!(env!("NDM_TARGET"), "\0");
    pub const FEATURES: &str = if cfg!(feature = "cuda") {
        "cuda\0"
    } else {
        "\0"
    };
}

/// What a plugin library declares about how it was built. `abi_version` must stay the first field:
/// the host reads it before trusting the layout of the rest.
#[repr(C)]
#[derive(Debug)]
pub struct PluginManifest {
    pub abi_version: u32,
    /// [`FINGERPRINT`] of the ndm-api the library was built against; compared first.
    pub fingerprint: *const c_char,
    pub ndm_api_version: *const c_char,
    pub rustc_version: *const c_char,
    pub candle_version: *const c_char,
    pub target: *const c_char,
    pub features: *const c_char,
    /// The library's name (its crate name by convention).
    pub name: *const c_char,
}

// The manifest is an immutable static of pointers to static strings.
unsafe impl Sync for PluginManifest {}

/// Collects the plugins a library registers, or the message of a panic during registration.
#[derive(Debug, Default)]
pub struct Registrar {
    pub plugins: Vec<PluginInfo>,
    pub panic: Option<String>,
}

/// Runs a registration body on the library's side, catching a panic (and silencing the library's
/// panic hook meanwhile) into `out.panic`. Every `ndm_plugin_register` must go through it.
///
/// # Safety
/// `out` must be the valid, exclusive pointer the host passed to `ndm_plugin_register`.
pub unsafe fn guard(out: *mut Registrar, body: impl FnOnce(&mut Registrar)) {
    // SAFETY: guaranteed by the caller.
    let out = unsafe { &mut *out };
    let message = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let outcome = {
        // The library's hook is replaced for the registration only: `_restore` puts the previous
        // hook back when this block ends, however it ends.
        let _restore = HookGuard::replace(message.clone());
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(out)))
    };
    if outcome.is_err() {
        out.plugins.clear();
        let text = message.lock().ok().and_then(|m| m.clone());
        out.panic = Some(text.unwrap_or_else(|| "unknown panic".into()));
    }
}

type PanicHook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static>;

/// Holds the panic hook that was in place before [`guard`] and restores it on drop.
struct HookGuard {
    previous: Option<PanicHook>,
}

impl HookGuard {
    /// Installs a hook that records a panic's message into `sink` instead of printing it.
    fn replace(sink: std::sync::Arc<std::sync::Mutex<Option<String>>>) -> HookGuard {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let text = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            if let Ok(mut m) = sink.lock() {
                *m = Some(text);
            }
        }));
        HookGuard {
            previous: Some(previous),
        }
    }
}

impl Drop for HookGuard {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            std::panic::set_hook(previous);
        }
    }
}

impl std::fmt::Debug for HookGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HookGuard")
    }
}

impl Registrar {
    pub fn add(&mut self, info: PluginInfo) {
        self.plugins.push(info);
    }
}

/// The signature of `ndm_plugin_manifest`.
pub type ManifestFn = unsafe extern "C" fn() -> *const PluginManifest;
/// The signature of `ndm_plugin_register`.
pub type RegisterFn = unsafe extern "C" fn(*mut Registrar);

/// Exports a library's plugins: `ndm_api::export_plugins!("my-plugins", [MY_SCHEDULE, MY_SOLVER]);`
/// where each item is a `PluginInfo` (see [`plugin_info!`](crate::plugin_info)). Call it once, in a
/// crate built as a `cdylib`; put it behind a cargo feature if the crate is also linked statically
/// next to other plugin crates (the symbols are unmangled).
#[macro_export]
macro_rules! export_plugins {
    ($name:literal, [$($info:expr),* $(,)?]) => {
        #[doc(hidden)]
        #[unsafe(no_mangle)]
        pub extern "C" fn ndm_plugin_manifest() -> *const $crate::sdk::PluginManifest {
            static MANIFEST: $crate::sdk::PluginManifest = $crate::sdk::PluginManifest {
                abi_version: $crate::sdk::ABI_VERSION,
                fingerprint: $crate::sdk::c::FINGERPRINT.as_ptr() as *const ::std::ffi::c_char,
                ndm_api_version: $crate::sdk::c::NDM_API_VERSION.as_ptr() as *const ::std::ffi::c_char,
                rustc_version: $crate::sdk::c::RUSTC_VERSION.as_ptr() as *const ::std::ffi::c_char,
                candle_version: $crate::sdk::c::CANDLE_VERSION.as_ptr() as *const ::std::ffi::c_char,
                target: $crate::sdk::c::TARGET.as_ptr() as *const ::std::ffi::c_char,
                features: $crate::sdk::c::FEATURES.as_ptr() as *const ::std::ffi::c_char,
                name: concat!($name, "\0").as_ptr() as *const ::std::ffi::c_char,
            };
            &MANIFEST
        }

        #[doc(hidden)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn ndm_plugin_register(out: *mut $crate::sdk::Registrar) {
            // SAFETY: the host passes a valid, exclusive pointer for the duration of the call.
            unsafe { $crate::sdk::guard(out, |out| { $( out.add($info); )* }) }
        }
    };
}

fn read_str(p: *const c_char) -> String {
    if p.is_null() {
        return "(null)".into();
    }
    // SAFETY: the manifest's strings are static NUL-terminated strings of the library, which
    // stays loaded; the ABI version was checked before any of them is read.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Loads a plugin library into the registry: checks the manifest, registers its plugins (each
/// named plugin must be new in its family) and keeps the library loaded forever. Returns the
/// full names of the plugins it added.
pub fn load_library(
    reg: &mut PluginRegistry,
    path: &Path,
    expected_name: Option<&str>,
) -> Result<Vec<String>> {
    let err = |m: String| NdmError::Library {
        path: path.to_path_buf(),
        message: m,
    };
    if !path.exists() {
        return Err(err("not found".into()));
    }
    // SAFETY: loading runs the library's initialisers; ndm loads only libraries the user named
    // in a registry file (trusted code, as any dependency would be).
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| {
        let detail = std::error::Error::source(&e)
            .map(|s| format!(" ({})", crate::error::one_line(&s)))
            .unwrap_or_default();
        err(format!(
            "cannot be loaded as a shared library: {}{detail}",
            crate::error::one_line(&e)
        ))
    })?;
    // Kept for the life of the process: registered plugins point into it.
    let lib: &'static libloading::Library = Box::leak(Box::new(lib));
    // SAFETY: the symbol's type is fixed by this SDK; a library exporting another type under this
    // name is not an ndm plugin library and is outside what can be checked.
    let manifest_fn = unsafe { lib.get::<ManifestFn>(b"ndm_plugin_manifest\0") }.map_err(|_| {
        err("has no `ndm_plugin_manifest` symbol: not an ndm plugin library (build it with ndm_api::export_plugins!)".into())
    })?;
    // SAFETY: calling the manifest function only returns a pointer to a static.
    let m = unsafe { manifest_fn() };
    if m.is_null() {
        return Err(err("returned a null manifest".into()));
    }
    // SAFETY: `abi_version` is the first field in every ABI version, so reading it is sound before
    // the rest of the layout is trusted.
    let abi = unsafe { std::ptr::read(m as *const u32) };
    if abi != ABI_VERSION {
        return Err(err(format!(
            "plugin ABI version {abi}, this host speaks {ABI_VERSION}"
        )));
    }
    // SAFETY: same ABI version, so the layout is ours.
    let m = unsafe { &*m };
    let checks = [
        (
            "ndm-api fingerprint",
            read_str(m.fingerprint),
            FINGERPRINT.to_string(),
        ),
        (
            "ndm-api version",
            read_str(m.ndm_api_version),
            crate::VERSION.to_string(),
        ),
        (
            "rustc version",
            read_str(m.rustc_version),
            RUSTC_VERSION.to_string(),
        ),
        (
            "candle version",
            read_str(m.candle_version),
            CANDLE_VERSION.to_string(),
        ),
        ("target", read_str(m.target), TARGET.to_string()),
        ("features", read_str(m.features), FEATURES.to_string()),
    ];
    for (what, plugin, host) in checks {
        if plugin != host {
            return Err(err(format!(
                "built with {what} `{plugin}`, this host has `{host}` (rebuild the library against this host's ndm-api)"
            )));
        }
    }
    let name = read_str(m.name);
    if let Some(expected) = expected_name {
        if expected != name {
            return Err(err(format!(
                "declares the name `{name}`, the registry expects `{expected}`"
            )));
        }
    }
    // SAFETY: as for the manifest symbol.
    let register = unsafe { lib.get::<RegisterFn>(b"ndm_plugin_register\0") }
        .map_err(|_| err("has a manifest but no `ndm_plugin_register` symbol".into()))?;
    let mut registrar = Registrar::default();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: checked manifest: same compiler and crate versions; the pointer is exclusive.
        unsafe { register(&mut registrar) }
    }));
    let caught_here = outcome.err().map(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into())
    });
    if let Some(msg) = registrar.panic.take().or(caught_here) {
        return Err(err(format!("registration panicked: {msg}")));
    }
    let origin = Origin::Library(path.to_path_buf());
    // Check every name first, so a failing library adds nothing.
    let mut staged = reg.clone();
    let mut added = Vec::new();
    for info in registrar.plugins {
        added.push(info.full_name());
        staged
            .add(info, origin.clone())
            .map_err(|e| err(e.to_string()))?;
    }
    *reg = staged;
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn guard_reports_the_panic_and_restores_the_previous_hook() {
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        std::panic::set_hook(Box::new(|_| {
            CALLS.fetch_add(1, Ordering::SeqCst);
        }));
        let mut r = Registrar::default();
        // SAFETY: a valid, exclusive pointer for the duration of the call.
        unsafe { guard(&mut r, |_| panic!("registration fails")) };
        assert_eq!(r.panic.as_deref(), Some("registration fails"));
        assert_eq!(
            CALLS.load(Ordering::SeqCst),
            0,
            "the guard's hook was not in place"
        );
        // After the registration, panics reach the hook that was there before it.
        let _ = std::panic::catch_unwind(|| panic!("after"));
        assert_eq!(
            CALLS.load(Ordering::SeqCst),
            1,
            "the previous hook was not restored"
        );
        drop(std::panic::take_hook());
    }

    #[test]
    fn fingerprint_is_a_hash() {
        assert_eq!(FINGERPRINT.len(), 16);
        assert!(FINGERPRINT.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(c::FINGERPRINT.trim_end_matches('\0'), FINGERPRINT);
    }
}
