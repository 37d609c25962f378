//! Whole-model fidelity on the real default model against Hugging Face transformers (float32),
//! as `../shared/reference/README.md` prescribes.

mod common;

use common::{cpu_engine, greedy_cases, hf_case0_logits};
use marco::engine::Engine;
use marco::generate::{generate, GenerateOptions, SamplingParams};
use marco::model::Logits;

/// Reference steps whose top-2 margin is below this are near ties that correct engines may break
/// either way (README: "below about 0.1").
const MIN_MARGIN: f32 = 0.1;

fn greedy_until_eos(engine: &mut Engine, prompt: &[u32]) -> Vec<u32> {
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

#[test]
fn cases_1_and_2_free_running_greedy_equal_the_reference() {
    let mut engine = cpu_engine().lock().unwrap();
    let cases = greedy_cases();
    for i in [1, 2] {
        let got = greedy_until_eos(&mut engine, &cases[i].prompt_ids);
        assert_eq!(got, cases[i].until_eos, "case {i}");
        let text = engine.tokenizer.decode(&got[..got.len() - 1]);
        assert_eq!(text, cases[i].greedy_text, "case {i}");
    }
}

#[test]
fn teacher_forced_top1_matches_the_reference_wherever_the_margin_is_clear() {
    let mut engine = cpu_engine().lock().unwrap();
    let n_vocab = engine.model.config().n_vocab;
    for (i, case) in greedy_cases().iter().enumerate() {
        let mut input = case.prompt_ids.clone();
        input.extend_from_slice(&case.ids_48[..case.ids_48.len() - 1]);
        engine.model.reset();
        let mut logits = Vec::new();
        engine
            .model
            .forward(&input, Logits::All, &mut logits)
            .unwrap();
        let first = case.prompt_ids.len() - 1;
        let mut checked = 0;
        for (step, (&want, &margin)) in case.ids_48.iter().zip(&case.margins).enumerate() {
            if margin < MIN_MARGIN {
                continue;
            }
            let row = &logits[(first + step) * n_vocab..(first + step + 1) * n_vocab];
            let got = marco::generate::argmax(row);
            assert_eq!(
                got, want,
                "case {i} step {step} (reference margin {margin})"
            );
            checked += 1;
        }
        assert!(
            checked >= 40,
            "case {i}: only {checked} steps had a clear margin"
        );
    }
}

#[test]
fn case0_last_prompt_logits_are_close_to_transformers() {
    let mut engine = cpu_engine().lock().unwrap();
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
}

#[test]
fn chat_prompt_tokens_equal_the_reference_prompt_ids() {
    let engine = cpu_engine().lock().unwrap();
    for case in greedy_cases() {
        let messages = [
            marco::chat::Message::new("system", marco::translate::SYSTEM_PROMPT),
            marco::chat::Message::new("user", &case.user_message),
        ];
        let prompt = engine.chat_prompt(&messages).unwrap();
        assert_eq!(engine.tokenizer.encode(&prompt, true), case.prompt_ids);
    }
}
