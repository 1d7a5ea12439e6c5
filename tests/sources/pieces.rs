//! Files read in pieces (for chunked uploads) from every kind of source: the pieces
//! cover the file exactly, a read may go backwards, one piece at a time is held in
//! the byte budget, and a file that changes between pieces is refused.

use cxone_worker::source::Pieces;

use super::*;

/// 10 000 bytes that tell every offset apart.
fn body() -> Bytes {
    let mut body: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    body[..PDF.len()].copy_from_slice(PDF);
    Bytes::from(body)
}

/// A multiple of 3 and of the budget's KiB grain, as chunks are.
const PIECE: u64 = 3 * 1024;
const BUDGET: u64 = 64 * 1024;

/// Reads `pieces` in order, then its first piece again, checking the bytes and what
/// the budget holds while each piece lives.
async fn read_all(pieces: &mut Pieces, kind: &str) {
    let want = body();
    assert_eq!(pieces.size(), want.len() as u64, "{kind}");
    let budget = ByteBudget::new(BUDGET);
    let mut got = Vec::new();
    let mut offset = 0;
    while offset < pieces.size() {
        let len = PIECE.min(pieces.size() - offset);
        let piece = pieces.read(offset, len, &budget).await.expect(kind);
        assert_eq!(piece.bytes.len() as u64, len, "{kind} at {offset}");
        assert_eq!(
            budget.available(),
            BUDGET - len.div_ceil(1024) * 1024,
            "{kind}: one piece held, no more"
        );
        got.extend_from_slice(&piece.bytes);
        offset += len;
    }
    assert_eq!(got, want, "{kind}: the pieces are the file");
    assert_eq!(budget.available(), BUDGET, "{kind}: every piece given back");
    let again = pieces.read(0, PIECE, &budget).await.expect(kind);
    assert_eq!(
        again.bytes,
        want.slice(..PIECE as usize),
        "{kind}: backwards"
    );
    let middle = pieces.read(5000, 10, &budget).await.expect(kind);
    assert_eq!(middle.bytes, want.slice(5000..5010), "{kind}: a skip ahead");
    let beyond = pieces.read(9_999, 2, &budget).await;
    assert!(beyond.is_err(), "{kind}: past the end is refused");
}

#[tokio::test]
async fn local_files_are_read_in_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let path = root.join("a.pdf");
    std::fs::write(&path, body()).unwrap();
    let s = sources(&[&format!("--file-roots={}", root.display())], vec![]);
    let reference = format!("file://{}", path.display());
    read_all(&mut s.open_pieces(&reference).await.unwrap(), "file").await;

    // Rewritten between two pieces: same size, another version (another
    // modification time, set apart from the first whatever the clock's grain).
    let mut pieces = s.open_pieces(&reference).await.unwrap();
    let budget = ByteBudget::new(BUDGET);
    drop(pieces.read(0, PIECE, &budget).await.unwrap());
    std::fs::write(&path, body().iter().rev().copied().collect::<Vec<u8>>()).unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(10);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let message = assert_retryable(pieces.read(PIECE, PIECE, &budget).await.map(|f| f.bytes));
    assert!(message.contains("changed"), "{message}");
    // Grown: refused too.
    let mut pieces = s.open_pieces(&reference).await.unwrap();
    std::fs::write(&path, [body().as_ref(), b"more"].concat()).unwrap();
    assert_retryable(pieces.read(0, PIECE, &budget).await.map(|f| f.bytes));

    // The same refusals as a whole read.
    let escape = format!("file://{}/../x.pdf", root.display());
    assert_kind(open_pieces(&s, &escape).await, ErrorKind::FileAccessDenied);
    std::fs::write(root.join("big.pdf"), vec![b'x'; 100_001]).unwrap();
    let big = format!("file://{}/big.pdf", root.display());
    assert_kind(open_pieces(&s, &big).await, ErrorKind::TooLarge);
}

/// `open_pieces` as a `Result` the shared assertions read.
async fn open_pieces(s: &Sources, reference: &str) -> Result<Bytes, Failure> {
    s.open_pieces(reference).await.map(|_| Bytes::new())
}

fn https(server: &FileServer, dir: &tempfile::TempDir, hosts: &str) -> Sources {
    let ca = format!(
        "--file-http-ca-file={}",
        server.write_ca(dir.path()).display()
    );
    sources(
        &[&ca, &format!("--file-http-allowed-hosts={hosts}")],
        vec![],
    )
}

