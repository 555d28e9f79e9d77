//! PEM (RFC 7468) framing with little allocation: the server decodes one CSR and encodes one
//! certificate chain per request, and the `pem` crate's general parser (headers, owned labels,
//! a string per line) cost more than the rest of the X.509 work around it. The base64 itself
//! is base64ct's; only the BEGIN/END framing is here.

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

/// Standard base64 with padding, line breaks and other whitespace anywhere skipped: lines of
/// any width are taken, as the tools that write CSRs differ (strict RFC 7468 decoders want
/// exactly 64 columns). The decoding itself is base64ct's (canonical padding only).
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let packed: String = text
        .iter()
        .filter(|c| !c.is_ascii_whitespace())
        .map(|&c| c as char)
        .collect();
    use base64ct::Encoding;
    base64ct::Base64::decode_vec(&packed).ok()
}

/// Appends `der` as one PEM block with `label`, 64 characters a line, LF line endings.
pub(crate) fn encode_into(out: &mut String, label: &str, der: &[u8]) {
    use base64ct::Encoding;
    let b64 = base64ct::Base64::encode_string(der);
    out.reserve(b64.len() + b64.len() / 64 + 2 * label.len() + 34);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    // base64 is ASCII, so every 64-byte chunk is whole characters.
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
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
