//! Overrides of a [`RunSpec`]: swapping a part's plugin and setting one field
//! (`part.field=value`, the runner's `--set`). The parts that can be named are the plugin families
//! of [`Family::ALL`] plus `train` (the training config) and `model.steps` (the training grid):
//! one table, so a new family is settable, listed and named in errors without further edits.

use crate::registry::Family;
use crate::spec::{PluginSpec, RunSpec, TrainConfig};
use crate::{NdmError, Result};

/// Parts that are not plugin families.
const OTHER_PARTS: [&str; 2] = ["train", "model"];

/// Every part name an assignment may start with, comma-separated (for help and errors).
pub fn settable_parts() -> String {
    Family::ALL
        .iter()
        .map(|f| f.key())
        .chain(OTHER_PARTS)
        .collect::<Vec<_>>()
        .join(", ")
}

fn bad(assignment: &str, why: impl std::fmt::Display) -> NdmError {
    NdmError::InvalidArgument(format!("`{assignment}`: {why}"))
}

impl RunSpec {
    /// The spec of one plugin family's part.
    pub fn part_mut(&mut self, family: Family) -> &mut PluginSpec {
        let m = &mut self.model;
        match family {
            Family::Transform => &mut m.transform,
            Family::Schedule => &mut m.schedule,
            Family::Param => &mut m.param,
            Family::Prior => &mut m.prior,
            Family::Objective => &mut m.objective,
            Family::Backbone => &mut m.backbone,
            Family::Solver => &mut self.sampler.solver,
            Family::Dataset => &mut self.dataset,
        }
    }

    /// Puts plugin `kind` in `family`'s place with its default params; naming the plugin already
    /// there keeps its params.
    pub fn swap_plugin(&mut self, family: Family, kind: &str) {
        let part = self.part_mut(family);
        if part.kind != kind {
            *part = PluginSpec::new(kind);
        }
    }

    /// Applies one `part.field=value` assignment. The value is parsed as TOML (`0.5`, `true`,
    /// `[1, 2]`, bare words as strings); plugin fields are checked when the spec is resolved,
    /// `train` fields here.
    pub fn set(&mut self, assignment: &str) -> Result<()> {
        let (key, value) = assignment
            .split_once('=')
            .ok_or_else(|| bad(assignment, "expected PART.FIELD=VALUE"))?;
        let (part, field) = key
            .split_once('.')
            .ok_or_else(|| bad(assignment, "expected PART.FIELD=VALUE"))?;
        if let Some(family) = Family::ALL.into_iter().find(|f| f.key() == part) {
            self.part_mut(family).set(field, value);
            return Ok(());
        }
        match part {
            "model" if field == "steps" => {
                let n: usize = value
                    .parse()
                    .map_err(|_| bad(assignment, "model.steps takes a positive integer"))?;
                self.model.steps = Some(n);
                Ok(())
            }
            "model" if field == "decoder" => {
                self.model.decoder = toml::Value::String(value.trim_matches('"').to_string())
                    .try_into()
                    .map_err(|_| bad(assignment, "model.decoder is gaussian or discretized"))?;
                Ok(())
            }
            "model" if field == "conditional" => {
                self.model.conditional = value
                    .parse()
                    .map_err(|_| bad(assignment, "model.conditional is true or false"))?;
                Ok(())
            }
            "model" if field == "classes" => {
                self.model.classes = value
                    .parse()
                    .map_err(|_| bad(assignment, "model.classes takes a non-negative integer"))?;
                Ok(())
            }
            "model" => Err(bad(
                assignment,
                "model fields are `steps`, `decoder`, `conditional` and `classes`",
            )),
            "train" => self.train.set(field, value).map_err(|e| bad(assignment, e)),
            _ => Err(bad(
                assignment,
                format!("unknown part `{part}`; known: {}", settable_parts()),
            )),
        }
    }
}

