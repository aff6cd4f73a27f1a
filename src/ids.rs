//! The shapes of the upstream's identifiers: account ids, upload ids, part sequences. Anything not
//! of these shapes never goes into a path the gateway sends upstream.

/// Upload ids are GUIDs upstream; anything outside `[A-Za-z0-9-]{1,64}` is refused.
pub fn valid_upload_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// An account id is an integer account number or a GUID.
pub fn valid_account(id: &str) -> bool {
    (!id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit())) || is_guid(id)
}

/// `8-4-4-4-12` hex digits.
pub fn is_guid(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A part sequence: a small non-negative integer written in plain digits.
pub fn parse_seq(seq: &str) -> Option<u32> {
    if seq.is_empty() || seq.len() > 5 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    seq.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_are_integers_or_guids() {
        assert!(valid_account("12345"));
        assert!(valid_account("3216e4b2-0a1b-4c2d-8e3f-34cc91813ea2"));
        assert!(!valid_account("12a45"));
        assert!(!valid_account(""));
        assert!(!valid_account("3216e4b2-0a1b-4c2d-8e3f-34cc91813ea"));
        assert!(valid_upload_id("AB-12") && !valid_upload_id("a_b") && !valid_upload_id(&"A".repeat(65)));
        assert_eq!(parse_seq("12"), Some(12));
        assert_eq!(parse_seq("-1"), None);
        assert_eq!(parse_seq("1e3"), None);
    }
}
