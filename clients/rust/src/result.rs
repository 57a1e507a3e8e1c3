//! [`GenerationResult`]: a finished generation, the same type as the Python
//! client's `ananke.GenerationResult`.

use crate::pb::{
    Candidate, CheckVerdict, FinishReason, GenerateResponse, GenerationFinished, GenerationStarted,
    PositionLogprobs, Provenance, TokenChunk, Usage,
};

/// A finished generation: the text, why it stopped, usage and provenance.
/// The top-level fields describe candidate 0; `candidates` holds every
/// candidate (candidate 0 included) when the request asked for several (n).
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationResult {
    /// The request id (the caller's, or the one the server assigned).
    pub request_id: String,
    /// The whole generated text.
    pub text: String,
    /// The generated token ids.
    pub token_ids: Vec<u32>,
    /// Why generation stopped.
    pub finish_reason: FinishReason,
    /// Token counts.
    pub usage: Usage,
    /// How the output was produced (model, constraints, sampling, check).
    pub provenance: Provenance,
    /// Every candidate, in index order.
    pub candidates: Vec<Candidate>,
    /// Candidate 0's log probabilities, one per token id, when asked for.
    pub logprobs: Vec<PositionLogprobs>,
    /// The prompt's log probabilities, when asked for.
    pub prompt_logprobs: Vec<PositionLogprobs>,
    /// With reasoning on (`GenerationRequest.reasoning`): candidate 0's
    /// reasoning before the end tag; `text` is then the answer alone.
    pub reasoning_text: String,
}

impl GenerationResult {
    /// From a unary `GenerateResponse`.
    pub fn from_response(response: GenerateResponse) -> Self {
        Self {
            finish_reason: response.finish_reason(),
            request_id: response.request_id,
            text: response.text,
            token_ids: response.token_ids,
            usage: response.usage.unwrap_or_default(),
            provenance: response.provenance.unwrap_or_default(),
            candidates: response.candidates,
            logprobs: response.logprobs,
            prompt_logprobs: response.prompt_logprobs,
            reasoning_text: response.reasoning_text,
        }
    }

    /// From a stream's events of a single-candidate generation.
    pub fn from_stream(
        started: Option<&GenerationStarted>,
        chunks: &[TokenChunk],
        finished: GenerationFinished,
    ) -> Self {
        Self::from_stream_candidates(started, chunks, vec![finished])
    }

