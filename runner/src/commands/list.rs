//! `runner list`: every plugin by family with its summary, default params and origin, then the presets.

use crate::env::Env;
use ndm_api::Family;

pub fn render(env: &Env) -> String {
    let mut s = String::new();
    for family in Family::ALL {
        s += &format!("{family}:\n");
        for e in env
            .plugins()
            .entries()
            .iter()
            .filter(|e| e.info.family() == family)
        {
            let d = match (e.info.defaults)() {
                Ok(t) => toml::Value::Table(t).to_string(),
                Err(err) => format!("(cannot be shown: {err})"),
            };
            let d = d.replace('\n', ", ");
            let d = d.trim_end_matches(", ");
            s += &format!("  {:<18} {}\n", e.info.name, e.info.summary);
            s += &format!(
                "  {:<18}   defaults {} [{}]\n",
                "",
                if d.trim().is_empty() { "{}" } else { d },
                e.origin
            );
        }
    }
    s += "presets:\n";
    for (name, p) in &env.setup.file.presets {
        s += &format!("  {name:<18} {}\n", p.summary);
    }
    s
}
