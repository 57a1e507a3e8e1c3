//! Builder methods on the generated [`GenerationRequest`].

use crate::pb::{
    ChatMessage, ChatRole, ConstraintIr, GenerationContext, GenerationRequest, SamplingParams,
};

impl GenerationRequest {
    /// A request that continues `prompt` as is (no chat template).
    pub fn from_prompt(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            ..Self::default()
        }
    }

    /// A request rendered with the model's chat template.
    pub fn from_messages(messages: impl IntoIterator<Item = ChatMessage>) -> Self {
        Self {
            messages: messages.into_iter().collect(),
            ..Self::default()
        }
    }

    /// Adds a constraint; all of a request's constraints apply together.
    #[must_use]
    pub fn with_constraint(mut self, constraint: ConstraintIr) -> Self {
        self.constraints.push(constraint);
        self
    }

    /// Adds several constraints.
    #[must_use]
    pub fn with_constraints(mut self, constraints: impl IntoIterator<Item = ConstraintIr>) -> Self {
        self.constraints.extend(constraints);
        self
    }

    /// Sets the caller's request id, echoed in events and provenance.
    #[must_use]
    pub fn with_request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = request_id.into();
        self
    }

    fn sampling_mut(&mut self) -> &mut SamplingParams {
        self.sampling.get_or_insert_with(SamplingParams::default)
    }

    /// Sets the most tokens to generate.
    #[must_use]
    pub fn with_max_tokens(mut self, max_tokens: u32) -> Self {
        self.sampling_mut().max_tokens = Some(max_tokens);
        self
    }

    /// Sets the temperature (0 is greedy, the default).
    #[must_use]
    pub fn with_temperature(mut self, temperature: f32) -> Self {
        self.sampling_mut().temperature = Some(temperature);
        self
    }

    /// Sets the nucleus sampling mass.
    #[must_use]
    pub fn with_top_p(mut self, top_p: f32) -> Self {
        self.sampling_mut().top_p = Some(top_p);
        self
    }

    /// Sets top-k sampling.
    #[must_use]
    pub fn with_top_k(mut self, top_k: u32) -> Self {
        self.sampling_mut().top_k = Some(top_k);
        self
    }

    /// Sets the sampling seed.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.sampling_mut().seed = Some(seed);
        self
    }

    /// Adds a stop sequence.
    #[must_use]
    pub fn with_stop(mut self, stop: impl Into<String>) -> Self {
        self.sampling_mut().stop.push(stop.into());
        self
    }

    /// Asks for `n` candidates of this prompt in one call (they share the
    /// prompt's prefill); 1 to the server's `max_candidates`.
    #[must_use]
    pub fn with_n(mut self, n: u32) -> Self {
        self.sampling_mut().n = Some(n);
        self
    }

    /// Returns each output token's log probability and its `top` most likely
    /// alternatives (0 to the server's `max_logprobs`).
    #[must_use]
    pub fn with_logprobs(mut self, top: u32) -> Self {
        self.sampling_mut().logprobs = Some(top);
        self
    }

    /// Returns each prompt token's log probability and its `top` most likely
    /// alternatives.
    #[must_use]
    pub fn with_prompt_logprobs(mut self, top: u32) -> Self {
        self.sampling_mut().prompt_logprobs = Some(top);
        self
    }

    /// Tokens to generate before end-of-sequence may end the output.
    #[must_use]
    pub fn with_min_tokens(mut self, min_tokens: u32) -> Self {
        self.sampling_mut().min_tokens = Some(min_tokens);
        self
    }

    /// Adds a token id that ends generation when produced.
    #[must_use]
    pub fn with_stop_token_id(mut self, token_id: u32) -> Self {
        self.sampling_mut().stop_token_ids.push(token_id);
        self
    }

    /// Sets the repetition penalty, in (0, 2]; 1 is off.
    #[must_use]
    pub fn with_repetition_penalty(mut self, penalty: f32) -> Self {
        self.sampling_mut().repetition_penalty = Some(penalty);
        self
    }

    /// Sets the presence penalty, -2 to 2; 0 is off.
    #[must_use]
    pub fn with_presence_penalty(mut self, penalty: f32) -> Self {
        self.sampling_mut().presence_penalty = Some(penalty);
        self
    }

    /// Sets the frequency penalty, -2 to 2; 0 is off.
    #[must_use]
    pub fn with_frequency_penalty(mut self, penalty: f32) -> Self {
        self.sampling_mut().frequency_penalty = Some(penalty);
        self
    }

    /// Adds `bias` (-100 to 100) to the logit of `token_id`; the constraint
    /// masks still apply on top.
    #[must_use]
    pub fn with_logit_bias(mut self, token_id: u32, bias: f32) -> Self {
        self.sampling_mut().logit_bias.insert(token_id, bias);
        self
    }

    /// Whether the output starts with reasoning (on a server with reasoning
    /// tags); the constraints then apply to the answer after the end tag.
    #[must_use]
    pub fn with_reasoning(mut self, reasoning: bool) -> Self {
        self.reasoning = Some(reasoning);
        self
    }

    /// Most characters of reasoning before the end tag is forced.
    #[must_use]
    pub fn with_reasoning_max_chars(mut self, max_chars: u32) -> Self {
        self.reasoning_max_chars = Some(max_chars);
        self
    }

    /// Keeps generating past end-of-sequence until max_tokens (benchmarks).
    #[must_use]
    pub fn with_ignore_eos(mut self, ignore_eos: bool) -> Self {
        self.sampling_mut().ignore_eos = Some(ignore_eos);
        self
    }

    /// Records where the output goes (informational, kept in provenance).
    #[must_use]
    pub fn with_context(
        mut self,
        current_file: impl Into<String>,
        language: impl Into<String>,
    ) -> Self {
        let context = self.context.get_or_insert_with(GenerationContext::default);
        context.current_file = current_file.into();
        context.language = language.into();
        self
    }

    /// Generates with the LoRA adapter loaded under `name` (see
    /// `Client::load_adapter`); empty: the base model.
    #[must_use]
    pub fn with_adapter(mut self, name: impl Into<String>) -> Self {
        self.adapter = name.into();
        self
    }

    /// Adds a metadata label, echoed in provenance.
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

