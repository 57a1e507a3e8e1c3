//! [`GenerationResult`]: a finished generation, the same type as the Python
//! client's `ananke.GenerationResult`.

use crate::pb::{
    CheckVerdict, FinishReason, GenerateResponse, GenerationFinished, GenerationStarted,
    Provenance, TokenChunk, Usage,
};

/// A finished generation: the text, why it stopped, usage and provenance.
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
        }
    }

    /// From a stream's events.
    pub fn from_stream(
        started: Option<&GenerationStarted>,
        chunks: &[TokenChunk],
        finished: GenerationFinished,
    ) -> Self {
        let provenance = finished.provenance.clone().unwrap_or_default();
        let request_id = started
            .map(|s| s.request_id.clone())
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| provenance.request_id.clone());
        Self {
            request_id,
            text: chunks.iter().map(|c| c.text.as_str()).collect(),
            token_ids: chunks
                .iter()
                .flat_map(|c| c.token_ids.iter().copied())
                .collect(),
            finish_reason: finished.finish_reason(),
            usage: finished.usage.unwrap_or_default(),
            provenance,
        }
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
        };
        let chunks = [
            TokenChunk {
                text: "{\"a\"".into(),
                token_ids: vec![1],
            },
            TokenChunk {
                text: ": 1}".into(),
                token_ids: vec![2],
            },
        ];
        let finished = GenerationFinished {
            finish_reason: FinishReason::EndOfSequence.into(),
            usage: Some(Usage::default()),
            provenance: Some(provenance),
        };
        let from_stream = GenerationResult::from_stream(None, &chunks, finished);
        assert_eq!(from_stream, GenerationResult::from_response(response));
        assert_eq!(from_stream.finish_reason_name(), "END_OF_SEQUENCE");
        assert_eq!(from_stream.model_id(), "m");
        assert_eq!(from_stream.check_verdict(), "UNSPECIFIED");
        let value: serde_json::Value = from_stream.json().unwrap();
        assert_eq!(value["a"], 1);
    }
}
