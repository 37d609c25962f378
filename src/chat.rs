//! Chat prompts: the model's own Jinja chat template (`tokenizer.chat_template`), rendered with
//! minijinja, a well-kept Jinja2 engine; ChatML when a model carries no template.

use anyhow::{Context, Result};
use minijinja::{context, Environment};

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// Renders `messages` with `template` (Jinja, as in Hugging Face's `tokenizer_config.json`),
/// ending with the assistant's turn opened.
pub fn render(template: Option<&str>, messages: &[Message]) -> Result<String> {
    let Some(template) = template else {
        return Ok(chatml(messages));
    };
    let mut env = Environment::new();
    env.add_template("chat", template)
        .context("the model's chat template (tokenizer.chat_template) is not valid Jinja")?;
    let msgs: Vec<_> = messages
        .iter()
        .map(|m| context! { role => m.role, content => m.content })
        .collect();
    env.get_template("chat")?
        .render(context! { messages => msgs, add_generation_prompt => true })
        .context("rendering the model's chat template (tokenizer.chat_template)")
}

/// ChatML, the format Qwen2 models are trained on.
pub fn chatml(messages: &[Message]) -> String {
    let mut s = String::new();
    for m in messages {
        s.push_str(&format!(
            "<|im_start|>{}\n{}<|im_end|>\n",
            m.role, m.content
        ));
    }
    s.push_str("<|im_start|>assistant\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen_template_renders_chatml() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/reference/hf-qwen2.5-coder-0.5b"
        );
        let template = std::fs::read_to_string(format!("{dir}/chat_template.jinja")).unwrap();
        let msgs = [
            Message::new("system", "You are a helpful assistant."),
            Message::new("user", "Hi"),
        ];
        assert_eq!(render(Some(&template), &msgs).unwrap(), chatml(&msgs));
    }
}