    /// From a stream's events: the chunks of every candidate and one
    /// `Finished` event per candidate (in any order).
    pub fn from_stream_candidates(
        started: Option<&GenerationStarted>,
        chunks: &[TokenChunk],
        mut finals: Vec<GenerationFinished>,
    ) -> Self {
        finals.sort_by_key(|f| f.candidate_index);
        let prompt_logprobs = finals
            .iter()
            .find(|f| !f.prompt_logprobs.is_empty())
            .map(|f| f.prompt_logprobs.clone())
            .unwrap_or_default();
        let candidates: Vec<Candidate> = finals
            .into_iter()
            .map(|finished| {
                let own = || {
                    chunks
                        .iter()
                        .filter(move |c| c.candidate_index == finished.candidate_index)
                };
                Candidate {
                    index: finished.candidate_index,
                    text: own().map(|c| c.text.as_str()).collect(),
                    token_ids: own().flat_map(|c| c.token_ids.iter().copied()).collect(),
                    finish_reason: finished.finish_reason,
                    logprobs: own().flat_map(|c| c.logprobs.iter().cloned()).collect(),
                    usage: finished.usage,
                    provenance: finished.provenance,
                    reasoning_text: own().map(|c| c.reasoning_text.as_str()).collect(),
                }
            })
            .collect();
        let first = candidates.first().cloned().unwrap_or_default();
        let provenance = first.provenance.clone().unwrap_or_default();
        let request_id = started
            .map(|s| s.request_id.clone())
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| provenance.request_id.clone());
        Self {
            request_id,
            finish_reason: first.finish_reason(),
            text: first.text,
            token_ids: first.token_ids,
            usage: first.usage.unwrap_or_default(),
            provenance,
            logprobs: first.logprobs,
            reasoning_text: first.reasoning_text.clone(),
            candidates,
            prompt_logprobs,
        }
    }

    /// Where the constrained answer begins, as (token index, character
    /// offset in the whole output), when the generation reasoned.
    pub fn answer_start(&self) -> Option<(u32, u32)> {
        self.provenance
            .reasoning
            .as_ref()
            .map(|r| (r.answer_start_token, r.answer_start_char))
    }

    /// Prompt tokens the engine's prefix cache served.
    pub fn cached_prompt_tokens(&self) -> u32 {
        self.usage.cached_prompt_tokens
    }

    /// The candidates whose re-check passed (or that had nothing to check).
    pub fn valid_candidates(&self) -> Vec<&Candidate> {
        self.candidates
            .iter()
            .filter(|c| {
                let verdict = c.provenance.as_ref().and_then(|p| p.check.as_ref());
                matches!(
                    verdict.map(|v| v.verdict()),
                    Some(CheckVerdict::Satisfied | CheckVerdict::Unconstrained)
                )
            })
            .collect()
    }

    /// For example `"END_OF_SEQUENCE"` or `"MAX_TOKENS"`.
    pub fn finish_reason_name(&self) -> &'static str {
        let name = self.finish_reason.as_str_name();
        name.strip_prefix("FINISH_REASON_").unwrap_or(name)
    }

    /// The model that generated, from provenance.
    pub fn model_id(&self) -> &str {
        &self.provenance.model_id
    }

    /// The server's re-check of the output, for example `"SATISFIED"`.
    pub fn check_verdict(&self) -> &'static str {
        let verdict = self
            .provenance
            .check
            .as_ref()
            .map_or(CheckVerdict::Unspecified, |c| c.verdict());
        let name = verdict.as_str_name();
        name.strip_prefix("CHECK_VERDICT_").unwrap_or(name)
    }

    /// The text parsed as JSON (for a JSON-schema-constrained generation).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_and_response_give_the_same_result() {
        let provenance = Provenance {
            request_id: "r1".into(),
            model_id: "m".into(),
            ..Provenance::default()
        };
        let response = GenerateResponse {
            request_id: "r1".into(),
            text: "{\"a\": 1}".into(),
            token_ids: vec![1, 2],
            finish_reason: FinishReason::EndOfSequence.into(),
            usage: Some(Usage::default()),
            provenance: Some(provenance.clone()),
            candidates: vec![Candidate {
                index: 0,
                text: "{\"a\": 1}".into(),
                token_ids: vec![1, 2],
                finish_reason: FinishReason::EndOfSequence.into(),
                usage: Some(Usage::default()),
                provenance: Some(provenance.clone()),
                logprobs: vec![],
                reasoning_text: "hm".into(),
            }],
            logprobs: vec![],
            prompt_logprobs: vec![],
            reasoning_text: "hm".into(),
        };
        let chunks = [
            TokenChunk {
                text: "{\"a\"".into(),
                token_ids: vec![1],
                reasoning_text: "hm".into(),
                ..TokenChunk::default()
            },
            TokenChunk {
                text: ": 1}".into(),
                token_ids: vec![2],
                ..TokenChunk::default()
            },
        ];
        let finished = GenerationFinished {
            finish_reason: FinishReason::EndOfSequence.into(),
            usage: Some(Usage::default()),
            provenance: Some(provenance),
            ..GenerationFinished::default()
        };
        let from_stream = GenerationResult::from_stream(None, &chunks, finished);
        assert_eq!(from_stream, GenerationResult::from_response(response));
        assert_eq!(from_stream.finish_reason_name(), "END_OF_SEQUENCE");
        assert_eq!(from_stream.model_id(), "m");
        assert_eq!(from_stream.check_verdict(), "UNSPECIFIED");
        let value: serde_json::Value = from_stream.json().unwrap();
        assert_eq!(value["a"], 1);
        assert_eq!(from_stream.reasoning_text, "hm");
        assert_eq!(from_stream.answer_start(), None);
    }

    #[test]
    fn candidates_from_interleaved_chunks() {
        let chunk = |index: u32, text: &str, id: u32| TokenChunk {
            text: text.into(),
            token_ids: vec![id],
            candidate_index: index,
            ..TokenChunk::default()
        };
        let finished = |index: u32| GenerationFinished {
            candidate_index: index,
            finish_reason: FinishReason::MaxTokens.into(),
            ..GenerationFinished::default()
        };
        let chunks = [chunk(1, "b", 2), chunk(0, "a", 1), chunk(1, "c", 3)];
        let result =
            GenerationResult::from_stream_candidates(None, &chunks, vec![finished(1), finished(0)]);
        assert_eq!(result.candidates.len(), 2);
        assert_eq!(result.text, "a");
        assert_eq!(result.candidates[1].text, "bc");
        assert_eq!(result.candidates[1].token_ids, [2, 3]);
        assert_eq!(result.finish_reason_name(), "MAX_TOKENS");
        assert!(result.valid_candidates().is_empty());
    }
}
