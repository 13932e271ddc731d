//! LSGM's VAE in front of the diffusion and Latent NDM (a chain `[vae, learned]`): the encoder's
//! NELBO terms, the warm-up stage, shapes, sampling and what is refused.

mod common;

use common::*;
use ndm_api::candle_core::{DType, Tensor};
use ndm_api::elbo::encode;
use ndm_api::likelihood::{ode_nll, NllOptions};
use ndm_api::sample::sample;
use ndm_api::train::{TrainState, Trainer};
use ndm_api::{Dataset, Decoder, Pipeline, PluginSpec, Rng, Spacing, TimeGrid, TrainConfig};

fn lsgm() -> ndm_api::ModelSpec {
    registry_file().preset("lsgm").unwrap().model.clone()
}

fn data() -> Tensor {
    Rng::new(3)
        .normal_tensor(&[6, 2], DType::F32, device())
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
        .normal_tensor(mean.dims(), DType::F32, device())
        .unwrap();
    let z_again = (&mean + eps.mul(&log_std.exp().unwrap()).unwrap()).unwrap();
    assert_eq!(to_vec(&z), to_vec(&z_again), "one reparameterized draw");
    let nll = to_vec(&enc.decoder_nll(&x, &z, Decoder::Gaussian).unwrap());
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
    let set = dataset("checkerboard");
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
    let e = Pipeline::build(&bad, &[2], &reg, device(), 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("parts[1] = vae") && !e.contains('\n'), "{e}");
}

/// Generated `[1, 8, 8]` 8-bit images: values on the centres of the 256 cells of `[-1, 1]`.
const TINY_BYTES: Images8 = Images8 {
    draw: |n, rng, device| {
        let x = (rng.normal_tensor(&[n, 1, 8, 8], DType::F32, device)? * 0.5)?;
        (((x + 1.0)? * 128.0)?.floor()?.clamp(0.0, 255.0)? + 0.5)?.affine(1.0 / 128.0, -1.0)
    },
    quantization: Some(256),
};

#[test]
fn lsgm_on_8_bit_images_scores_pixels_with_a_discretized_logistic() {
    let preset = registry_file().preset("lsgm").unwrap().clone();
    let v = preset.images.expect("lsgm has an image variant");
    assert_eq!(v.decoder, Some(Decoder::Discretized));
    let mut spec = preset.model.clone();
    spec.transform = v.transform.unwrap();
    spec.decoder = v.decoder.unwrap();
    spec.backbone = v.backbone.unwrap();
    spec.backbone.set("base_channels", "8");
    spec.backbone.set("channel_mults", "[1]");
    spec.backbone.set("attention_resolutions", "[]");
    let pipe = build(&spec, &[1, 8, 8]);
    let enc = pipe.transform.encoder().unwrap();
    let data = TINY_BYTES;
    let x = data
        .sample(16, ndm_api::Split::Train, &mut Rng::new(4), device())
        .unwrap();
    let (_, _, z) = ndm_api::elbo::posterior_draw(enc, &x, &mut Rng::new(5)).unwrap();
    // A probability of the pixels: every NLL is at least 0, unlike the Gaussian density's.
    let disc = to_vec(&enc.decoder_nll(&x, &z, Decoder::Discretized).unwrap());
    let gauss = to_vec(&enc.decoder_nll(&x, &z, Decoder::Gaussian).unwrap());
    assert!(disc.iter().all(|v| v.is_finite() && *v >= 0.0), "{disc:?}");
    assert_ne!(disc, gauss);
    // The VAE's warm-up trains that decoder; the evaluation scores the 8-bit values themselves.
    let cfg = TrainConfig {
        batch_size: 32,
        lr: 5e-3,
        encoder_warmup: 40,
        ..TrainConfig::default()
    };
    let trainer = Trainer::new(&pipe, &cfg).unwrap();
    let mut state = TrainState::new(&pipe, 0).unwrap();
    let nll_at = |state: &mut TrainState| {
        let r = trainer.step(state, &data).unwrap();
        r.terms.iter().find(|(n, _)| n == "vae_nll").unwrap().1
    };
    let first = nll_at(&mut state);
    let mut last = first;
    for _ in 0..39 {
        last = nll_at(&mut state);
    }
    assert!(
        last < first,
        "the warm-up lowers the decoder NLL: {first} -> {last}"
    );
    let r = ndm_api::eval::evaluate_nelbo(&pipe, &data, 16, 16, &mut Rng::new(6)).unwrap();
    assert!(r.dequantization.is_none(), "no dequantization");
    assert!(r.nelbo.mean.is_finite());
}
