use bytes::Bytes;
use tritium_tensor::DataType;

use super::*;

fn input(name: &str, values: &[f32]) -> Tensor {
    Tensor::from_slice(name, vec![values.len() as i64], values)
}

fn key_of(inputs: &[Tensor], parameters: &Parameters, outputs: &[&str]) -> CacheKey {
    let outputs: Vec<String> = outputs.iter().map(|s| s.to_string()).collect();
    request_key("m", 1, inputs, parameters, &outputs)
}

fn param(key: &str, value: ParamValue) -> Parameters {
    vec![(key.to_string(), value)]
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}

#[test]
fn the_key_covers_every_field_that_changes_the_answer() {
    let base = [input("A", &[1.0, 2.0]), input("B", &[3.0])];
    let key = key_of(&base, &Vec::new(), &[]);
    assert_eq!(key, key_of(&base, &Vec::new(), &[]), "the key is a function of the request");

    let mut byte = base.clone();
    let mut data = byte[0].data.to_vec();
    data[7] ^= 1;
    byte[0].data = Bytes::from(data);
    assert_ne!(key, key_of(&byte, &Vec::new(), &[]), "one input byte");

    let mut named = base.clone();
    named[1].name = "C".into();
    assert_ne!(key, key_of(&named, &Vec::new(), &[]), "an input's name");

    let mut shaped = base.clone();
    shaped[0].shape = vec![1, 2];
    assert_ne!(key, key_of(&shaped, &Vec::new(), &[]), "an input's shape");

    let mut typed = base.clone();
    typed[0].datatype = DataType::Int32;
    assert_ne!(key, key_of(&typed, &Vec::new(), &[]), "an input's datatype");

    assert_ne!(key, request_key("other", 1, &base, &Vec::new(), &[]), "the model");
    assert_ne!(key, request_key("m", 2, &base, &Vec::new(), &[]), "the version");

    let custom = key_of(&base, &param("custom", ParamValue::Int64(1)), &[]);
    assert_ne!(key, custom, "a custom parameter");
    assert_ne!(custom, key_of(&base, &param("custom", ParamValue::Int64(2)), &[]), "its value");
    assert_ne!(custom, key_of(&base, &param("custom", ParamValue::String("1".into())), &[]), "its type");

    assert_ne!(key, key_of(&base, &Vec::new(), &["OUT1"]), "the outputs asked for");
}

#[test]
fn the_key_ignores_what_does_not_change_the_answer() {
    let base = [input("A", &[1.0, 2.0]), input("B", &[3.0])];
    let key = key_of(&base, &Vec::new(), &[]);
    let reversed = [base[1].clone(), base[0].clone()];
    assert_eq!(key, key_of(&reversed, &Vec::new(), &[]), "input order");
    for (name, value) in [
        ("priority", ParamValue::Uint64(3)),
        ("timeout", ParamValue::Int64(1000)),
        ("binary_data_output", ParamValue::Bool(true)),
        ("headers", ParamValue::String("x".into())),
    ] {
        assert_eq!(key, key_of(&base, &param(name, value), &[]), "{name}");
    }
    let two = vec![("a".to_string(), ParamValue::Bool(true)), ("b".to_string(), ParamValue::Int64(1))];
    let swapped = vec![two[1].clone(), two[0].clone()];
    assert_eq!(key_of(&base, &two, &[]), key_of(&base, &swapped, &[]), "parameter order");
    assert_eq!(key_of(&base, &Vec::new(), &["X", "Y"]), key_of(&base, &Vec::new(), &["Y", "X", "Y"]), "output order");
}

#[test]
fn length_prefixes_keep_neighbouring_fields_apart() {
    let a = Tensor::new("AB", DataType::Uint8, vec![1], Bytes::from_static(b"C"));
    let b = Tensor::new("A", DataType::Uint8, vec![1], Bytes::from_static(b"BC"));
    assert_ne!(key_of(&[a], &Vec::new(), &[]), key_of(&[b], &Vec::new(), &[]));
}

#[test]
fn sequence_requests_are_not_cacheable() {
    assert!(is_cacheable(&RequestOptions::default()));
    let sequence = RequestOptions { sequence_id: Some(crate::params::SequenceId::Number(7)), ..Default::default() };
    assert!(!is_cacheable(&sequence));
    assert!(!is_cacheable(&RequestOptions { sequence_start: true, ..Default::default() }));
}

#[test]
fn decoupled_and_sequence_models_are_refused_with_tritons_words() {
    use tritium_proto::inference::model_config::SchedulingChoice;
    use tritium_proto::inference::{ModelResponseCache, ModelSequenceBatching, ModelTransactionPolicy};
    let mut config = ModelConfig { name: "m".into(), ..Default::default() };
    config.model_transaction_policy = Some(ModelTransactionPolicy { decoupled: true });
    assert_eq!(refusal(&config), None, "the cache is off");
    config.response_cache = Some(ModelResponseCache { enable: true });
    assert_eq!(
        refusal(&config).as_deref(),
        Some(
            "Response Cache does not currently support model m with 'decoupled' transaction policy. Please disable the response cache."
        )
    );
    config.model_transaction_policy = None;
    config.scheduling_choice = Some(SchedulingChoice::SequenceBatching(ModelSequenceBatching::default()));
    assert!(refusal(&config).is_some_and(|m| m.contains("with sequence batching scheduler")));
}

