//! ndm's runner with this crate's plugins linked in statically: naming the plugins registers them,
//! so no `use third_party_plugin as _;` anchor is needed.

fn main() {
    runner::main_with_plugins(&[third_party_plugin::EDM_VP]);
}
