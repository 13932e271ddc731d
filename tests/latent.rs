//! LSGM's VAE in front of the diffusion and Latent NDM (a chain `[vae, learned]`): the encoder's
//! NELBO terms, the warm-up stage, shapes, sampling and what is refused.

mod common;

use common::*;
use ndm_api::candle_core::{DType, Device, Tensor};
use ndm_api::elbo::encode;
use ndm_api::likelihood::{ode_nll, NllOptions};
use ndm_api::sample::sample;
use ndm_api::train::{TrainState, Trainer};
use ndm_api::{Pipeline, PluginSpec, Rng, Spacing, TimeGrid, TrainConfig};

fn lsgm() -> ndm_api::ModelSpec {
    registry_file().preset("lsgm").unwrap().model.clone()
}

fn data() -> Tensor {
    Rng::new(3)
        .normal_tensor(&[6, 2], DType::F32, &Device::Cpu)
        .unwrap()
}

#[test]
fn the_encoder_terms_are_the_decoder_nll_minus_the_closed_form_entropy() {
    let pipe = build(&lsgm(), &[2]);
    let enc = pipe.transform.encoder().expect("the VAE has an encoder");
    let x = data();
    let (z, terms) = encode(&pipe, &x, &mut Rng::new(1)).unwrap();
    let terms = to_vec(&terms.unwrap());
    let (mean, log_std) = enc.posterior(&x).unwrap();
    let eps = Rng::new(1)
        .normal_tensor(mean.dims(), DType::F32, &Device::Cpu)
        .unwrap();
    let z_again = (&mean + eps.mul(&log_std.exp().unwrap()).unwrap()).unwrap();
    assert_eq!(to_vec(&z), to_vec(&z_again), "one reparameterized draw");
    let nll = to_vec(&enc.decoder_nll(&x, &z).unwrap());
    let ls = to_vec(&log_std);
    let d = ls.len() / 6;
    let ln_2pi_e = 1.0 + (2.0 * std::f64::consts::PI).ln();
    for i in 0..6 {
        let h: f64 = ls[i * d..(i + 1) * d].iter().sum::<f64>() + 0.5 * d as f64 * ln_2pi_e;
        assert!(
            (terms[i] - (nll[i] - h)).abs() < 1e-5 * (1.0 + nll[i].abs()),
            "{} vs {}",
            terms[i],
            nll[i] - h
        );
        // The closed form against Monte Carlo: E_q[-log q(z | x)] over many draws.
        let (m, s) = (&to_vec(&mean)[i * d..(i + 1) * d], &ls[i * d..(i + 1) * d]);
        let mut rng = Rng::new(10 + i as u64);
        let draws = 20_000;
        let mc: f64 = (0..draws)
            .map(|_| {
                (0..d)
                    .map(|k| {
                        let e = rng.normal();
                        let zk = m[k] + s[k].exp() * e;
                        let u = (zk - m[k]) / s[k].exp();
                        0.5 * u * u + s[k] + 0.5 * (2.0 * std::f64::consts::PI).ln()
                    })
                    .sum::<f64>()
            })
            .sum::<f64>()
            / draws as f64;
        assert!(
            (mc - h).abs() < 0.03,
            "entropy: Monte Carlo {mc}, closed form {h}"
        );
    }
}

#[test]
fn the_vae_warms_up_alone_then_everything_trains_jointly() {
    let reg = registry();
    let set = reg
        .build_dataset(&PluginSpec::new("checkerboard"), &plain_ctx(&reg))
        .unwrap();
    let pipe = build(&lsgm(), &[2]);
    let cfg = TrainConfig {
        batch_size: 64,
        encoder_warmup: 2,
        ..TrainConfig::default()
    };
    let trainer = Trainer::new(&pipe, &cfg).unwrap();
    let mut state = TrainState::new(&pipe, 0).unwrap();
    let part = |prefix: &str| -> Vec<f64> {
        pipe.vars()
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .flat_map(|(_, v)| to_vec(v.as_tensor()))
            .collect()
    };
    let (backbone0, vae0) = (part("backbone."), part("transform."));
    for _ in 0..2 {
        let r = trainer.step(&mut state, set.as_ref()).unwrap();
        let names: Vec<&str> = r.terms.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["vae_nll", "vae_kl"], "warm-up step {}", r.step);
    }
    assert_eq!(
        part("backbone."),
        backbone0,
        "the warm-up leaves the diffusion alone"
    );
    assert_ne!(part("transform."), vae0, "the warm-up trains the VAE");
    let r = trainer.step(&mut state, set.as_ref()).unwrap();
    assert!(r.terms.iter().any(|(n, _)| n == "l_diff"), "{:?}", r.terms);
    assert_ne!(
        part("backbone."),
        backbone0,
        "joint training moves the denoiser"
    );
}

#[test]
fn latent_ndm_samples_decode_to_data_and_the_ode_likelihood_is_refused() {
    let mut spec = registry_file().preset("latent-ndm").unwrap().model.clone();
    if let Some(ndm_api::toml::Value::Array(parts)) = spec.transform.params.get_mut("parts") {
        parts[0]
            .as_table_mut()
            .unwrap()
            .insert("latent_dim".into(), ndm_api::toml::Value::Integer(3));
    }
    let pipe = build(&spec, &[2]);
    assert_eq!(pipe.latent_shape, vec![3]);
    assert!(pipe.transform.encoder().is_some() && pipe.transform.is_trainable());
    assert!(pipe
        .vars()
        .iter()
        .any(|(n, _)| n.starts_with("transform.0.encoder.")));
    assert!(pipe
        .vars()
        .iter()
        .any(|(n, _)| n.starts_with("transform.1.net.")));
    let reg = registry();
    let solver = reg
        .build_solver(&PluginSpec::new("ancestral"), &plain_ctx(&reg))
        .unwrap();
    let grid = TimeGrid::for_process(5, Spacing::Uniform, &pipe).unwrap();
    let s = sample(&pipe, solver.as_ref(), &grid, 5, &mut Rng::new(0)).unwrap();
    assert_eq!(s.x.dims(), &[5, 2], "samples are decoded to the data shape");
    assert_eq!(s.z_start.dims(), &[5, 3]);
    let e = ode_nll(
        &pipe,
        &data(),
        &NllOptions::default_for(2),
        &mut Rng::new(0),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("chain") && e.contains("NELBO"), "{e}");

    // Only the first part sees the data: an encoder later in a chain is refused in one line.
    let mut bad = spec.clone();
    if let Some(ndm_api::toml::Value::Array(parts)) = bad.transform.params.get_mut("parts") {
        parts.reverse();
    }
    let e = Pipeline::build(&bad, &[2], &reg, &Device::Cpu, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("parts[1] = vae") && !e.contains('\n'), "{e}");
}
