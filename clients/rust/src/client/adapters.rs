//! LoRA adapter calls: load, unload and list the adapters a
//! [`GenerationRequest`](crate::pb::GenerationRequest) selects with
//! `with_adapter`. Loading and unloading need an admin key when the server
//! has API keys.

use super::Client;
use crate::error::Result;
use crate::pb::{
    AdapterInfo, ListAdaptersRequest, ListAdaptersResponse, LoadAdapterRequest,
    UnloadAdapterRequest,
};
use crate::retry::CallKind;

impl Client {
    /// Loads the LoRA adapter in the server-side folder `path` (absolute)
    /// under `name`.
    pub async fn load_adapter(
        &self,
        name: impl Into<String>,
        path: impl Into<String>,
    ) -> Result<AdapterInfo> {
        let message = LoadAdapterRequest {
            name: name.into(),
            path: path.into(),
        };
        let inference = &self.inference;
        let response = self
            .call(CallKind::Generate, message, |r| {
                let mut stub = inference.clone();
                async move { stub.load_adapter(r).await }
            })
            .await?;
        Ok(response.adapter.unwrap_or_default())
    }

    /// Unloads a LoRA adapter; later generations naming it fail with
    /// NOT_FOUND.
    pub async fn unload_adapter(&self, name: impl Into<String>) -> Result<AdapterInfo> {
        let message = UnloadAdapterRequest { name: name.into() };
        let inference = &self.inference;
        let response = self
            .call(CallKind::Generate, message, |r| {
                let mut stub = inference.clone();
                async move { stub.unload_adapter(r).await }
            })
            .await?;
        Ok(response.adapter.unwrap_or_default())
    }

    /// The loaded LoRA adapters and the server's LoRA limits.
    pub async fn list_adapters(&self) -> Result<ListAdaptersResponse> {
        let inference = &self.inference;
        self.call(CallKind::Idempotent, ListAdaptersRequest {}, |r| {
            let mut stub = inference.clone();
            async move { stub.list_adapters(r).await }
        })
        .await
    }
}
