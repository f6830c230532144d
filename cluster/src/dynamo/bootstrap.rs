//! Prefill workers with a bootstrap rendezvous (SGLang's, and `dynamo.mocker --bootstrap-ports`):
//! the decode worker fetches the prompt's blocks from the prefill worker's rendezvous while the
//! prefill runs, so the frontend does not wait for the prefill's answer. As Dynamo's frontend, it
//! names a room and a handoff both requests carry (`bootstrap_info`), sends the prefill (one
//! token), reads its stream to the end in the background (the prefill worker holds its blocks for
//! the decode worker until the handoff completes, and a dropped stream would cancel it, also after
//! the client went away), and sends the decode request at once.

use std::time::Duration;

use serde_json::{Value as Json, json};

use super::items::{ItemError, Items};
use crate::discovery::dynamo_target::BootstrapEndpoint;

/// The longest a prefill stream is read after its decode request went out: the prefill worker
/// holds it open until the decode worker took the blocks over (Dynamo's mocker gives a handoff 30 s
/// by default), so past this it has failed anyway.
pub const PREFILL_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// The `bootstrap_info` both halves of one request carry: the rendezvous, a random room (below
/// 2^63, as Dynamo draws it) and a fresh handoff id, a version-4 UUID (written as its 16 bytes in
/// msgpack, where Dynamo's workers read it as binary).
pub fn bootstrap_info(endpoint: &BootstrapEndpoint) -> Json {
    let room = rand::random::<u64>() >> 1;
    let mut id = rand::random::<[u8; 16]>();
    id[6] = (id[6] & 0x0f) | 0x40; // version 4
    id[8] = (id[8] & 0x3f) | 0x80; // RFC 4122 variant
    json!({
        "bootstrap_host": endpoint.host,
        "bootstrap_port": endpoint.port,
        "bootstrap_room": room,
        "handoff_id": uuid_text(&id),
    })
}

fn uuid_text(id: &[u8; 16]) -> String {
    let hex: String = id.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// Reads a bootstrapped prefill's stream to its end, so the prefill worker finishes the handoff;
/// what went wrong is logged (the decode worker reports its side of it to the client).
pub async fn drain(items: Result<Items, ItemError>, worker: String, model: String) {
    let read = async {
        let mut items = items?;
        while items.next::<Json>().await?.is_some() {}
        Ok::<(), ItemError>(())
    };
    match tokio::time::timeout(PREFILL_DRAIN_TIMEOUT, read).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%worker, model, ?error, "a bootstrapped prefill failed"),
        Err(_) => tracing::warn!(%worker, model, "a bootstrapped prefill did not end within {PREFILL_DRAIN_TIMEOUT:?}"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn each_request_gets_its_own_version_4_handoff_id_and_a_room_under_2_to_the_63() {
        let endpoint = BootstrapEndpoint { host: "10.0.0.5".into(), port: 4242 };
        let info = bootstrap_info(&endpoint);
        let text = info["handoff_id"].as_str().unwrap();
        assert_eq!((text.len(), &text[14..15], &text[8..9]), (36, "4", "-"));
        assert!(info["bootstrap_room"].as_u64().unwrap() <= i64::MAX as u64);
        assert_eq!((info["bootstrap_host"].as_str(), info["bootstrap_port"].as_u64()), (Some("10.0.0.5"), Some(4242)));
        assert_ne!(info["handoff_id"], bootstrap_info(&endpoint)["handoff_id"]);
    }

    #[test]
    fn in_msgpack_the_handoff_id_is_its_16_bytes() {
        let info = bootstrap_info(&BootstrapEndpoint { host: "h".into(), port: 1 });
        let text = info["handoff_id"].as_str().unwrap().replace('-', "");
        let body = json!({"model": "m", "bootstrap_info": info});
        let packed = crate::dynamo::protocol::encode_body(&body, crate::dynamo::protocol::PayloadCodec::Msgpack);
        let value = rmpv::decode::read_value(&mut &packed[..]).unwrap();
        let info = value.as_map().unwrap().iter().find(|(k, _)| k.as_str() == Some("bootstrap_info")).unwrap().1.clone();
        let id = info.as_map().unwrap().iter().find(|(k, _)| k.as_str() == Some("handoff_id")).unwrap().1.clone();
        let hex: String = id.as_slice().unwrap().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, text);
    }
}
