//! Whole-model fidelity of the WGSL backend (software Vulkan in CI: lavapipe, which the test
//! command installs), and agreement with the CPU backend.

mod common;

use std::sync::{Mutex, OnceLock};

use common::checks;
use marco::backend::BackendKind;
use marco::engine::Engine;

fn gpu_engine() -> &'static Mutex<Engine> {
    static ENGINE: OnceLock<Mutex<Engine>> = OnceLock::new();
    ENGINE.get_or_init(|| Mutex::new(common::load_engine(BackendKind::Gpu)))
}

#[test]
fn gpu_cases_1_and_2_free_running_greedy_equal_the_reference() {
    checks::free_running_cases_match(&mut gpu_engine().lock().unwrap());
}

#[test]
fn gpu_teacher_forced_top1_matches_the_reference_wherever_the_margin_is_clear() {
    checks::teacher_forced_top1_matches(&mut gpu_engine().lock().unwrap());
}

#[test]
fn gpu_case0_last_prompt_logits_are_close_to_transformers() {
    checks::case0_logits_close(&mut gpu_engine().lock().unwrap());
}

#[test]
fn gpu_and_cpu_agree_on_the_greedy_output_of_all_four_prompts() {
    let mut gpu = gpu_engine().lock().unwrap();
    let mut cpu = common::cpu_engine().lock().unwrap();
    for (i, case) in common::greedy_cases().iter().enumerate() {
        let g = checks::greedy_until_eos(&mut gpu, &case.prompt_ids);
        let c = checks::greedy_until_eos(&mut cpu, &case.prompt_ids);
        assert_eq!(g, c, "case {i}");
    }
}
