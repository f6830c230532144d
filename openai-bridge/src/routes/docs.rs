//! `GET /openapi.json`, generated from the handlers and their request and response types, and
//! Swagger UI at `/docs`, served from the copy compiled into the binary.

use utoipa::OpenApi;
use utoipa::openapi::OpenApi as Document;
use utoipa_swagger_ui::SwaggerUi;

use super::ApiSettings;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tritium: OpenAI and Anthropic API",
        description = "Language models served by Tritium through OpenAI's completions, chat, responses, embeddings and models \
            endpoints and Anthropic's messages. `nvext` carries Dynamo's request extensions."
    ),
    paths(
        super::chat::chat_completions,
        super::completions::completions,
        super::responses::create,
        super::responses::get,
        super::responses::delete,
        super::responses::cancel,
        super::input_items::list,
        super::embeddings::embeddings,
        super::list_models,
        super::get_model,
        super::messages::messages,
        super::messages::count_tokens,
    ),
    tags((name = "openai", description = "OpenAI's API"), (name = "anthropic", description = "Anthropic's Messages API (--enable-anthropic-api)"))
)]
struct ApiDoc;

/// The document for the routes as `settings` mounts them.
pub(super) fn document(settings: &ApiSettings) -> Document {
    let mut document = ApiDoc::openapi();
    let paths = &settings.paths;
    let moves = [
        ("/v1/chat/completions", paths.chat.clone()),
        ("/v1/completions", paths.completions.clone()),
        ("/v1/responses", paths.responses.clone()),
        ("/v1/responses/{id}", format!("{}/{{id}}", paths.responses)),
        ("/v1/embeddings", paths.embeddings.clone()),
        ("/v1/models", paths.models.clone()),
        ("/v1/models/{model}", format!("{}/{{model}}", paths.models)),
        ("/v1/messages", paths.messages.clone()),
        ("/v1/messages/count_tokens", format!("{}/count_tokens", paths.messages)),
    ];
    let mut moved = utoipa::openapi::path::Paths::new();
    for (default, path) in moves {
        let anthropic = default.starts_with("/v1/messages");
        if let Some(item) = document.paths.paths.remove(default)
            && (settings.anthropic || !anthropic)
        {
            moved.paths.insert(path, item);
        }
    }
    document.paths = moved;
    document
}

/// Swagger UI at `/docs` over the document at `/openapi.json`.
pub(super) fn routes(settings: &ApiSettings) -> axum::Router {
    SwaggerUi::new("/docs").url("/openapi.json", document(settings)).into()
}
