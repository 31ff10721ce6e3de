//! `manifest.json`: the entry point the widget fetches first. It names the model and
//! index files (content-addressed, so browsers may cache them forever) with their sizes
//! and sha256, which the widget checks before use.

use serde::{Deserialize, Serialize};

use crate::model::sha256_hex;

/// Version of the manifest's JSON layout.
pub const MANIFEST_FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub model: FileEntry,
    /// The index, or for a ranged catalog its head.
    pub index: FileEntry,
    /// The lists file of a ranged catalog, fetched list by list with Range requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lists: Option<FileEntry>,
    pub products: usize,
    pub dims: usize,
    pub arch: String,
    /// Folder of the product thumbnails, relative to the manifest, ending in `/`.
    pub thumbnails: String,
}

/// A file next to the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name relative to the manifest.
    pub file: String,
    pub bytes: u64,
    /// Lower-case hex sha256 of the file's bytes.
    pub sha256: String,
}

impl FileEntry {
    pub fn describe(file: impl Into<String>, content: &[u8]) -> FileEntry {
        FileEntry {
            file: file.into(),
            bytes: content.len() as u64,
            sha256: sha256_hex(content),
        }
    }

    /// `content` as `<stem>-<first 8 hex digits of its sha256>.<extension>`: the content-addressed
    /// names the widget's service worker may cache for good.
    pub fn content_named(stem: &str, extension: &str, content: &[u8]) -> FileEntry {
        let sha256 = sha256_hex(content);
        FileEntry {
            file: format!("{stem}-{}.{extension}", &sha256[..8]),
            bytes: content.len() as u64,
            sha256,
        }
    }
}
