//! JSON written by hand on the per-publication path, byte for byte what serde_json writes.
//!
//! serde's generic serializer costs thousands of instructions for a publication frame (a call
//! per field, an escape scan per string through a `Formatter`); the hub writes one per publish,
//! plus its compact tail and its reply. These writers produce the same bytes (property tests
//! compare them with serde_json on any input) in a fraction of that.

/// Appends `s` as a JSON string, escaped exactly as serde_json escapes it.
pub fn push_str(out: &mut String, s: &str) {
    // Names, ids, times and most text need no escape: a scan and one copy. Anything else goes
    // through serde_json itself, so the escapes can never differ.
    if !needs_escape(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        let mut bytes = std::mem::take(out).into_bytes();
        serde_json::to_writer(&mut bytes, s).expect("a string serializes");
        *out = String::from_utf8(bytes).expect("serde_json writes UTF-8");
    }
}

/// Whether any byte of `s` is one JSON escapes: a control character, `"` or `\`. Eight bytes at
/// a time (the "has a byte less than n" and "has a zero byte" word tricks, exact as a yes/no):
/// the strings scanned are most of what the hub writes per publish.
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH != 0;
    let mut words = s.chunks_exact(8);
    for word in &mut words {
        let x = u64::from_ne_bytes(word.try_into().expect("eight bytes"));
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGH != 0;
        if control
            || has_zero(x ^ (ONES * u64::from(b'"')))
            || has_zero(x ^ (ONES * u64::from(b'\\')))
        {
            return true;
        }
    }
    words.remainder().iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// Appends `,"name":` and `value` as a JSON string.
pub fn push_field(out: &mut String, name: &str, value: &str) {
    out.push_str(",\"");
    out.push_str(name);
    out.push_str("\":");
    push_str(out, value);
}

/// Appends an unsigned integer.
pub fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_byte_that_needs_an_escape_is_seen_at_every_place_in_a_word() {
        for b in 0u8..=0x7f {
            let expected = b < 0x20 || b == b'"' || b == b'\\';
            for at in 0..17 {
                let mut text = vec![b'a'; 17];
                text[at] = b;
                assert_eq!(needs_escape(&text), expected, "byte {b:#x} at {at}");
            }
        }
        // UTF-8 bytes (0x80 and up) never need one, whatever surrounds them.
        assert!(!needs_escape("ééééé😀😀 ~\u{7f}".as_bytes()));
    }

    #[test]
    fn escapes_are_serde_jsons() {
        for s in
            ["", "plain", "a\"b", "back\\slash", "\n\t\r\u{8}\u{c}", "\u{1}\u{1f}\u{7f}", "é😀"]
        {
            let mut out = String::from("x");
            push_str(&mut out, s);
            assert_eq!(out, format!("x{}", serde_json::to_string(s).unwrap()), "{s:?}");
        }
    }

    proptest! {
        #[test]
        fn any_string_is_written_as_serde_json_writes_it(s in any::<String>()) {
            let mut out = String::new();
            push_str(&mut out, &s);
            prop_assert_eq!(out, serde_json::to_string(&s).unwrap());
        }
    }
}
