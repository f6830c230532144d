//! One page of a list of items as OpenAI's list endpoints give it (input items of a response, a
//! conversation's items): `order`, `limit` and `after`, and the list object.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::BridgeError;

const MAX_LIMIT: usize = 100;
const DEFAULT_LIMIT: usize = 20;

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    limit: Option<usize>,
    order: Option<String>,
    after: Option<String>,
}

/// One page of `items` (oldest first) as OpenAI lists them: newest first unless `order` is
/// `asc`, `limit` (1 to 100, 20) after the item `after` names (in `whose` items).
pub(super) fn page(mut items: Vec<Value>, query: &ListQuery, whose: &str) -> Result<Value, BridgeError> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(BridgeError::field("limit", format!("must be between 1 and {MAX_LIMIT}")));
    }
    match query.order.as_deref() {
        None | Some("desc") => items.reverse(),
        Some("asc") => {}
        Some(_) => return Err(BridgeError::field("order", "must be 'asc' or 'desc'")),
    }
    let start = match &query.after {
        Some(after) => match items.iter().position(|item| item["id"].as_str() == Some(after)) {
            Some(at) => at + 1,
            None => return Err(BridgeError::field("after", format!("no item '{after}' in this {whose}"))),
        },
        None => 0,
    };
    let page: Vec<Value> = items.iter().skip(start).take(limit).cloned().collect();
    let has_more = start + page.len() < items.len();
    Ok(list_object(page, has_more))
}

/// A list object of `data`.
pub(super) fn list_object(data: Vec<Value>, has_more: bool) -> Value {
    json!({
        "object": "list",
        "first_id": data.first().map(|item| item["id"].clone()),
        "last_id": data.last().map(|item| item["id"].clone()),
        "has_more": has_more,
        "data": data,
    })
}
