//! ndm's runner with this crate's plugins linked in statically.

// Link the built-in plugins and ours: an unreferenced crate is not linked and its registrations
// vanish.
use ndm_plugins_all as _;
use third_party_plugin as _;

fn main() {
    runner::main_entry();
}