impl ChatMessage {
    /// A message from `role`.
    pub fn new(role: ChatRole, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(ChatRole::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(ChatRole::User, content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(ChatRole::Assistant, content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constraint;

    #[test]
    fn builder_fills_fields() {
        let req = GenerationRequest::from_prompt("p")
            .with_constraint(constraint::regex("a"))
            .with_max_tokens(7)
            .with_temperature(0.5)
            .with_seed(42)
            .with_stop("\n")
            .with_context("src/main.rs", "rust")
            .with_metadata("k", "v")
            .with_request_id("r1")
            .with_adapter("style");
        assert_eq!(req.prompt, "p");
        assert_eq!(req.constraints.len(), 1);
        let sampling = req.sampling.expect("sampling set");
        assert_eq!(sampling.max_tokens, Some(7));
        assert_eq!(sampling.temperature, Some(0.5));
        assert_eq!(sampling.seed, Some(42));
        assert_eq!(sampling.top_p, None);
        assert_eq!(sampling.stop, ["\n"]);
        let context = req.context.expect("context set");
        assert_eq!(context.current_file, "src/main.rs");
        assert_eq!(context.language, "rust");
        assert_eq!(req.metadata["k"], "v");
        assert_eq!(req.request_id, "r1");
        assert_eq!(req.adapter, "style");
    }

    #[test]
    fn builder_fills_issue_13_fields() {
        let req = GenerationRequest::from_prompt("p")
            .with_n(3)
            .with_logprobs(2)
            .with_prompt_logprobs(0)
            .with_min_tokens(4)
            .with_stop_token_id(9)
            .with_repetition_penalty(1.1)
            .with_presence_penalty(0.5)
            .with_frequency_penalty(-0.5)
            .with_logit_bias(17, -5.0)
            .with_ignore_eos(true)
            .with_reasoning(true)
            .with_reasoning_max_chars(300);
        assert_eq!(req.reasoning, Some(true));
        assert_eq!(req.reasoning_max_chars, Some(300));
        let sampling = req.sampling.expect("sampling set");
        assert_eq!(sampling.n, Some(3));
        assert_eq!(sampling.logprobs, Some(2));
        assert_eq!(sampling.prompt_logprobs, Some(0));
        assert_eq!(sampling.min_tokens, Some(4));
        assert_eq!(sampling.stop_token_ids, [9]);
        assert_eq!(sampling.repetition_penalty, Some(1.1));
        assert_eq!(sampling.presence_penalty, Some(0.5));
        assert_eq!(sampling.frequency_penalty, Some(-0.5));
        assert_eq!(sampling.logit_bias[&17], -5.0);
        assert_eq!(sampling.ignore_eos, Some(true));
    }

    #[test]
    fn chat_messages_have_roles() {
        let req =
            GenerationRequest::from_messages([ChatMessage::system("s"), ChatMessage::user("u")]);
        assert!(req.prompt.is_empty());
        assert_eq!(req.messages[0].role(), ChatRole::System);
        assert_eq!(req.messages[1].role(), ChatRole::User);
    }
}
