//! An output's `label_filename`: one class label per line, read once when the model loads, for
//! the `classification` output parameter (`score:index:label`).
//!
//! As in Triton the file is `<model folder>/<label_filename>` and each line (up to a `\n`, the
//! last one without it too) is the label of the class of that index, bytes as they are. Unlike
//! Triton the name must stay inside the model folder (a client's config override could name any
//! file otherwise) and the file is bounded: [`MAX_LABEL_FILE_BYTES`] and [`MAX_LABELS`] lines.

use std::path::Path;

use bytes::Bytes;

use crate::model_files::{confined, read_model_file};

/// The largest label file a model may name (ImageNet's 1,000 labels take about 10 KiB).
pub const MAX_LABEL_FILE_BYTES: usize = 64 << 20;
/// The most lines a label file may have.
pub const MAX_LABELS: usize = 1_000_000;

/// The labels of one output, by class index.
#[derive(Clone, PartialEq, Eq)]
pub struct Labels {
    text: Bytes,
    /// Where each line starts and ends in `text` (without its `\n`).
    lines: Vec<(u32, u32)>,
}

impl std::fmt::Debug for Labels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Labels({} lines)", self.lines.len())
    }
}

impl Labels {
    /// Reads `named` (the config's `label_filename`) from `model_dir`, within the bounds. Errors
    /// name the file, never its contents.
    pub fn read(model_dir: Option<&Path>, named: &str) -> Result<Labels, String> {
        confined(named).map_err(|why| format!("label_filename {why}"))?;
        let text = read_model_file(model_dir, "", named, MAX_LABEL_FILE_BYTES)?;
        Labels::parse(text).map_err(|why| format!("'{named}' {why}"))
    }

    /// The label file as read (what [`Labels::parse`] takes back).
    pub fn text(&self) -> &Bytes {
        &self.text
    }

    /// Splits `text` into lines as `std::getline` does (a final line without `\n` counts, an
    /// empty tail after the last `\n` does not).
    pub fn parse(text: Bytes) -> Result<Labels, String> {
        if text.len() > MAX_LABEL_FILE_BYTES {
            return Err(format!("is larger than {MAX_LABEL_FILE_BYTES} bytes"));
        }
        let mut lines = Vec::new();
        let mut start = 0usize;
        while start < text.len() {
            if lines.len() == MAX_LABELS {
                return Err(format!("has more than {MAX_LABELS} lines"));
            }
            let end = text[start..].iter().position(|&b| b == b'\n').map_or(text.len(), |at| start + at);
            // Both fit in u32: the text is at most MAX_LABEL_FILE_BYTES.
            lines.push((start as u32, end as u32));
            start = end + 1;
        }
        Ok(Labels { text, lines })
    }

    /// The label of class `index`; None past the last line.
    pub fn get(&self, index: usize) -> Option<&[u8]> {
        self.lines.get(index).map(|&(start, end)| &self.text[start as usize..end as usize])
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_as_getline_splits_them() {
        let labels = Labels::parse(Bytes::from_static(b"TENCH\nGOLDFISH\r\n\nshark")).unwrap();
        assert_eq!(labels.len(), 4);
        assert_eq!(labels.get(0), Some(&b"TENCH"[..]));
        assert_eq!(labels.get(1), Some(&b"GOLDFISH\r"[..]), "bytes as they are");
        assert_eq!(labels.get(2), Some(&b""[..]));
        assert_eq!(labels.get(3), Some(&b"shark"[..]));
        assert_eq!(labels.get(4), None);
        assert_eq!(Labels::parse(Bytes::from_static(b"a\nb\n")).unwrap().len(), 2, "no empty line after the last newline");
        assert!(Labels::parse(Bytes::new()).unwrap().is_empty());
    }

    #[test]
    fn a_label_file_stays_in_the_model_folder_and_within_bounds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("labels.txt"), b"cat\ndog\n").unwrap();
        let labels = Labels::read(Some(dir.path()), "labels.txt").unwrap();
        assert_eq!(labels.get(1), Some(&b"dog"[..]));
        let outside = dir.path().join("secret");
        std::fs::write(&outside, b"top secret").unwrap();
        for named in ["../secret", "/etc/passwd", ""] {
            let error = Labels::read(Some(&dir.path().join("m")), named).unwrap_err();
            assert!(error.starts_with("label_filename "), "{error}");
            assert!(error.contains("must be a relative path inside the model folder"), "{error}");
        }
        assert_eq!(Labels::read(Some(dir.path()), "absent.txt").unwrap_err(), "'absent.txt' does not exist");
        let many = "q\n".repeat(MAX_LABELS + 1);
        std::fs::write(dir.path().join("many.txt"), &many).unwrap();
        let error = Labels::read(Some(dir.path()), "many.txt").unwrap_err();
        assert_eq!(error, format!("'many.txt' has more than {MAX_LABELS} lines"));
        assert!(!error.contains('q'), "errors never quote the file");
        let big = std::fs::File::create(dir.path().join("big.txt")).unwrap();
        big.set_len(MAX_LABEL_FILE_BYTES as u64 + 1).unwrap();
        let error = Labels::read(Some(dir.path()), "big.txt").unwrap_err();
        assert_eq!(error, format!("'big.txt' is larger than {MAX_LABEL_FILE_BYTES} bytes"));
    }
}
