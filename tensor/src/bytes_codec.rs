//! The KServe BYTES layout: each element is a 4-byte little-endian `u32` length followed by that
//! many bytes, concatenated with no padding or terminator.

use bytes::Bytes;

use crate::TensorError;

const PREFIX: usize = 4;

/// Encodes elements as 4-byte little-endian length + bytes, concatenated.
///
/// # Panics
///
/// If an element is longer than `u32::MAX` bytes, which the layout cannot express. Use
/// [`try_encode`] for elements of untrusted size.
pub fn encode<I, S>(items: I) -> Bytes
where
    I: IntoIterator<Item = S>,
    S: AsRef<[u8]>,
{
    match try_encode(items) {
        Ok(bytes) => bytes,
        Err(error) => panic!("bytes_codec::encode: {error}"),
    }
}

/// Like [`encode`], failing with [`TensorError::BytesElementTooLarge`] on an element longer than
/// `u32::MAX` bytes.
pub fn try_encode<I, S>(items: I) -> Result<Bytes, TensorError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<[u8]>,
{
    let items = items.into_iter();
    let mut out = Vec::with_capacity(items.size_hint().0.saturating_mul(PREFIX));
    for item in items {
        push(&mut out, item.as_ref())?;
    }
    Ok(Bytes::from(out))
}

/// Exact encoded size of `items`, `None` if it overflows `usize`.
pub fn encoded_len<S: AsRef<[u8]>>(items: &[S]) -> Option<usize> {
    items.iter().try_fold(0usize, |total, item| total.checked_add(PREFIX)?.checked_add(item.as_ref().len()))
}

/// Appends one element (prefix and body) to `out`.
pub(crate) fn push(out: &mut Vec<u8>, item: &[u8]) -> Result<(), TensorError> {
    let len = u32::try_from(item.len()).map_err(|_| TensorError::BytesElementTooLarge { len: item.len() })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(item);
    Ok(())
}

/// Counts elements, failing on a truncated prefix or body ([`TensorError::TruncatedBytes`]).
pub fn count(data: &[u8]) -> Result<usize, TensorError> {
    let mut iter = iter(data);
    let mut n = 0;
    while let Some(element) = iter.next_range() {
        element?;
        n += 1;
    }
    Ok(n)
}

/// Checks that `data` holds exactly `expected` elements, walking them in order as Triton does:
/// a length prefix cut short is [`TensorError::TruncatedBytesPrefix`]; the first element past
/// `expected` ends the walk with an [`TensorError::ElementCountMismatch`] counting it; a body cut
/// short is [`TensorError::TruncatedBytes`] (Triton takes that one); fewer elements is the
/// mismatch at the end.
pub fn check_count(data: &[u8], expected: usize) -> Result<(), TensorError> {
    let mut offset = 0;
    let mut seen = 0usize;
    while let Some(rest) = data.get(offset..).filter(|rest| !rest.is_empty()) {
        let Some((prefix, body)) = rest.split_first_chunk::<PREFIX>() else {
            return Err(TensorError::TruncatedBytesPrefix { offset, available: rest.len() });
        };
        seen += 1;
        if seen > expected {
            return Err(TensorError::ElementCountMismatch { expected, actual: seen });
        }
        let len = usize::try_from(u32::from_le_bytes(*prefix)).unwrap_or(usize::MAX);
        if len > body.len() {
            return Err(TensorError::TruncatedBytes { offset });
        }
        offset += PREFIX + len;
    }
    match seen == expected {
        true => Ok(()),
        false => Err(TensorError::ElementCountMismatch { expected, actual: seen }),
    }
}

/// Iterates over the elements of `data`. A truncated element yields one
/// [`TensorError::TruncatedBytes`] and ends the iteration.
pub fn iter(data: &[u8]) -> BytesIter<'_> {
    BytesIter { data, offset: 0 }
}