impl TrainConfig {
    /// Sets one field from its TOML text (`lr`, `2e-3`), checked as the whole config is; the
    /// error is one line.
    pub fn set(&mut self, field: &str, value: &str) -> std::result::Result<(), String> {
        let mut table = toml::Table::try_from(&*self).map_err(|e| crate::error::one_line(&e))?;
        let mut tmp = PluginSpec::new("");
        tmp.set(field, value);
        table.extend(tmp.params);
        *self = TrainConfig::deserialize_table(table).map_err(|e| format!("train: {e}"))?;
        Ok(())
    }

    fn deserialize_table(table: toml::Table) -> std::result::Result<TrainConfig, String> {
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| crate::error::one_line(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{ModelSpec, SamplerSpec};
    use crate::Spacing;

    fn spec() -> RunSpec {
        let p = |k: &str| PluginSpec::new(k);
        RunSpec {
            preset: None,
            ndm_version: String::new(),
            data_shape: vec![2],
            dataset: p("moons"),
            model: ModelSpec {
                steps: Some(10),
                transform: p("identity"),
                schedule: p("cosine"),
                param: p("eps"),
                backbone: p("mlp"),
                prior: p("gaussian"),
                objective: p("eps-mse"),
                decoder: Default::default(),
                conditional: false,
                classes: 0,
            },
            sampler: SamplerSpec {
                solver: p("ddim"),
                steps: None,
                spacing: Spacing::Uniform,
                clip: None,
            },
            train: TrainConfig::default(),
        }
    }

    #[test]
    fn every_family_and_train_and_model_are_settable() {
        let mut s = spec();
        for f in Family::ALL {
            s.set(&format!("{}.width=3", f.key())).unwrap();
            assert_eq!(
                s.part_mut(f).params.get("width"),
                Some(&toml::Value::Integer(3)),
                "{f}"
            );
        }
        s.set("train.lr=0.5").unwrap();
        assert_eq!(s.train.lr, 0.5);
        s.set("model.steps=7").unwrap();
        assert_eq!(s.model.steps, Some(7));
        s.set("model.decoder=discretized").unwrap();
        assert_eq!(s.model.decoder, crate::spec::Decoder::Discretized);
        assert!(s.set("model.decoder=binary").is_err());
        s.swap_plugin(Family::Solver, "pc");
        assert_eq!(s.sampler.solver, PluginSpec::new("pc"));
    }

    #[test]
    fn dotted_fields_reach_a_plugin_inside_a_plugin() {
        let mut s = spec();
        s.set("transform.net.kind=unet").unwrap();
        s.set("transform.net.channel_mults=[1, 2]").unwrap();
        let net = s
            .model
            .transform
            .params
            .get("net")
            .and_then(|v| v.as_table());
        let net = net.expect("a table `net`");
        assert_eq!(net.get("kind"), Some(&toml::Value::String("unet".into())));
        assert_eq!(
            net.get("channel_mults"),
            Some(&toml::Value::Array(vec![1.into(), 2.into()]))
        );
        // A scalar in the way becomes a table: the plugin's own check then names the field.
        s.set("transform.depth=3").unwrap();
        s.set("transform.depth.inner=1").unwrap();
        assert!(s.model.transform.params["depth"].is_table());
    }

    #[test]
    fn bad_assignments_are_one_line_errors() {
        let mut s = spec();
        let e = s.set("nope.x=1").unwrap_err().to_string();
        assert!(
            e.contains("unknown part `nope`") && e.contains("dataset, train, model"),
            "{e}"
        );
        assert!(s
            .set("train")
            .unwrap_err()
            .to_string()
            .contains("PART.FIELD=VALUE"));
        let e = s.set("train.lrr=1").unwrap_err().to_string();
        assert!(e.contains("lrr"), "{e}");
        assert!(s.set("model.steps=x").is_err());
        assert!(!s
            .set("train.beta2=oops")
            .unwrap_err()
            .to_string()
            .contains('\n'));
    }
}
