//! PEM (RFC 7468) without allocating more than the output: the server decodes one CSR and
//! encodes one certificate chain per request, and the `pem` crate's general parser (headers,
//! owned labels, a string per line) costs more than the rest of the X.509 work around it.

/// One PEM block: its label and its decoded contents.
#[derive(Debug)]
pub(crate) struct Block<'a> {
    /// The label (`CERTIFICATE`, `CERTIFICATE REQUEST`, ...).
    pub label: &'a str,
    /// The decoded contents (DER).
    pub der: Vec<u8>,
}

/// Why a text is not PEM.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PemError {
    /// A `-----BEGIN` line without its `-----END` line.
    Unterminated,
    /// A malformed `-----BEGIN label-----` line.
    BadHeader,
    /// The body is not base64.
    BadBase64,
}

impl std::fmt::Display for PemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PemError::Unterminated => "a BEGIN line without its END line",
            PemError::BadHeader => "a malformed BEGIN line",
            PemError::BadBase64 => "the body is not base64",
        })
    }
}

/// Every PEM block in `text`, in order; text between blocks is ignored.
pub(crate) fn decode_all(text: &[u8]) -> Result<Vec<Block<'_>>, PemError> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = find(rest, BEGIN) {
        let after = &rest[at + BEGIN.len()..];
        let close = find(after, b"-----").ok_or(PemError::BadHeader)?;
        let label = std::str::from_utf8(&after[..close]).map_err(|_| PemError::BadHeader)?;
        if label.contains(['\n', '\r']) {
            return Err(PemError::BadHeader);
        }
        let body = &after[close + 5..];
        let mut end = Vec::with_capacity(label.len() + 14);
        end.extend_from_slice(b"-----END ");
        end.extend_from_slice(label.as_bytes());
        end.extend_from_slice(b"-----");
        let stop = find(body, &end).ok_or(PemError::Unterminated)?;
        out.push(Block {
            label,
            der: base64_decode(&body[..stop]).ok_or(PemError::BadBase64)?,
        });
        rest = &body[stop + end.len()..];
    }
    Ok(out)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn sextet(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    } as u32)
}

/// Standard base64 with padding; whitespace (line breaks) anywhere is skipped.
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut n, mut pad) = (0u32, 0usize, 0usize);
    for &c in text {
        if c.is_ascii_whitespace() {
            continue;
        }
        if c == b'=' {
            pad += 1;
            acc <<= 6;
            n += 1;
        } else {
            // Nothing but padding may follow padding.
            if pad > 0 {
                return None;
            }
            acc = (acc << 6) | sextet(c)?;
            n += 1;
        }
        if n == 4 {
            let b = acc.to_be_bytes();
            let keep = 3usize.checked_sub(pad)?;
            out.extend_from_slice(&b[1..1 + keep]);
            (acc, n) = (0, 0);
            if pad > 0 && keep == 0 {
                return None;
            }
        }
    }
    if n != 0 || pad > 2 {
        return None;
    }
    Some(out)
}

/// Appends `der` as one PEM block with `label`, 64 characters a line, LF line endings.
pub(crate) fn encode_into(out: &mut String, label: &str, der: &[u8]) {
    let b64_len = der.len().div_ceil(3) * 4;
    out.reserve(b64_len + b64_len / 64 + 2 * label.len() + 34);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    let mut col = 0;
    for chunk in der.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let v = u32::from_be_bytes([0, b[0], b[1], b[2]]);
        for i in 0..4 {
            let c = if i <= chunk.len() {
                ALPHABET[((v >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            };
            out.push(c);
        }
        col += 4;
        if col == 64 {
            out.push('\n');
            col = 0;
        }
    }
    if col != 0 {
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_matches_the_pem_crate_and_decodes_back_for_every_length() {
        for len in 0..200usize {
            let der: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
            let mut ours = String::new();
            encode_into(&mut ours, "CERTIFICATE", &der);
            let theirs = pem::encode_config(
                &pem::Pem::new("CERTIFICATE", der.clone()),
                pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
            );
            assert_eq!(ours, theirs, "length {len}");
            let back = decode_all(ours.as_bytes()).unwrap();
            assert_eq!(back.len(), 1);
            assert_eq!((back[0].label, &back[0].der), ("CERTIFICATE", &der));
        }
    }

    #[test]
    fn crlf_text_between_blocks_and_several_blocks_decode() {
        let text = "junk\r\n-----BEGIN A-----\r\nAAEC\r\n-----END A-----\r\nmore\n-----BEGIN B C-----\nAw==\n-----END B C-----\n";
        let blocks = decode_all(text.as_bytes()).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(
            (blocks[0].label, blocks[0].der.as_slice()),
            ("A", &[0, 1, 2][..])
        );
        assert_eq!(
            (blocks[1].label, blocks[1].der.as_slice()),
            ("B C", &[3][..])
        );
    }

    #[test]
    fn broken_pem_is_an_error_not_a_panic() {
        for bad in [
            "-----BEGIN A-----\nAAEC\n",
            "-----BEGIN A-----\nAA!C\n-----END A-----\n",
            "-----BEGIN A-----\nAAE\n-----END A-----\n",
            "-----BEGIN A-----\nA===\n-----END A-----\n",
            "-----BEGIN A-----\nAA==AAAA\n-----END A-----\n",
            "-----BEGIN A",
        ] {
            assert!(decode_all(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(decode_all(b"no pem here").unwrap().is_empty());
    }
}
