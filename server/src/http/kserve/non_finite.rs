//! Triton reads request JSON with rapidjson's NaN-and-infinity extension: `NaN`, `Inf` and
//! `Infinity`, each with an optional `-`, are numbers there (`tritonclient.http` sends them for a
//! float array holding them, as Python's `json` writes). serde_json refuses them, so a body it
//! could not parse and that holds such tokens is read again with each token rewritten in place,
//! at the same length, as a string that only the numeric readers of that body take back as the
//! number: error offsets stay those of the client's text.

/// `NaN` as rewritten (3 bytes: `"N"`).
const NAN: &[u8] = b"\"N\"";
/// `-NaN` (4 bytes).
const NEG_NAN: &[u8] = b"\"-N\"";
/// `Inf`, and `Infinity` padded with spaces.
const INF: &[u8] = b"\"I\"";
const NEG_INF: &[u8] = b"\"-I\"";

/// The value of a rewritten token, read back as a string.
pub fn sentinel_value(text: &str) -> Option<f64> {
    match text {
        "N" => Some(f64::NAN),
        "-N" => Some(-f64::NAN),
        "I" => Some(f64::INFINITY),
        "-I" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

/// `json` with every `NaN`, `Inf` and `Infinity` (optionally signed) outside strings rewritten as
/// its string stand-in; `None` when it holds none, so there is nothing to read again.
pub fn rewrite(json: &[u8]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    let (mut at, mut in_string, mut escaped) = (0, false, false);
    while at < json.len() {
        let byte = json[at];
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            at += 1;
            continue;
        }
        if byte == b'"' {
            in_string = true;
            at += 1;
            continue;
        }
        let negative = byte == b'-';
        let token = &json[at + usize::from(negative)..];
        let found = if token.starts_with(b"NaN") {
            Some((3, if negative { NEG_NAN } else { NAN }))
        } else if token.starts_with(b"Infinity") {
            Some((8, if negative { NEG_INF } else { INF }))
        } else if token.starts_with(b"Inf") {
            Some((3, if negative { NEG_INF } else { INF }))
        } else {
            None
        };
        match found {
            Some((length, stand_in)) => {
                let length = length + usize::from(negative);
                let out = out.get_or_insert_with(|| json.to_vec());
                let target = &mut out[at..at + length];
                target.fill(b' ');
                target[..stand_in.len()].copy_from_slice(stand_in);
                at += length;
            }
            None => at += 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(json: &str) -> Option<String> {
        rewrite(json.as_bytes()).map(|out| String::from_utf8(out).expect("utf-8"))
    }

    #[test]
    fn every_token_is_rewritten_in_place_at_the_same_length() {
        let json = r#"{"data":[NaN,-NaN,Inf,-Inf,Infinity,-Infinity,1]}"#;
        let out = rewritten(json).expect("rewritten");
        assert_eq!(out.len(), json.len());
        assert_eq!(out, r#"{"data":["N","-N","I","-I","I"     ,"-I"     ,1]}"#);
        let parsed: serde_json::Value = serde_json::from_str(&out).expect("JSON now");
        let values: Vec<f64> = parsed["data"]
            .as_array()
            .expect("array")
            .iter()
            .take(6)
            .map(|v| sentinel_value(v.as_str().expect("str")).expect("one"))
            .collect();
        assert!(values[0].is_nan() && values[1].is_nan());
        assert_eq!(&values[2..], &[f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY]);
    }

    #[test]
    fn strings_and_plain_json_are_left_alone() {
        assert_eq!(rewritten(r#"{"a":"NaN Infinity \" NaN","b":[1,-2]}"#), None);
        assert_eq!(rewritten(r#"{"a":"x\\","b":NaN}"#).as_deref(), Some(r#"{"a":"x\\","b":"N"}"#));
        // What rapidjson refuses stays refused: the rewrite leaves JSON that does not parse.
        for bad in ["[nan]", "[NaN1]", "[Infinit]"] {
            let out = rewritten(bad).unwrap_or_else(|| bad.to_string());
            assert!(serde_json::from_str::<serde_json::Value>(&out).is_err(), "{bad} -> {out}");
        }
    }
}
