//! Names inside JetStream subjects. A subject token (and a KV key) may only hold
//! `[-/_=.a-zA-Z0-9]`, with `.` separating tokens, but Tessera's keys are any UTF-8. So each
//! name becomes one token in a base-64 form whose alphabet is in ASCII order
//! (`-0-9A-Z_a-z`): the encoding of byte strings sorts exactly like the byte strings
//! (a prefix sorts first, and the first differing bit decides), so listing keys in subject
//! order lists them in byte order.

const ALPHABET: &[u8; 64] = b"-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";

/// One subject token for `bytes`; empty input gives an empty token, which callers never
/// pass (names and keys are non-empty).
pub fn encode_token(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &byte in bytes {
        acc = (acc << 8) | u32::from(byte);
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            out.push(ALPHABET[((acc >> bits) & 63) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (6 - bits)) & 63) as usize] as char);
    }
    out
}

/// The bytes a token of [`encode_token`] holds; `None` for anything it never produces.
pub fn decode_token(token: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(token.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in token.bytes() {
        let value = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = ((acc << 6) | value) & 0xffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    // Only the padding of the last character may be left, and it must be zero.
    let canonical = bits < 6 && acc & ((1 << bits) - 1) == 0;
    (canonical && encode_token(&out).len() == token.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_sort_like_their_bytes() {
        let mut samples: Vec<Vec<u8>> = vec![
            b"a".to_vec(),
            b"a\0".to_vec(),
            b"ab".to_vec(),
            b"b".to_vec(),
            vec![0],
            vec![0, 0],
            vec![0, 0, 0],
            vec![0xff],
            vec![0xff, 0xff, 0xff, 0xff],
            "ключ.with dots/and spaces".as_bytes().to_vec(),
            vec![0x7f, 0x80],
        ];
        let mut state = 7u64;
        for len in 1..40 {
            let bytes = (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (state >> 56) as u8
                })
                .collect();
            samples.push(bytes);
        }
        for bytes in &samples {
            let token = encode_token(bytes);
            assert!(token.bytes().all(|c| ALPHABET.contains(&c)), "{token}");
            assert_eq!(decode_token(&token).as_deref(), Some(&bytes[..]), "{token}");
        }
        let mut by_bytes = samples.clone();
        by_bytes.sort();
        let mut by_token = samples.clone();
        by_token.sort_by_key(|b| encode_token(b));
        assert_eq!(by_bytes, by_token);
    }

    #[test]
    fn tokens_it_never_produces_are_refused() {
        assert_eq!(decode_token("a.b"), None);
        assert_eq!(decode_token("*"), None);
        // One character holds 6 bits: not a whole byte.
        assert_eq!(decode_token("a"), None);
        // Non-zero padding bits.
        assert_eq!(decode_token("-1"), None);
        assert_eq!(decode_token("--"), Some(vec![0]));
    }
}