#[test]
fn the_local_cache_is_bounded_by_bytes() {
    block_on(async {
        let entry = |i: u32| vec![Tensor::new("OUT", DataType::Uint8, vec![1000], Bytes::from(vec![i as u8; 1000]))];
        let one = charged_bytes(&entry(0));
        let cache = LocalCache::new(one * 10);
        let keys: Vec<CacheKey> = (0..50).map(|i| key_of(&[input("A", &[i as f32])], &Vec::new(), &[])).collect();
        for (i, key) in keys.iter().enumerate() {
            cache.insert(key, &entry(i as u32)).await;
            assert!(cache.weight() <= one * 10, "held {} bytes after {i} inserts", cache.weight());
        }
        assert!(cache.len() <= 10 && !cache.is_empty(), "{} entries", cache.len());
        let last = cache.lookup(&keys[49]).await.expect("the newest entry stays");
        assert_eq!(last[0].data[0], 49);
        let gauges = cache.gauges().expect("a local cache keeps gauges");
        assert!(gauges.evictions >= 40, "{gauges:?}");
        assert_eq!((gauges.hits, gauges.misses), (1, 0));
    });
}

#[test]
fn an_entry_larger_than_the_cache_is_not_stored() {
    block_on(async {
        let cache = LocalCache::new(512);
        let key = key_of(&[input("A", &[1.0])], &Vec::new(), &[]);
        let big = [Tensor::new("OUT", DataType::Uint8, vec![600], Bytes::from(vec![0u8; 600]))];
        cache.insert(&key, &big).await;
        assert!(cache.lookup(&key).await.is_none());
        assert_eq!(cache.weight(), 0);
    });
}

#[test]
fn cached_outputs_round_trip_and_foreign_bytes_are_a_miss() {
    let outputs = [
        Tensor::from_slice("OUT0", vec![2, 2], &[1f32, 2.0, 3.0, 4.0]),
        Tensor::new("OUT1", DataType::Bytes, vec![1], Bytes::from_static(b"\x02\x00\x00\x00hi")),
    ];
    let encoded = encode_outputs(&outputs);
    let decoded = decode_outputs(Bytes::from(encoded.clone())).expect("round trip");
    assert_eq!(decoded.len(), 2);
    for (a, b) in decoded.iter().zip(&outputs) {
        assert_eq!((&a.name, a.datatype, &a.shape, &a.data), (&b.name, b.datatype, &b.shape, &b.data));
    }
    for cut in 0..encoded.len() {
        assert!(decode_outputs(Bytes::copy_from_slice(&encoded[..cut])).is_none(), "cut at {cut}");
    }
    let mut extra = encoded.clone();
    extra.push(0);
    assert!(decode_outputs(Bytes::from(extra)).is_none(), "trailing bytes");
    let mut wrong_size = encoded;
    // OUT0's data length is the 8 bytes before its 16 data bytes.
    let at = 8 + 4 + 4 + 4 + 1 + 4 + 4 + 16;
    wrong_size[at] = 12;
    assert!(decode_outputs(Bytes::from(wrong_size)).is_none(), "data that does not fit the shape");
    assert!(decode_outputs(Bytes::from_static(b"not a cached response")).is_none());
}

#[test]
fn a_redis_that_is_down_is_a_miss() {
    block_on(async {
        // A port nothing listens on: bind one, then close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let settings = RedisSettings {
            host: "127.0.0.1".into(),
            port,
            user: None,
            password: Some("secret".into()),
            db: 0,
            connect_timeout: Some(std::time::Duration::from_millis(500)),
            socket_timeout: Some(std::time::Duration::from_millis(500)),
        };
        assert!(!format!("{settings:?}").contains("secret"));
        let cache = RedisCache::new(&settings).expect("settings");
        let key = key_of(&[input("A", &[1.0])], &Vec::new(), &[]);
        cache.insert(&key, &[input("OUT", &[1.0])]).await;
        assert!(cache.lookup(&key).await.is_none());
    });
}

#[test]
fn the_local_cache_keeps_its_own_copy_of_an_output_sliced_from_a_larger_buffer() {
    block_on(async {
        let buffer = Bytes::from(vec![7u8; 1 << 20]);
        let slice = [Tensor::new("OUT", DataType::Uint8, vec![4], buffer.slice(100..104))];
        let cache = LocalCache::new(4096);
        let key = key_of(&[input("A", &[1.0])], &Vec::new(), &[]);
        cache.insert(&key, &slice).await;
        let stored = cache.lookup(&key).await.expect("stored");
        assert_eq!(stored[0].data, slice[0].data);
        // Not a view into the 1 MiB buffer, which the entry would otherwise keep alive uncharged.
        assert_ne!(stored[0].data.as_ptr(), slice[0].data.as_ptr());
    });
}
