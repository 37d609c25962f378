//! Translation: the reference prompt in the model's chat template, generated greedily by default.

use std::path::Path;

use anyhow::{ensure, Result};

use crate::chat::Message;
use crate::engine::{Engine, EngineOptions};
use crate::generate::{GenerateOptions, SamplingParams};
use crate::lang::Language;

/// The system prompt of the reference translations.
pub const SYSTEM_PROMPT: &str = "You are a helpful assistant.";

/// The user message asking for a translation (the reference prompt).
pub fn user_message(text: &str, from: &Language, to: &Language) -> String {
    format!(
        "Translate the following {} text into {}. Output only the translation.\n\n{text}",
        from.name, to.name
    )
}

/// Options of a translation.
#[derive(Clone, Debug)]
pub struct TranslateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
}

impl Default for TranslateOptions {
    fn default() -> Self {
        TranslateOptions {
            max_tokens: 512,
            sampling: SamplingParams::default(),
        }
    }
}

/// Translates text between any two of the supported languages.
///
/// ```no_run
/// use marco::{EngineOptions, Translator};
///
/// let mut t = Translator::load("model.gguf".as_ref(), &EngineOptions::default())?;
/// let zh = t.translate("The weather is nice today.", "en", "zh")?;
/// println!("{zh}");
/// # Ok::<(), anyhow::Error>(())
/// ```
pub struct Translator {
    engine: Engine,
    pub options: TranslateOptions,
}

impl Translator {
    /// Loads a GGUF model.
    pub fn load(model: &Path, opts: &EngineOptions) -> Result<Translator> {
        Ok(Translator::new(Engine::load(model, opts)?))
    }

    /// Wraps an already loaded engine.
    pub fn new(engine: Engine) -> Translator {
        Translator {
            engine,
            options: TranslateOptions::default(),
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Translates `text` from `from` to `to` (language codes or names, see [`Language::find`]).
    pub fn translate(&mut self, text: &str, from: &str, to: &str) -> Result<String> {
        self.translate_streaming(text, from, to, &mut |_| {})
    }

    /// Like [`Translator::translate`], calling `on_text` with each new piece of complete UTF-8 text.
    pub fn translate_streaming(
        &mut self,
        text: &str,
        from: &str,
        to: &str,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<String> {
        let (from, to) = (Language::find(from)?, Language::find(to)?);
        ensure!(
            !text.trim().is_empty(),
            "nothing to translate: the text is empty"
        );
        let prompt_ids = self.prompt_ids(text, &from, &to)?;
        let opts = GenerateOptions {
            max_tokens: self.options.max_tokens,
            sampling: self.options.sampling.clone(),
            stop_tokens: self.engine.stop_tokens().to_vec(),
        };
        let mut out = String::new();
        self.engine
            .generate_streaming(&prompt_ids, &opts, &mut |piece| {
                out.push_str(piece);
                on_text(piece);
            })?;
        Ok(out.trim().to_string())
    }

    /// Token ids of the translation prompt.
    pub fn prompt_ids(&self, text: &str, from: &Language, to: &Language) -> Result<Vec<u32>> {
        let messages = [
            Message::new("system", SYSTEM_PROMPT),
            Message::new("user", &user_message(text, from, to)),
        ];
        let prompt = self.engine.chat_prompt(&messages)?;
        Ok(self.engine.tokenizer.encode(&prompt, true))
    }
}
