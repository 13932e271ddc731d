//! `TrainConfig::validate`: every value AdamW or the schedule cannot use is refused with one line
//! that names the field.

use ndm_api::TrainConfig;

fn refusal(edit: impl FnOnce(&mut TrainConfig)) -> Option<String> {
    let mut cfg = TrainConfig::default();
    edit(&mut cfg);
    cfg.validate().err().map(|e| e.to_string())
}

#[test]
fn the_default_config_is_valid() {
    assert_eq!(refusal(|_| {}), None);
}

#[test]
fn adamw_betas_must_be_in_zero_one() {
    for b in [1.0, 1.5, -0.1, f64::NAN, f64::INFINITY] {
        let m = refusal(|c| c.beta1 = b).unwrap_or_else(|| panic!("beta1 = {b} accepted"));
        assert_eq!(m, "invalid argument: train.beta1 must be in [0, 1)");
        let m = refusal(|c| c.beta2 = b).unwrap_or_else(|| panic!("beta2 = {b} accepted"));
        assert_eq!(m, "invalid argument: train.beta2 must be in [0, 1)");
    }
    // The ends that are allowed: 0 (no momentum) and just below 1.
    for b in [0.0, 0.999_999] {
        assert_eq!(refusal(|c| c.beta1 = b), None);
        assert_eq!(refusal(|c| c.beta2 = b), None);
    }
}

#[test]
fn adam_eps_must_be_positive_and_finite() {
    for eps in [0.0, -1e-8, f64::NAN, f64::INFINITY] {
        let m =
            refusal(|c| c.adam_eps = eps).unwrap_or_else(|| panic!("adam_eps = {eps} accepted"));
        assert_eq!(
            m,
            "invalid argument: train.adam_eps must be a positive number"
        );
    }
    assert_eq!(refusal(|c| c.adam_eps = 1e-12), None);
}

#[test]
fn weight_decay_and_grad_clip_must_be_non_negative_and_finite() {
    for v in [-1e-4, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let m = refusal(|c| c.weight_decay = v)
            .unwrap_or_else(|| panic!("weight_decay = {v} accepted"));
        assert_eq!(
            m,
            "invalid argument: train.weight_decay must be a non-negative number"
        );
        let m = refusal(|c| c.grad_clip = v).unwrap_or_else(|| panic!("grad_clip = {v} accepted"));
        assert_eq!(
            m,
            "invalid argument: train.grad_clip must be a non-negative number (0 disables clipping)"
        );
    }
    // Zero is allowed for both: no decay, no clipping.
    assert_eq!(refusal(|c| c.weight_decay = 0.0), None);
    assert_eq!(refusal(|c| c.grad_clip = 0.0), None);
    assert_eq!(refusal(|c| c.weight_decay = 0.01), None);
}

#[test]
fn refusals_are_one_line() {
    let edits: [fn(&mut TrainConfig); 5] = [
        |c| c.beta1 = 1.0,
        |c| c.beta2 = 1.0,
        |c| c.adam_eps = 0.0,
        |c| c.weight_decay = -1.0,
        |c| c.grad_clip = f64::NAN,
    ];
    for edit in edits {
        let m = refusal(edit).unwrap();
        assert!(!m.contains('\n'), "{m}");
    }
}
