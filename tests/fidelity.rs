//! Whole-model fidelity of the CPU backend on the real default model against Hugging Face
//! transformers (float32), as `../shared/reference/README.md` prescribes.

mod common;

use common::checks;
use common::{cpu_engine, greedy_cases};

#[test]
fn cases_1_and_2_free_running_greedy_equal_the_reference() {
    checks::free_running_cases_match(&mut cpu_engine().lock().unwrap());
}

#[test]
fn teacher_forced_top1_matches_the_reference_wherever_the_margin_is_clear() {
    checks::teacher_forced_top1_matches(&mut cpu_engine().lock().unwrap());
}

#[test]
fn case0_last_prompt_logits_are_close_to_transformers() {
    checks::case0_logits_close(&mut cpu_engine().lock().unwrap());
}

#[test]
fn every_forced_cpu_kernel_path_gives_the_reference_tokens() {
    use marco::backend::cpu::kernels::{Isa, Kernels};
    use marco::backend::cpu::CpuBackend;
    let file =
        std::sync::Arc::new(marco::gguf::GgufFile::open(&common::default_model_path()).unwrap());
    let case = &greedy_cases()[1];
    for isa in Isa::ALL {
        let Some(kernels) = Kernels::forced(isa) else {
            eprintln!("{} is not available on this CPU", isa.name());
            continue;
        };
        let backend = Box::new(CpuBackend::with_kernels(0, kernels));
        let mut model = marco::model::Qwen2Model::load(file.clone(), backend, 256).unwrap();
        let opts = marco::generate::GenerateOptions {
            max_tokens: 32,
            sampling: Default::default(),
            stop_tokens: vec![151645],
        };
        let (ids, _) =
            marco::generate::generate(&mut model, &case.prompt_ids, &opts, &mut |_| true).unwrap();
        assert_eq!(ids, case.until_eos, "kernel path {}", isa.name());
    }
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