/// Iterator over BYTES elements; see [`iter`].
#[derive(Debug, Clone)]
pub struct BytesIter<'a> {
    data: &'a [u8],
    offset: usize,
}

impl BytesIter<'_> {
    /// Byte offset of the next element in the data.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The next element's body as a range of the data.
    fn next_range(&mut self) -> Option<Result<std::ops::Range<usize>, TensorError>> {
        let start = self.offset;
        let rest = self.data.get(start..).filter(|rest| !rest.is_empty())?;
        let parsed = rest.split_first_chunk::<PREFIX>().and_then(|(prefix, body)| {
            let len = usize::try_from(u32::from_le_bytes(*prefix)).ok()?;
            (len <= body.len()).then_some(len)
        });
        match parsed {
            Some(len) => {
                let body_start = start + PREFIX;
                self.offset = body_start + len;
                Some(Ok(body_start..self.offset))
            }
            None => {
                self.offset = self.data.len();
                Some(Err(TensorError::TruncatedBytes { offset: start }))
            }
        }
    }
}

impl<'a> Iterator for BytesIter<'a> {
    type Item = Result<&'a [u8], TensorError>;

    fn next(&mut self) -> Option<Self::Item> {
        let data = self.data;
        self.next_range().map(|range| range.map(|range| &data[range]))
    }
}

impl std::iter::FusedIterator for BytesIter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_little_endian_prefixes() {
        let data = encode(["ab", "", "xyz"]);
        assert_eq!(&data[..], b"\x02\0\0\0ab\0\0\0\0\x03\0\0\0xyz");
        assert_eq!(encoded_len(&["ab", "", "xyz"]), Some(data.len()));
        assert_eq!(encode(Vec::<Vec<u8>>::new()), Bytes::new());
        assert_eq!(try_encode([b"\x00\xFF".as_slice()]), Ok(Bytes::from_static(b"\x02\0\0\0\x00\xFF")));
    }

    #[test]
    fn decodes_what_it_encodes() {
        let items: Vec<Vec<u8>> = vec![b"hello".to_vec(), vec![], vec![0; 300], b"\x00\x01".to_vec()];
        let data = encode(&items);
        assert_eq!(count(&data), Ok(4));
        let decoded: Result<Vec<&[u8]>, _> = iter(&data).collect();
        assert_eq!(decoded.expect("valid"), items.iter().map(Vec::as_slice).collect::<Vec<_>>());
    }

    #[test]
    fn empty_data_has_no_elements() {
        assert_eq!(count(&[]), Ok(0));
        assert_eq!(iter(&[]).next(), None);
    }

    #[test]
    fn short_prefix_is_truncated() {
        for data in [&b"\x01"[..], b"\x01\0\0", b"\x01\0\0\0a\x00"] {
            let offset = if data.len() > 4 { 5 } else { 0 };
            assert_eq!(count(data), Err(TensorError::TruncatedBytes { offset }), "{data:?}");
        }
    }

    #[test]
    fn short_body_is_truncated() {
        assert_eq!(count(b"\x05\0\0\0abcd"), Err(TensorError::TruncatedBytes { offset: 0 }));
        assert_eq!(count(b"\x01\0\0\0a\x02\0\0\0b"), Err(TensorError::TruncatedBytes { offset: 5 }));
        assert_eq!(count(b"\xFF\xFF\xFF\xFFabc"), Err(TensorError::TruncatedBytes { offset: 0 }));
    }

    #[test]
    fn iteration_stops_after_an_error() {
        let mut it = iter(b"\x01\0\0\0a\x09\0\0\0b");
        assert_eq!(it.next(), Some(Ok(&b"a"[..])));
        assert_eq!(it.offset(), 5);
        assert_eq!(it.next(), Some(Err(TensorError::TruncatedBytes { offset: 5 })));
        assert_eq!(it.next(), None);
        assert_eq!(it.next(), None);
    }
}
