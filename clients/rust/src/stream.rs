//! The event stream of a streaming generation.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_core::Stream;

use crate::error::{Error, Result};
use crate::pb::generate_stream_response::Event;
use crate::pb::{GenerateStreamResponse, GenerationFinished, GenerationStarted, TokenChunk};
use crate::result::GenerationResult;

/// One event of a streaming generation: `Started`, then `Chunk`s, then one
/// `Finished` per candidate (with `SamplingParams.n` above 1 the candidates'
/// chunks interleave, tagged with `candidate_index`).
#[derive(Clone, Debug, PartialEq)]
pub enum GenerationEvent {
    /// The request was accepted and its constraints compiled.
    Started(GenerationStarted),
    /// Some generated tokens and their text.
    Chunk(TokenChunk),
    /// A candidate finished, with its usage and provenance (boxed: it is much
    /// larger than the other events). The stream ends after the last one.
    Finished(Box<GenerationFinished>),
}

/// The events of a `GenerateStream` call, as a [`Stream`].
///
/// Dropping it cancels the call: the server aborts the generation.
#[derive(Debug)]
pub struct GenerationStream {
    inner: tonic::Streaming<GenerateStreamResponse>,
    deadline: Option<Instant>,
}

impl GenerationStream {
    pub(crate) fn new(
        inner: tonic::Streaming<GenerateStreamResponse>,
        deadline: Option<Instant>,
    ) -> Self {
        Self { inner, deadline }
    }

    /// The next event, or `None` once the stream has ended; a convenience
    /// for callers without `StreamExt`.
    pub async fn message(&mut self) -> Result<Option<GenerationEvent>> {
        match self.inner.message().await {
            Ok(Some(response)) => convert(response).map(Some),
            Ok(None) => Ok(None),
            Err(status) => Err(Error::from_call_status(status, self.deadline)),
        }
    }

    /// Reads the stream to its end and returns the whole generation, every
    /// candidate included (Python's `GenerationStream.collect()`); fails when
    /// a candidate the `Started` event announced did not finish.
    pub async fn collect(mut self) -> Result<GenerationResult> {
        let mut started: Option<GenerationStarted> = None;
        let mut chunks = Vec::new();
        let mut finals = Vec::new();
        while let Some(event) = self.message().await? {
            match event {
                GenerationEvent::Started(event) => started = Some(event),
                GenerationEvent::Chunk(chunk) => chunks.push(chunk),
                GenerationEvent::Finished(finished) => finals.push(*finished),
            }
        }
        let expected = started.as_ref().map_or(1, |s| s.candidates.max(1)) as usize;
        if finals.len() < expected {
            return Err(Error::protocol(
                "stream ended without a Finished event for every candidate",
            ));
        }
        Ok(GenerationResult::from_stream_candidates(
            started.as_ref(),
            &chunks,
            finals,
        ))
    }

    /// Reads the stream to its end and returns candidate 0's whole text and
    /// its `Finished` event.
    pub async fn collect_text(mut self) -> Result<(String, GenerationFinished)> {
        let mut text = String::new();
        let mut first = None;
        while let Some(event) = self.message().await? {
            match event {
                GenerationEvent::Started(_) => {}
                GenerationEvent::Chunk(chunk) if chunk.candidate_index == 0 => {
                    text.push_str(&chunk.text);
                }
                GenerationEvent::Chunk(_) => {}
                GenerationEvent::Finished(finished) if finished.candidate_index == 0 => {
                    first = Some(*finished);
                }
                GenerationEvent::Finished(_) => {}
            }
        }
        first
            .map(|finished| (text, finished))
            .ok_or_else(|| Error::protocol("stream ended without a Finished event"))
    }
}

fn convert(response: GenerateStreamResponse) -> Result<GenerationEvent> {
    match response.event {
        Some(Event::Started(started)) => Ok(GenerationEvent::Started(started)),
        Some(Event::Chunk(chunk)) => Ok(GenerationEvent::Chunk(chunk)),
        Some(Event::Finished(finished)) => Ok(GenerationEvent::Finished(Box::new(finished))),
        None => Err(Error::protocol("stream event with no event set")),
    }
}

impl Stream for GenerationStream {
    type Item = Result<GenerationEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let deadline = self.deadline;
        Pin::new(&mut self.inner).poll_next(cx).map(|item| {
            item.map(|result| {
                result
                    .map_err(|status| Error::from_call_status(status, deadline))
                    .and_then(convert)
            })
        })
    }
}
