//! The whole-model fidelity checks of `../shared/reference/README.md`, for any backend.

use marco::engine::Engine;
use marco::generate::{generate, GenerateOptions, SamplingParams};
use marco::model::Logits;

use super::{greedy_cases, hf_case0_logits, GreedyCase};

/// Reference steps whose top-2 margin is below this are near ties that correct engines may break
/// either way (README: "below about 0.1").
pub const MIN_MARGIN: f32 = 0.1;

pub fn greedy_until_eos(engine: &mut Engine, prompt: &[u32]) -> Vec<u32> {
    engine.model.reset();
    let opts = GenerateOptions {
        max_tokens: 64,
        sampling: SamplingParams::default(),
        stop_tokens: engine.stop_tokens().to_vec(),
    };
    generate(&mut engine.model, prompt, &opts, &mut |_| true)
        .unwrap()
        .0
}

/// Cases 1 and 2 have no near tie before EOS: free-running greedy must equal the reference.
pub fn free_running_cases_match(engine: &mut Engine) {
    let cases = greedy_cases();
    for i in [1, 2] {
        let got = greedy_until_eos(engine, &cases[i].prompt_ids);
        assert_eq!(got, cases[i].until_eos, "case {i}");
        let text = engine.tokenizer.decode(&got[..got.len() - 1]);
        assert_eq!(text, cases[i].greedy_text, "case {i}");
    }
}

/// Teacher-forced over `prompt + greedy_ids_48`: (steps with a clear margin, of which the top-1
/// equals the reference).
pub fn teacher_forced_agreement(engine: &mut Engine, case: &GreedyCase) -> (usize, usize) {
    let n_vocab = engine.model.config().n_vocab;
    let mut input = case.prompt_ids.clone();
    input.extend_from_slice(&case.ids_48[..case.ids_48.len() - 1]);
    engine.model.reset();
    let mut logits = Vec::new();
    engine
        .model
        .forward(&input, Logits::All, &mut logits)
        .unwrap();
    let first = case.prompt_ids.len() - 1;
    let (mut clear, mut agree) = (0, 0);
    for (step, (&want, &margin)) in case.ids_48.iter().zip(&case.margins).enumerate() {
        if margin < MIN_MARGIN {
            continue;
        }
        let row = &logits[(first + step) * n_vocab..(first + step + 1) * n_vocab];
        clear += 1;
        agree += usize::from(marco::generate::argmax(row) == want);
    }
    (clear, agree)
}

/// Teacher-forced on all four cases: top-1 equals the reference wherever its margin is clear.
pub fn teacher_forced_top1_matches(engine: &mut Engine) {
    for (i, case) in greedy_cases().iter().enumerate() {
        let (clear, agree) = teacher_forced_agreement(engine, case);
        assert!(
            clear >= 40,
            "case {i}: only {clear} steps had a clear margin"
        );
        assert_eq!(agree, clear, "case {i}: top-1 differs at a clear step");
    }
}

/// Case 0's last prompt position against transformers: max |Δ| ≤ 0.5, mean |Δ| ≤ 0.1.
pub fn case0_logits_close(engine: &mut Engine) -> (f32, f32) {
    let case = &greedy_cases()[0];
    let reference = hf_case0_logits();
    engine.model.reset();
    let mut logits = Vec::new();
    engine
        .model
        .forward(&case.prompt_ids, Logits::Last, &mut logits)
        .unwrap();
    assert_eq!(logits.len(), reference.len());
    let deltas: Vec<f32> = logits
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .collect();
    let max = deltas.iter().copied().fold(0.0, f32::max);
    let mean = deltas.iter().sum::<f32>() / deltas.len() as f32;
    eprintln!("case 0 last logits vs transformers: max |d| {max:.4}, mean |d| {mean:.4}");
    assert!(max <= 0.5, "max |delta| {max}");
    assert!(mean <= 0.1, "mean |delta| {mean}");
    assert_eq!(
        marco::generate::argmax(&logits),
        marco::generate::argmax(&reference)
    );
    (max, mean)
}