#[tokio::test]
async fn https_files_are_read_in_pieces_with_ranges_or_without() {
    let (server, dir) = (FileServer::start().await, tempfile::tempdir().unwrap());
    server.put_file("a.pdf", body());
    let s = https(&server, &dir, "127.0.0.1:*");
    for (kind, query) in [
        ("ranges", ""),
        ("in order", "?ranges=false"),
        ("no length", "?ranges=false&length=false"),
    ] {
        let url = server.https_url(&format!("/files/a.pdf{query}"));
        let before = server.file_requests();
        let mut pieces = s.open_pieces(&url).await.expect(kind);
        read_all(&mut pieces, kind).await;
        let asked = server.file_requests() - before;
        eprintln!("{kind}: {asked} requests");
        let want = match kind {
            // One for the size, one per piece read.
            "ranges" => 1 + 4 + 2,
            // The first answer read in order, then again from the start for the read
            // that goes backwards; the skip ahead goes on with that answer.
            "in order" => 2,
            // As in order, after a first answer read through to learn the size.
            _ => 3,
        };
        assert_eq!(asked, want, "{kind}");
    }

    // Changed between pieces: the next request meets another ETag (If-Match) or
    // another length. (One answer read in order is one version: only a request
    // made after the change can see it, here the read that goes backwards.)
    for query in ["", "?ranges=false", "?ranges=false&length=false"] {
        let url = server.https_url(&format!("/files/b.pdf{query}"));
        server.put_file("b.pdf", body());
        let mut pieces = s.open_pieces(&url).await.unwrap();
        let budget = ByteBudget::new(BUDGET);
        drop(pieces.read(PIECE, PIECE, &budget).await.unwrap());
        server.put_file("b.pdf", body().slice(..9000));
        let message = assert_retryable(pieces.read(0, PIECE, &budget).await.map(|f| f.bytes));
        assert!(message.contains("changed"), "{query}: {message}");
    }

    // The limits of a whole read.
    assert_kind(
        open_pieces(&s, &server.https_url(&format!("/big/{}", 200_000))).await,
        ErrorKind::TooLarge,
    );
    assert_kind(
        open_pieces(&s, &server.https_url("/chunked/200000")).await,
        ErrorKind::TooLarge,
    );
    let named = server.https_url_by_name("/files/a.pdf");
    assert_kind(open_pieces(&s, &named).await, ErrorKind::FileAccessDenied);
    let ported = https(&server, &dir, "127.0.0.1");
    let url = server.https_url("/files/a.pdf");
    assert_kind(
        open_pieces(&ported, &url).await,
        ErrorKind::FileAccessDenied,
    );
    server.put_file("empty.pdf", Bytes::new());
    let empty = server.https_url("/files/empty.pdf");
    assert_kind(open_pieces(&s, &empty).await, ErrorKind::EmptyFile);
}

#[tokio::test]
async fn objects_are_read_in_pieces() {
    let moto = servers::moto();
    let azurite = servers::azurite();
    objects::s3_put(moto, "pieces", "a.pdf", body()).await;
    objects::azure_put(azurite, "pieces", "a.pdf", body()).await;
    let mut env = servers::s3_env(moto);
    env.extend(servers::azure_env(azurite));
    let s = sources(&[], env);
    for reference in ["s3://pieces/a.pdf", "az://pieces/a.pdf"] {
        let mut pieces = s.open_pieces(reference).await.expect(reference);
        read_all(&mut pieces, reference).await;
    }
    // Rewritten between two pieces: the store refuses the old ETag.
    objects::s3_put(moto, "pieces", "b.pdf", body()).await;
    objects::azure_put(azurite, "pieces", "b.pdf", body()).await;
    for reference in ["s3://pieces/b.pdf", "az://pieces/b.pdf"] {
        let mut pieces = s.open_pieces(reference).await.unwrap();
        let budget = ByteBudget::new(BUDGET);
        drop(pieces.read(0, PIECE, &budget).await.unwrap());
        let other: Vec<u8> = body().iter().rev().copied().collect();
        match reference {
            "s3://pieces/b.pdf" => objects::s3_put(moto, "pieces", "b.pdf", other).await,
            _ => objects::azure_put(azurite, "pieces", "b.pdf", other).await,
        }
        let message = assert_retryable(pieces.read(PIECE, PIECE, &budget).await.map(|f| f.bytes));
        assert!(message.contains("changed"), "{reference}: {message}");
    }
    assert_kind(
        open_pieces(&s, "s3://pieces/missing.pdf").await,
        ErrorKind::FileNotFound,
    );
}
