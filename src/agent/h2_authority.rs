//! A relay in front of the Workload API's HTTP/2 server that replaces an invalid `:authority`.
//!
//! Over a Unix socket, gRPC C-core (py-spiffe, Ruby, C++) and grpc-java send the socket path,
//! percent-encoded, as `:authority` (`%2Frun%2F...%2Fspiffe.sock`). That is no valid authority,
//! and the HTTP/2 layer under tonic (h2) resets such a stream with `PROTOCOL_ERROR`. A
//! standard SPIFFE client must work unchanged, so each connection passes through here: frames
//! from the client are copied as they are, except header blocks, which are decoded and encoded
//! again with `:authority: localhost` when the client's value is not a valid authority.
//! Frames to the client are copied untouched. The authority means nothing on this socket
//! (the socket is the identity), so nothing is lost.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame the server accepts before it says otherwise (HTTP/2's initial
/// SETTINGS_MAX_FRAME_SIZE; h2 keeps it).
const MAX_FRAME: usize = 16_384;
/// The largest header block accepted from a client (h2's own default limit is 16 KiB).
const MAX_BLOCK: usize = 64 * 1024;

/// Relays one connection: `client` is the accepted socket, `server` the HTTP/2 server's end.
pub(crate) async fn relay<C, S>(client: C, server: S)
where
    C: AsyncRead + AsyncWrite + Send + 'static,
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut server_r, mut server_w) = tokio::io::split(server);
    let down = async {
        let _ = tokio::io::copy(&mut server_r, &mut client_w).await;
        let _ = client_w.shutdown().await;
    };
    let up = async {
        let _ = rewrite(&mut client_r, &mut server_w).await;
        let _ = server_w.shutdown().await;
    };
    // Either direction ending ends the connection.
    tokio::select! {
        _ = down => {},
        _ = up => {},
    }
}

/// Copies the client's frames to the server, fixing header blocks.
async fn rewrite<R, W>(from: &mut R, to: &mut W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; PREFACE.len()];
    from.read_exact(&mut preface).await?;
    to.write_all(&preface).await?;
    if preface != PREFACE {
        // Not HTTP/2: the server answers that itself.
        tokio::io::copy(from, to).await?;
        return Ok(());
    }
    let mut decoder = fluke_hpack::Decoder::new();
    let mut encoder = fluke_hpack::Encoder::new();
    loop {
        let (kind, flags, stream, payload) = read_frame(from).await?;
        if kind != HEADERS {
            write_frame(to, kind, flags, stream, &payload).await?;
            continue;
        }
        let mut block = header_fragment(flags, &payload)?;
        let mut end = flags & END_HEADERS != 0;
        while !end {
            let (k, f, s, p) = read_frame(from).await?;
            if k != CONTINUATION || s != stream {
                return Err(invalid("a header block interrupted"));
            }
            block.extend_from_slice(&p);
            if block.len() > MAX_BLOCK {
                return Err(invalid("header block too large"));
            }
            end = f & END_HEADERS != 0;
        }
        let headers = decoder
            .decode(&block)
            .map_err(|e| invalid(&format!("header block: {e:?}")))?;
        let fixed: Vec<(Vec<u8>, Vec<u8>)> = headers
            .into_iter()
            .map(|(n, v)| {
                if n == b":authority" && !valid_authority(&v) {
                    (n, b"localhost".to_vec())
                } else {
                    (n, v)
                }
            })
            .collect();
        let encoded = encoder.encode(fixed.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut chunks = encoded.chunks(MAX_FRAME).peekable();
        let mut first = true;
        if encoded.is_empty() {
            write_frame(to, HEADERS, (flags & END_STREAM) | END_HEADERS, stream, &[]).await?;
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            let (k, mut f) = if first {
                (HEADERS, flags & END_STREAM)
            } else {
                (CONTINUATION, 0)
            };
            if last {
                f |= END_HEADERS;
            }
            write_frame(to, k, f, stream, chunk).await?;
            first = false;
        }
    }
}

/// Whether an `:authority` value is one the HTTP/2 server accepts.
fn valid_authority(v: &[u8]) -> bool {
    !v.is_empty() && tonic::codegen::http::uri::Authority::try_from(v).is_ok()
}

/// The header block fragment of a HEADERS frame, without padding and priority fields.
fn header_fragment(flags: u8, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut p = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        let (&n, rest) = p.split_first().ok_or_else(|| invalid("short HEADERS"))?;
        pad = usize::from(n);
        p = rest;
    }
    if flags & PRIORITY != 0 {
        p = p.get(5..).ok_or_else(|| invalid("short HEADERS"))?;
    }
    if pad > p.len() {
        return Err(invalid("padding longer than the frame"));
    }
    Ok(p[..p.len() - pad].to_vec())
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
    let mut h = [0u8; 9];
    r.read_exact(&mut h).await?;
    let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
    if len > MAX_BLOCK {
        return Err(invalid("frame too large"));
    }
    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok((h[3], h[4], stream, payload))
}

async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    flags: u8,
    stream: u32,
    payload: &[u8],
) -> std::io::Result<()> {
    let len = payload.len();
    let mut h = [0u8; 9];
    h[0] = (len >> 16) as u8;
    h[1] = (len >> 8) as u8;
    h[2] = len as u8;
    h[3] = kind;
    h[4] = flags;
    h[5..9].copy_from_slice(&stream.to_be_bytes());
    w.write_all(&h).await?;
    w.write_all(payload).await
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_percent_encoded_socket_path_becomes_localhost_and_other_frames_pass() {
        let mut enc = fluke_hpack::Encoder::new();
        let block = enc.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":authority", b"%2Frun%2Fx%2Fspiffe.sock"),
            (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
        ]);
        let mut input = PREFACE.to_vec();
        let mut frame = |k: u8, f: u8, s: u32, p: &[u8]| {
            let len = p.len();
            input.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, k, f]);
            input.extend_from_slice(&s.to_be_bytes());
            input.extend_from_slice(p);
        };
        frame(0x4, 0, 0, &[]); // SETTINGS
                               // HEADERS, padded, split over a CONTINUATION.
        let (a, b) = block.split_at(5);
        let mut padded = vec![2u8];
        padded.extend_from_slice(a);
        padded.extend_from_slice(&[0, 0]);
        frame(HEADERS, PADDED, 1, &padded);
        frame(CONTINUATION, END_HEADERS, 1, b);
        frame(0x0, END_STREAM, 1, b"data");
        let mut out = Vec::new();
        let _ = rewrite(&mut &input[..], &mut out).await;
        let mut r = &out[PREFACE.len()..];
        let (k, _, _, _) = read_frame(&mut r).await.unwrap();
        assert_eq!(k, 0x4);
        let (k, f, s, p) = read_frame(&mut r).await.unwrap();
        assert_eq!((k, f & END_HEADERS, s), (HEADERS, END_HEADERS, 1));
        let headers = fluke_hpack::Decoder::new().decode(&p).unwrap();
        assert!(headers.contains(&(b":authority".to_vec(), b"localhost".to_vec())));
        assert!(headers.contains(&(
            b":path".to_vec(),
            b"/SpiffeWorkloadAPI/FetchX509SVID".to_vec()
        )));
        let (k, f, _, p) = read_frame(&mut r).await.unwrap();
        assert_eq!((k, f, p.as_slice()), (0x0, END_STREAM, &b"data"[..]));
        assert!(valid_authority(b"localhost"));
        assert!(!valid_authority(b"%2Frun%2Fx"));
    }
}
