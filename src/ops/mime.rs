//! The `content_type` that a file's name declares, for jobs `enqueue` builds from paths.
//!
//! A declared type is a claim the worker checks: a type outside `ALLOWED_MIME_TYPES`
//! is `unsupported_type`, and a type other than the one the worker sniffs from the
//! bytes is `type_mismatch` (so a PNG named `.pdf` fails instead of passing as
//! whatever its bytes are). That check compares the declared type with the sniffer's
//! spelling exactly, so this is a small table rather than a general MIME database
//! (`mime_guess` and the like): such a database declares types the sniffer can never
//! confirm (`text/plain`, `text/csv`, `application/json`, `image/svg+xml`: plain
//! text has no magic number, so a genuine `.txt` would always fail) and spells
//! others differently (`audio/wav` for the sniffer's `audio/x-wav`, `image/x-icon`
//! for `image/vnd.microsoft.icon`), failing genuine files. Every type below is one
//! the sniffer gives (a unit test holds the table to it); an extension not in the
//! table declares nothing and the worker goes by the bytes alone, as before. The
//! legacy Office formats (`.doc`, `.xls`, `.ppt`) are left out on purpose: they share
//! one container format that the sniffer tells apart by heuristics.

use std::path::Path;

/// Extension (lower case) -> the type the worker's sniffer names for such files.
const TABLE: &[(&str, &str)] = &[
    ("pdf", "application/pdf"),
    ("png", "image/png"),
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("jpe", "image/jpeg"),
    ("gif", "image/gif"),
    ("webp", "image/webp"),
    ("tif", "image/tiff"),
    ("tiff", "image/tiff"),
    ("bmp", "image/bmp"),
    ("ico", "image/vnd.microsoft.icon"),
    ("avif", "image/avif"),
    ("heif", "image/heif"),
    ("jp2", "image/jp2"),
    ("jxl", "image/jxl"),
    ("psd", "image/vnd.adobe.photoshop"),
    ("mp3", "audio/mpeg"),
    ("m4a", "audio/m4a"),
    ("ogg", "audio/ogg"),
    ("opus", "audio/opus"),
    ("flac", "audio/x-flac"),
    ("wav", "audio/x-wav"),
    ("aac", "audio/aac"),
    ("amr", "audio/amr"),
    ("aif", "audio/x-aiff"),
    ("aiff", "audio/x-aiff"),
    ("mid", "audio/midi"),
    ("midi", "audio/midi"),
    ("mp4", "video/mp4"),
    ("m4v", "video/x-m4v"),
    ("mov", "video/quicktime"),
    ("webm", "video/webm"),
    ("mkv", "video/x-matroska"),
    ("avi", "video/x-msvideo"),
    ("wmv", "video/x-ms-wmv"),
    ("mpg", "video/mpeg"),
    ("mpeg", "video/mpeg"),
    (
        "docx",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ),
    (
        "xlsx",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ),
    (
        "pptx",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ),
    ("odt", "application/vnd.oasis.opendocument.text"),
    ("ods", "application/vnd.oasis.opendocument.spreadsheet"),
    ("odp", "application/vnd.oasis.opendocument.presentation"),
    ("epub", "application/epub+zip"),
    ("rtf", "application/rtf"),
    ("zip", "application/zip"),
    ("gz", "application/gzip"),
    ("tgz", "application/gzip"),
    ("tar", "application/x-tar"),
    ("bz2", "application/x-bzip2"),
    ("xz", "application/x-xz"),
    ("zst", "application/zstd"),
    ("7z", "application/x-7z-compressed"),
    ("rar", "application/vnd.rar"),
];

/// The type `path`'s extension declares; `None` when it has none the table knows.
pub fn declared_type(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    TABLE.iter().find(|(e, _)| *e == ext).map(|(_, t)| *t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::sniff;

    #[test]
    fn every_declared_type_is_one_the_worker_can_confirm() {
        for (ext, mime) in TABLE {
            assert!(
                infer::is_mime_supported(mime),
                ".{ext}: the sniffer never names {mime}"
            );
            assert_eq!(*ext, ext.to_ascii_lowercase());
        }
    }

    #[test]
    fn genuine_files_match_what_their_names_declare() {
        let pdf = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n".as_slice();
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x02\0\0\0".as_slice();
        let jpeg = b"\xff\xd8\xff\xe0\0\x10JFIF\0\x01\x01\0\0\x01\0\x01\0\0".as_slice();
        let gif = b"GIF89a\x01\0\x01\0\x80\0\0\0\0\0".as_slice();
        let gz = b"\x1f\x8b\x08\0\0\0\0\0\0\x03".as_slice();
        for (name, bytes) in [
            ("a.pdf", pdf),
            ("b.PNG", png),
            ("c.jpg", jpeg),
            ("d.jpeg", jpeg),
            ("e.gif", gif),
            ("f.tar.gz", gz),
        ] {
            assert_eq!(declared_type(Path::new(name)), Some(sniff(bytes)), "{name}");
        }
        // The case the declaration exists for: the name says PDF, the bytes say PNG.
        assert_ne!(declared_type(Path::new("scan.pdf")), Some(sniff(png)));
    }

    #[test]
    fn unknown_or_missing_extensions_declare_nothing() {
        for name in [
            "notes.txt",
            "data.csv",
            "x.json",
            "README",
            ".pdf",
            "a.",
            "dir.d/file",
        ] {
            assert_eq!(declared_type(Path::new(name)), None, "{name}");
        }
    }
}
